"""quantize_dynamic: int8 weights for the linear layers, activations quantized at run time.

A MatMul by a constant [K, N] float32 weight (a Gemm reads as MatMul + bias) gets symmetric
int8 weights, one scale per output column or per tensor (`scales.py`). At run time x is
quantized to uint8 over its own range (DynamicQuantizeLinear: scale xs, zero point xz) and
x·W ≈ xs · s · (xq − xz)·q is computed in integers:
  ort       DynamicQuantizeMatMul(x, q, s, bias): one node, MLAS's u8·s8 kernel; several
            MatMuls reading one x share one DynamicQuantizeLinear and run MatMulIntegerToFloat
  portable  DynamicQuantizeLinear(x) → MatMulInteger(xq, q, xz) → Cast → Mul(xs · s) [→ Add(bias)]
com.microsoft Attention (ort) keeps its packed QKV projection in int8: DynamicQuantizeMatMul,
Split, then MultiHeadAttention with the same attention bias. Embedding tables (Gather of a
constant [V, D] table) become int8 rows with one scale per row, both gathered per lookup.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from graphopt.passes.fusion._match import (
    constant_array,
    fresh_node_name,
    fresh_value_name,
    infer_types,
    is_op,
    new_initializer,
)
from graphopt.passes.fusion.gelu import MS_DOMAIN
from graphopt.passes.quantize._linear import Linear, WeightQuantizer
from graphopt.passes.quantize.scales import symmetric_int8
from graphopt.passes.registry import register



@register("quantize_dynamic", min_opset=11)
class QuantizeDynamic(WeightQuantizer):
    """Quantize MatMul/Gemm/Attention weights to int8 (activations at run time) and embedding tables to int8 rows."""

    target_aware = True
    lossy = True
    float32_only = "dynamic int8 quantizes float32 activations"

    def __init__(self, per_channel: bool = True, exclude: str = "", embeddings: bool = True,
                 min_embedding_bytes: int = 1 << 20) -> None:
        super().__init__(exclude, min_embedding_bytes)
        self.per_channel = per_channel
        self.embeddings = embeddings
        self._quantized: dict[tuple[int, bool], tuple[ir.Value, ir.Value]] = {}

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self._check_exclude(model)
        infer_types(self, model)
        self._quantized.clear()
        counts = {"linear": 0, "attention": 0, "embedding": 0}
        for graph in model.graphs():
            if self.target == "ort":
                counts["attention"] += sum(self._split_attention(model, graph, node) for node in list(graph)
                                           if node.domain == MS_DOMAIN and node.op_type == "Attention")
            groups: dict[ir.Value, list[Linear]] = {}
            for node in list(graph):
                linear = self._linear(node)
                if linear is not None:
                    groups.setdefault(linear.x, []).append(linear)
            for members in groups.values():
                self._emit(model, graph, members)
                counts["linear"] += len(members)
            if self.embeddings:
                counts["embedding"] += sum(self._embedding(graph, node) for node in list(graph)
                                           if is_op(node, "Gather"))
        scales = "per-channel" if self.per_channel else "per-tensor"
        if counts["linear"]:
            self.changed(f"{counts['linear']} MatMul/Gemm int8 ({scales} weights, dynamic activations)")
        if counts["attention"]:
            self.changed(f"{counts['attention']} Attention QKV projections int8 (MultiHeadAttention after)")
        if counts["embedding"]:
            self.changed(f"{counts['embedding']} embedding tables int8 (per-row scales)")
        modified = any(counts.values())
        if modified:
            ir.passes.common.RemoveUnusedNodesPass()(model)
        return ir.passes.PassResult(model, modified=modified)

    def _weights(self, graph: ir.Graph, linear: Linear) -> tuple[ir.Value, ir.Value]:
        """The int8 weight [K, N] and its scales, made once per float weight."""
        key = (id(linear.weight), linear.transposed)
        if key not in self._quantized:
            weight = constant_array(linear.weight)
            weight = weight.T if linear.transposed else weight
            q, scale = symmetric_int8(weight, axis=1 if self.per_channel else None)
            base = linear.weight.name or "weight"
            self._quantized[key] = (new_initializer(graph, q, f"{base}_int8"),
                                    new_initializer(graph, scale, f"{base}_scale"))
        return self._quantized[key]

    # -- emitting ---------------------------------------------------------------------------

    def _emit(self, model: ir.Model, graph: ir.Graph, members: list[Linear]) -> None:
        first = members[0].nodes[0]
        name = fresh_node_name(graph, f"{first.name or 'matmul'}/quant")
        if self.target == "ort" and len(members) == 1:
            linear = members[0]
            q, scale = self._weights(graph, linear)
            node = ir.Node(MS_DOMAIN, "DynamicQuantizeMatMul", self._trim([linear.x, q, scale, None, linear.bias]),
                           name=name)
            model.opset_imports.setdefault(MS_DOMAIN, 1)
            self._replace(graph, linear, [node])
            return
        quantize = ir.Node("", "DynamicQuantizeLinear", [members[0].x], num_outputs=3,
                           name=fresh_node_name(graph, f"{name}/x"))
        xq, xs, xz = quantize.outputs
        for value, suffix in zip(quantize.outputs, ("quantized", "scale", "zero_point")):
            value.name = fresh_value_name(graph, f"{name}/x_{suffix}")
        graph.insert_before(first, quantize)
        for index, linear in enumerate(members):
            q, scale = self._weights(graph, linear)
            base = fresh_node_name(graph, f"{name}_{index}" if len(members) > 1 else name)
            if self.target == "ort":
                model.opset_imports.setdefault(MS_DOMAIN, 1)
                inputs = self._trim([xq, q, xs, scale, xz, None, linear.bias])
                nodes = [ir.Node(MS_DOMAIN, "MatMulIntegerToFloat", inputs, name=base)]
            else:
                product = ir.Node("", "MatMulInteger", [xq, q, xz], name=base)
                as_float = ir.Node("", "Cast", [product.outputs[0]], [ir.AttrInt64("to", ir.DataType.FLOAT)],
                                   name=fresh_node_name(graph, f"{base}/Cast"))
                combined = ir.Node("", "Mul", [xs, scale], name=fresh_node_name(graph, f"{base}/scales"))
                nodes = [product, as_float, combined,
                         ir.Node("", "Mul", [as_float.outputs[0], combined.outputs[0]],
                                 name=fresh_node_name(graph, f"{base}/rescale"))]
                if linear.bias is not None:
                    nodes.append(ir.Node("", "Add", [nodes[-1].outputs[0], linear.bias],
                                         name=fresh_node_name(graph, f"{base}/bias")))
            self._replace(graph, linear, nodes)

    @staticmethod
    def _trim(inputs: list) -> list:
        while inputs and inputs[-1] is None:
            inputs.pop()
        return inputs

    def _split_attention(self, model: ir.Model, graph: ir.Graph, node: ir.Node) -> bool:
        """Attention(x, W, b, mask…) → MatMul(x, W) + b → Split → MultiHeadAttention, so the
        projection is quantized like any MatMul (ONNX Runtime's QAttention takes no attention bias)."""
        inputs = list(node.inputs) + [None] * (6 - len(node.inputs))
        where = f"Attention {node.name!r} kept float"
        weight, bias = constant_array(inputs[1]), constant_array(inputs[2])
        if weight is None or bias is None or weight.ndim != 2 or weight.shape[1] % 3:
            self.skip(f"{where}: weights or bias not constant [D, 3D]")
            return False
        if inputs[3] is not None or inputs[4] is not None or len(node.inputs) > 6 or \
                any(attr not in ("num_heads", "scale", "mask_filter_value") for attr in node.attributes) or \
                any(value.uses() or value.is_graph_output() for value in node.outputs[1:]):
            self.skip(f"{where}: mask index, past state or attributes MultiHeadAttention does not take")
            return False
        if self._excluded(node):
            return False
        width = weight.shape[1] // 3
        name = fresh_node_name(graph, f"{node.name or 'attention'}/qkv")
        project = ir.Node("", "MatMul", [inputs[0], inputs[1]], name=name)
        add = ir.Node("", "Add", [project.outputs[0], inputs[2]], name=fresh_node_name(graph, f"{name}/bias"))
        sizes = new_initializer(graph, np.array([width] * 3, np.int64), f"{name}_split")
        split = ir.Node("", "Split", [add.outputs[0], sizes], [ir.AttrInt64("axis", -1)], num_outputs=3,
                        name=fresh_node_name(graph, f"{name}/split"))
        attention = ir.Node(MS_DOMAIN, "MultiHeadAttention", [*split.outputs, None, None, inputs[5]],
                            list(node.attributes.values()),
                            name=fresh_node_name(graph, f"{node.name or 'attention'}/mha"))
        attention.outputs[0].shape, attention.outputs[0].dtype = node.outputs[0].shape, node.outputs[0].dtype
        project.outputs[0].dtype = add.outputs[0].dtype = ir.DataType.FLOAT
        shape = node.outputs[0].shape
        if shape is not None:
            project.outputs[0].shape = add.outputs[0].shape = ir.Shape([*shape[:-1], 3 * width])
        for output in split.outputs:
            output.dtype, output.shape = ir.DataType.FLOAT, shape
        ir.convenience.replace_nodes_and_values(graph, node, [node], [project, add, split, attention],
                                                [node.outputs[0]], [attention.outputs[0]])
        model.opset_imports.setdefault(MS_DOMAIN, 1)
        return True
