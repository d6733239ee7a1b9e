"""What the weight quantizers share: finding the weights they may quantize, and the int8 rows.

A weight is the constant 2-D float32 W of x·W (+ bias) — a MatMul, a following [N] bias Add, a
Gemm read the same way — or an embedding table, the constant [V, D] float32 data of a Gather by
rows. `exclude` keeps named nodes and op types float; every layer considered gets an outcome
(graphopt.passes.contract): what it became, or why it stays float.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import onnx_ir as ir

from graphopt.errors import InputError
from graphopt.passes.match import (
    MS_DOMAIN,
    constant_array,
    constant_tensor,
    drop_unused_initializers,
    fresh_node_name,
    is_op,
    new_initializer,
    only_consumer,
    operands,
)
from graphopt.passes.quantize.scales import symmetric_int8
from graphopt.passes.contract import LossyPass


def name_set(option: str) -> set[str]:
    """The node names or op types of a `;`-separated option (`exclude`, `int8_layers`): names may hold commas."""
    return {item.strip() for item in option.split(";") if item.strip()}


def check_names(model: ir.Model, names: set[str], option: str = "--exclude") -> None:
    """Refuse names that match no node or op type of the model (a typo would silently change nothing)."""
    known = {node.name for graph in model.graphs() for node in graph} | \
            {node.op_type for graph in model.graphs() for node in graph}
    unknown = sorted(names - known)
    if unknown:
        raise InputError(f"{option} names no node or op type of the model (after the float passes): "
                         f"{', '.join(unknown)}")


def attention_refusal(node: ir.Node) -> str:
    """Why a com.microsoft Attention cannot be rewritten into int8 projections and an attention kernel
    reading their result (MultiHeadAttention, QAttention), or "" when it can: constant [D, 3D]
    weights and bias, no mask index or past state, no attribute those kernels lack, no
    extra output read."""
    inputs = list(node.inputs) + [None] * (6 - len(node.inputs))
    weight, bias = constant_tensor(inputs[1]), constant_tensor(inputs[2])
    if weight is None or bias is None or len(weight.shape) != 2 or weight.shape[1] % 3:
        return "weights or bias not constant [D, 3D]"
    if inputs[3] is not None or inputs[4] is not None or len(node.inputs) > 6 or \
            any(attr not in ("num_heads", "scale", "mask_filter_value") for attr in node.attributes) or \
            any(value.uses() or value.is_graph_output() for value in node.outputs[1:]):
        return "mask index, past state or attributes MultiHeadAttention does not take"
    return ""


def linear_inputs(model: ir.Model) -> tuple[str, ...]:
    """Names of the activations that linear layers with constant weights read (whose channel
    statistics SmoothQuant, the outlier channels and int4's scale search use)."""
    return tuple(sorted({value.name for node in model.graph for value in node.inputs[:1]
                         if value is not None and value.name and any(linear_weight(use) for use in value.uses())}))


def linear_weight(use: ir.Usage) -> tuple[np.ndarray, bool] | None:
    """(weight, transposed) when the use reads the value as x of x·W with a constant 2-D W."""
    node, index = use.node, use.idx
    if index != 0:
        return None
    if is_op(node, "MatMul") or (node.domain == MS_DOMAIN and node.op_type == "Attention"):
        weight = constant_array(node.inputs[1])
        return (weight, False) if weight is not None and weight.ndim == 2 else None
    if is_op(node, "Gemm") and not node.attributes.get_int("transA", 0):
        weight = constant_array(node.inputs[1])
        return (weight, bool(node.attributes.get_int("transB", 0))) if weight is not None and weight.ndim == 2 else None
    return None


class Linear:
    """One x·W (+ bias) to quantize: the nodes it replaces and where its result goes."""

    def __init__(self, nodes: list[ir.Node], weight: ir.Value, transposed: bool, bias: ir.Value | None,
                 out: ir.Value):
        self.nodes, self.weight, self.transposed, self.bias, self.out = nodes, weight, transposed, bias, out

    @property
    def x(self) -> ir.Value:
        """Read when emitting: quantizing the layer before may have replaced the value."""
        return self.nodes[0].inputs[0]


class WeightQuantizer(LossyPass):
    """Base of the passes that quantize weights: which layers qualify, and why the others do not."""

    # Why a float16/float64 layer is kept float, after "not float32".
    float32_only: ClassVar[str] = "this quantizer reads float32 weights"

    def __init__(self, exclude: str, min_embedding_bytes: int) -> None:
        super().__init__()
        self.exclude = name_set(exclude)
        self.min_embedding_bytes = min_embedding_bytes
        # projections of a split Attention: their outcome is the Attention's, recorded when it splits
        self._projections: dict[ir.Node, str] = {}

    def _check_exclude(self, model: ir.Model) -> None:
        self._check_names(model, self.exclude, "--exclude")

    @staticmethod
    def _check_names(model: ir.Model, names: set[str], option: str) -> None:
        check_names(model, names, option)

    def _excluded(self, node: ir.Node, before: int = 0) -> bool:
        """Whether the layer stays float: named in `exclude`, or held by the pipeline (frozen, or the
        fallback's); its outcome says which."""
        if node in self._projections:
            return False  # its Attention was judged
        held = "excluded" if node.name in self.exclude or node.op_type in self.exclude else self.held(node)
        if held:
            self.keep(node, held, before=before)
        return bool(held)

    def _linear(self, node: ir.Node) -> Linear | None:
        if not is_op(node, "MatMul", "Gemm"):
            return None
        weight = node.inputs[1]
        tensor = constant_tensor(weight)
        if tensor is None or len(tensor.shape) != 2:
            return None  # activations times activations (attention scores) stay float
        x = node.inputs[0]
        if tensor.dtype != ir.DataType.FLOAT or x.dtype != ir.DataType.FLOAT:
            self.keep(node, f"not float32 ({self.float32_only})", before=tensor.nbytes)
            return None
        if self._excluded(node, tensor.nbytes):
            return None
        if node.op_type == "Gemm":
            attrs = node.attributes
            if attrs.get_int("transA", 0) or attrs.get_float("alpha", 1.0) != 1.0 or \
                    attrs.get_float("beta", 1.0) != 1.0:
                self.keep(node, "transA, alpha or beta other than the defaults", before=tensor.nbytes)
                return None
            bias = node.inputs[2] if len(node.inputs) > 2 else None
            columns = tensor.shape[0] if attrs.get_int("transB", 0) else tensor.shape[1]
            values = constant_array(bias) if bias is not None else None
            if bias is not None and (values is None or values.shape != (columns,)):
                self.keep(node, "its C is not a constant [N] bias", before=tensor.nbytes)
                return None
            return Linear([node], weight, bool(attrs.get_int("transB", 0)), bias, node.outputs[0])
        bias, nodes, out = None, [node], node.outputs[0]
        add = only_consumer(node.outputs[0])
        pair = operands(add, "Add")
        if pair is not None and add.graph is node.graph:
            other = pair[1] if pair[0] is node.outputs[0] else pair[0]
            values = constant_array(other)
            if values is not None and values.shape == (tensor.shape[1],) and values.dtype == np.float32:
                bias, nodes, out = other, [node, add], add.outputs[0]
        return Linear(nodes, weight, False, bias, out)

    def _split_attention(self, model: ir.Model, graph: ir.Graph, node: ir.Node,
                         separate: bool = False) -> list[ir.Node]:
        """com.microsoft Attention(x, W, b, mask…) → x·W + b → Split → MultiHeadAttention, so its
        packed QKV projection is quantized like any MatMul (ONNX Runtime's QAttention takes no
        attention bias, and no kernel reads int4 attention weights); returns the projection
        MatMuls, none when the node stays as it is. `separate`: three
        projections x·Wq + bq, x·Wk + bk, x·Wv + bv instead of one and a Split — dynamic int8
        then quantizes x once for the three and copies nothing (MiniLM: ~2% faster)."""
        inputs = list(node.inputs) + [None] * (6 - len(node.inputs))
        reason = attention_refusal(node)
        weight_bytes = getattr(constant_tensor(inputs[1]), "nbytes", 0)
        if reason:
            self.keep(node, reason, before=weight_bytes)
            return []
        weight, bias = constant_array(inputs[1]), constant_array(inputs[2])
        if self._excluded(node, weight_bytes):
            return []
        width = weight.shape[1] // 3
        name = fresh_node_name(graph, f"{node.name or 'attention'}/qkv")
        shape = node.outputs[0].shape
        if separate:
            nodes, heads = [], []
            for index, part in enumerate("qkv"):
                columns = slice(index * width, (index + 1) * width)
                part_weight = new_initializer(graph, weight[:, columns], f"{name}_{part}_weight")
                part_bias = new_initializer(graph, bias[columns], f"{name}_{part}_bias")
                project = ir.Node("", "MatMul", [inputs[0], part_weight], name=fresh_node_name(graph, f"{name}/{part}"))
                add = ir.Node("", "Add", [project.outputs[0], part_bias],
                              name=fresh_node_name(graph, f"{name}/{part}_bias"))
                nodes += [project, add]
                heads.append(add.outputs[0])
        else:
            project = ir.Node("", "MatMul", [inputs[0], inputs[1]], name=name)
            add = ir.Node("", "Add", [project.outputs[0], inputs[2]], name=fresh_node_name(graph, f"{name}/bias"))
            sizes = new_initializer(graph, np.array([width] * 3, np.int64), f"{name}_split")
            split = ir.Node("", "Split", [add.outputs[0], sizes], [ir.AttrInt64("axis", -1)], num_outputs=3,
                            name=fresh_node_name(graph, f"{name}/split"))
            nodes, heads = [project, add, split], list(split.outputs)
            if shape is not None:
                project.outputs[0].shape = add.outputs[0].shape = ir.Shape([*shape[:-1], 3 * width])
        attention = ir.Node(MS_DOMAIN, "MultiHeadAttention", [*heads, None, None, inputs[5]],
                            list(node.attributes.values()),
                            name=fresh_node_name(graph, f"{node.name or 'attention'}/mha"))
        attention.outputs[0].shape = shape
        if node.outputs[0].dtype is not None:
            attention.outputs[0].dtype = node.outputs[0].dtype
        for made in nodes:
            for output in made.outputs:
                output.dtype = ir.DataType.FLOAT
                if output.shape is None and (separate or output in heads):
                    output.shape = shape
        ir.convenience.replace_nodes_and_values(graph, node, [node], [*nodes, attention],
                                                [node.outputs[0]], [attention.outputs[0]])
        drop_unused_initializers(graph, [inputs[1], inputs[2]])
        model.opset_imports.setdefault(MS_DOMAIN, 1)
        projections = [made for made in nodes if made.op_type == "MatMul"]
        self._projections.update((made, node.name) for made in projections)
        return projections

    @staticmethod
    def _replace(graph: ir.Graph, linear: Linear, nodes: list[ir.Node]) -> None:
        old_weight = linear.weight
        ir.convenience.replace_nodes_and_values(graph, linear.nodes[-1], linear.nodes, nodes, [linear.out],
                                                [nodes[-1].outputs[0]])
        drop_unused_initializers(graph, [old_weight])

    def _embedding_table(self, node: ir.Node) -> ir.TensorProtocol | None:
        """The table a Gather reads rows of, when it is a float32 one worth quantizing."""
        tensor = constant_tensor(node.inputs[0])
        if tensor is None or len(tensor.shape) != 2 or tensor.nbytes < self.min_embedding_bytes:
            return None
        if tensor.dtype != ir.DataType.FLOAT or node.attributes.get_int("axis", 0) != 0:
            if tensor.dtype.is_floating_point():
                self.keep(node, "not a float32 table gathered by rows", before=tensor.nbytes)
            return None
        if self._excluded(node, tensor.nbytes):
            return None
        return tensor

    def _embedding(self, graph: ir.Graph, node: ir.Node) -> bool:
        tensor = self._embedding_table(node)
        if tensor is None:
            return False
        self._int8_rows(graph, node, tensor)
        return True

    def _int8_rows(self, graph: ir.Graph, node: ir.Node, tensor: ir.TensorProtocol, reason: str = "") -> None:
        """Gather int8 rows and their scales, then multiply: Gather(q, ids) · Gather(s, ids)."""
        table = node.inputs[0]
        q, scale = symmetric_int8(tensor.numpy(), axis=0)
        self.record(node, "int8", before=tensor.nbytes, after=q.nbytes + scale.nbytes, reason=reason)
        base = table.name or "table"
        name = fresh_node_name(graph, f"{node.name or 'gather'}/int8")
        rows = ir.Node("", "Gather", [new_initializer(graph, q, f"{base}_int8"), node.inputs[1]], name=name)
        row_scales = ir.Node("", "Gather", [new_initializer(graph, scale.reshape(-1, 1), f"{base}_scale"),
                                            node.inputs[1]], name=fresh_node_name(graph, f"{name}/scales"))
        as_float = ir.Node("", "Cast", [rows.outputs[0]], [ir.AttrInt64("to", ir.DataType.FLOAT)],
                           name=fresh_node_name(graph, f"{name}/Cast"))
        scaled = ir.Node("", "Mul", [as_float.outputs[0], row_scales.outputs[0]],
                         name=fresh_node_name(graph, f"{name}/rescale"))
        ir.convenience.replace_nodes_and_values(graph, node, [node], [rows, row_scales, as_float, scaled],
                                                [node.outputs[0]], [scaled.outputs[0]])
        drop_unused_initializers(graph, [table])
