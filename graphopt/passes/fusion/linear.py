"""Linear layers in the form each rank runs best: Gemm for 2-D, MatMul (+ bias Add) above.

fuse_matmul_add: MatMul of a 2-D input by a constant 2-D weight, plus a constant [N] bias,
becomes Gemm (one call for runtimes that do not fuse).
unflatten_gemm: Reshape(x, [-1, K]) → Gemm(W, b) → Reshape back to x's leading dims (torch's
Conv1D and addmm on 3-D activations: GPT-2 writes it for every linear layer) becomes
MatMul(x, W) + b over x itself; two Reshapes fewer per layer, and the bias Add is then free to
fuse into what follows (the residual Sum, FastGelu). Proven from dims: the flatten keeps
the last dim, the restore gives back exactly x's leading dims.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from graphopt import dims
from graphopt.passes.match import (
    anchors,
    drop_unused_initializers,
    fresh_node_name,
    fresh_value_name,
    in_graph,
    infer_types,
    is_op,
    new_initializer,
    only_consumer,
    operands,
    vector,
)
from graphopt.passes.registry import Pass, register


@register("fuse_matmul_add")
class FuseMatMulAdd(Pass):
    """Fuse a 2-D MatMul by a constant weight and its constant bias Add into Gemm.

    Only float32, float16 or float64 inputs. N-D MatMuls stay MatMul + Add: ONNX Runtime already
    runs them as one GEMM.
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        infer_types(self, model)
        fused = sum(self._fuse(graph, node) for graph, node in anchors(model, "MatMul"))
        if fused:
            self.changed(f"{fused} Gemm")
        return ir.passes.PassResult(model, modified=bool(fused))

    def _fuse(self, graph: ir.Graph, matmul: ir.Node) -> bool:
        a, b = matmul.inputs
        add = only_consumer(matmul.outputs[0])
        pair = operands(add, "Add")
        if pair is None or not in_graph(graph, add) or b.const_value is None or len(b.const_value.shape) != 2:
            return False
        bias = pair[1] if pair[0] is matmul.outputs[0] else pair[0]
        values = vector(bias)
        if values is None or values.shape != (b.const_value.shape[1],):
            return False
        if a.shape is None or len(a.shape) != 2 or a.dtype not in (ir.DataType.FLOAT, ir.DataType.DOUBLE,
                                                                   ir.DataType.FLOAT16):
            return False  # Gemm is 2-D only; a 3-D MatMul stays (ONNX Runtime runs it as one GEMM)
        gemm = ir.Node("", "Gemm", [a, b, bias], name=fresh_node_name(graph, f"{matmul.name or 'matmul'}/Gemm"))
        ir.convenience.replace_nodes_and_values(graph, add, [matmul, add], [gemm], [add.outputs[0]],
                                                [gemm.outputs[0]])
        return True


@register("unflatten_gemm")
class UnflattenGemm(Pass):
    """Turn Reshape to 2-D → Gemm → Reshape back into MatMul + bias Add on the N-D input.

    The Gemm must have transA 0, alpha and beta 1, a constant weight (a transB one is stored
    transposed) and a constant [N] bias or none; x must have rank 3 or more, every dim sized or
    named (graphopt.dims names what the ops between prove). A restore that does not provably give
    back x's leading dims is refused with both shapes. The bias Add is then free to fuse into the
    residual Sum (residual_sum) or FastGelu. GPT-2: 48 of 48 (dynamo and torchscript).
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        infer_types(self, model)
        with dims.named(model):
            rewritten = sum(self._rewrite(graph, node) for graph, node in anchors(model, "Gemm"))
        if rewritten:
            self.changed(f"{rewritten} Gemm as MatMul + Add")
        return ir.passes.PassResult(model, modified=bool(rewritten))

    def _rewrite(self, graph: ir.Graph, gemm: ir.Node) -> bool:
        flatten = gemm.inputs[0].producer()
        restore = only_consumer(gemm.outputs[0])
        if not is_op(flatten, "Reshape") or not is_op(restore, "Reshape") or not in_graph(graph, flatten, restore):
            return False
        if only_consumer(flatten.outputs[0]) is not gemm or gemm.inputs[1].const_value is None:
            return False
        attrs = gemm.attributes
        if attrs.get_int("transA", 0) or attrs.get_float("alpha", 1.0) != 1.0 or attrs.get_float("beta", 1.0) != 1.0:
            return False
        x = flatten.inputs[0]
        leading, restored = dims.dims_of(x), dims.dims_of(restore.outputs[0])
        weight = gemm.inputs[1].const_value.numpy()
        weight = weight.T if attrs.get_int("transB", 0) else weight
        bias = gemm.inputs[2] if len(gemm.inputs) > 2 else None
        if leading is None or restored is None or len(leading) < 3 or None in leading or weight.ndim != 2:
            return False
        if dims.shape_contents(flatten.inputs[1]) != [-1, leading[-1]] or weight.shape[0] != leading[-1]:
            return False
        if restored != leading[:-1] + [weight.shape[1]]:
            self.skip(f"Gemm {gemm.name!r} kept: its result is reshaped to {dims.shape_text(restore.outputs[0].shape)}, "
                      f"not provably back to the input's leading dims {dims.shape_text(x.shape)}")
            return False
        if bias is not None and (vector(bias) is None or vector(bias).shape != (weight.shape[1],)):
            return False  # a Gemm C other than a [N] bias broadcasts differently
        name = fresh_node_name(graph, f"{gemm.name or 'gemm'}/MatMul")
        if attrs.get_int("transB", 0):
            w_value = new_initializer(graph, weight, f"{gemm.inputs[1].name}_t")
        else:
            w_value = gemm.inputs[1]
        nodes = [ir.Node("", "MatMul", [x, w_value], name=name)]
        if bias is not None:
            nodes.append(ir.Node("", "Add", [nodes[0].outputs[0], bias], name=f"{name}/Add"))
        old_weight = gemm.inputs[1]
        ir.convenience.replace_nodes_and_values(graph, restore, [flatten, gemm, restore], nodes,
                                                [restore.outputs[0]], [nodes[-1].outputs[0]])
        if w_value is not old_weight:
            drop_unused_initializers(graph, [old_weight])  # only its transpose is read now
        return True


@register("pack_parallel_matmuls", targets=("portable",), min_opset=13)
class PackParallelMatMuls(Pass):
    """Pack MatMuls of one input by constant weights (Q, K, V) into one MatMul (+ bias) and a Split.

    For `portable` only. MatMuls reading the same input by constant 2-D weights of the same K and dtype
    become one MatMul by the weights concatenated along N, one bias Add when any of them had a
    constant [N] bias (zeros for those without), and a Split along the last axis; a MatMul (or its
    bias Add) whose result is a graph output stays apart. The typical case is Q, K and V where
    attention is not fused (portable below opset 23). MiniLM at opset 17: 18 MatMuls into 6.
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        infer_types(self, model)
        packed = 0
        for graph in model.graphs():
            groups: dict[ir.Value, list[ir.Node]] = {}
            for node in graph:
                if is_op(node, "MatMul") and self._weight(node) is not None:
                    groups.setdefault(node.inputs[0], []).append(node)
            for members in groups.values():
                members = self._packable(members)
                if len(members) > 1:
                    self._pack(graph, members)
                    packed += len(members)
        if packed:
            self.changed(f"{packed} MatMuls packed")
        return ir.passes.PassResult(model, modified=bool(packed))

    @staticmethod
    def _weight(matmul: ir.Node) -> np.ndarray | None:
        tensor = matmul.inputs[1].const_value if matmul.inputs[1] is not None else None
        return tensor.numpy() if tensor is not None and len(tensor.shape) == 2 else None

    @staticmethod
    def _bias(matmul: ir.Node) -> tuple[ir.Node, np.ndarray, ir.Value] | None:
        """(Add, its [N] values, the bias value) when the MatMul's only reader adds a constant bias."""
        add = only_consumer(matmul.outputs[0])
        pair = operands(add, "Add")
        if pair is None or add.graph is not matmul.graph:
            return None
        value = pair[1] if pair[0] is matmul.outputs[0] else pair[0]
        bias = vector(value)
        return (add, bias, value) if bias is not None and bias.shape == (matmul.inputs[1].shape[1],) else None

    def _packable(self, members: list[ir.Node]) -> list[ir.Node]:
        """The members whose weights share K and dtype with the first and whose result is no graph output."""
        first = self._weight(members[0])
        kept = []
        for node in members:
            weight = self._weight(node)
            if weight.shape[0] != first.shape[0] or weight.dtype != first.dtype:
                continue
            bias = self._bias(node)
            last = bias[0] if bias is not None else node
            if not last.outputs[0].is_graph_output():
                kept.append(node)
        return kept

    def _pack(self, graph: ir.Graph, members: list[ir.Node]) -> None:
        weights = [self._weight(node) for node in members]
        biases = [self._bias(node) for node in members]
        widths = [weight.shape[1] for weight in weights]
        base = fresh_node_name(graph, f"{members[0].name or 'matmul'}/packed")
        packed_w = new_initializer(graph, np.concatenate(weights, axis=1), f"{base}_weight")
        nodes = [ir.Node("", "MatMul", [members[0].inputs[0], packed_w], name=base)]
        if any(bias is not None for bias in biases):
            packed_b = np.concatenate([bias[1] if bias is not None else np.zeros(width, weights[0].dtype)
                                       for bias, width in zip(biases, widths)])
            nodes.append(ir.Node("", "Add", [nodes[-1].outputs[0], new_initializer(graph, packed_b, f"{base}_bias")],
                                 name=f"{base}/Add"))
        split_sizes = new_initializer(graph, np.array(widths, dtype=np.int64), f"{base}_split")
        split = ir.Node("", "Split", [nodes[-1].outputs[0], split_sizes], [ir.AttrInt64("axis", -1)],
                        num_outputs=len(members), name=f"{base}/Split")
        nodes.append(split)
        graph.insert_before(members[0], nodes)
        replaced = [node.inputs[1] for node in members] + [bias[2] for bias in biases if bias]
        old = []
        for index, (node, bias) in enumerate(zip(members, biases)):
            last = bias[0] if bias is not None else node
            result = split.outputs[index]
            result.name = fresh_value_name(graph, f"{last.outputs[0].name}_packed")
            result.shape, result.dtype = last.outputs[0].shape, last.outputs[0].dtype
            last.outputs[0].replace_all_uses_with(result)
            old += [last, node] if bias is not None else [node]
        for node in old:
            graph.remove(node, safe=True)
        drop_unused_initializers(graph, replaced)
