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
