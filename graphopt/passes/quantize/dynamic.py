"""quantize_dynamic: int8 weights for the linear layers, activations quantized at run time.

A MatMul by a constant [K, N] float32 weight (a Gemm reads as MatMul + bias) gets symmetric
int8 weights, one scale per output column or per tensor (`scales.py`). At run time x is
quantized to uint8 over its own range (DynamicQuantizeLinear: scale xs, zero point xz) and
x·W ≈ xs · s · (xq − xz)·q is computed in integers:
  ort       DynamicQuantizeMatMul(x, q, s, bias): one node, MLAS's u8·s8 kernel; several
            MatMuls reading one x share one DynamicQuantizeLinear and run MatMulIntegerToFloat.
            A bias the next node adds (a constant input of the residual Sum, BiasGelu's, which
            becomes Gelu) moves into the kernel, which adds it as it writes.
  portable  DynamicQuantizeLinear(x) → MatMulInteger(xq, q, xz) → Cast → Mul(xs · s) [→ Add(bias)]
com.microsoft Attention (ort) becomes QAttention, its packed QKV projection int8 inside the
kernel (qattention.py), when its attention bias is a mask QAttention takes; otherwise its three
projections are int8 MatMuls reading one quantized x, then MultiHeadAttention with the bias.
With `outlier_ratio`, the pass requires the per-channel peaks of every linear layer's input
(measured by the lossy pipeline), and the channels above outlier_ratio × the median peak are
computed in float beside the int8 product (LLM.int8(); outliers.py: carved out of the Gelu/Relu
layer making them, or masked out of x — `mask_outliers` False skips those).
Embedding tables (Gather of a constant [V, D] table) become int8 rows with one scale per row,
both gathered per lookup.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from graphopt.errors import InputError
from graphopt.passes.match import (
    MS_DOMAIN,
    constant_array,
    constant_tensor,
    fresh_node_name,
    fresh_value_name,
    infer_types,
    is_op,
    new_initializer,
    only_consumer,
)
from graphopt.passes.quantize import qattention
from graphopt.passes.contract import CHANNELS, Request
from graphopt.passes.quantize._linear import Linear, WeightQuantizer, linear_inputs
from graphopt.passes.quantize.outliers import carve_all, pick
from graphopt.passes.quantize.scales import symmetric_int8
from graphopt.passes.registry import register


@register("quantize_dynamic", min_opset=11)
class QuantizeDynamic(WeightQuantizer):
    """Quantize MatMul/Gemm/Attention weights to int8 (activations at run time) and embedding tables to int8 rows.

    Not in O1-O3: `graphopt quantize` (`--mode dynamic`) and the int8-dynamic preset run it. ort's
    Attention becomes QAttention when its attention bias is absent or Where(cond, 0, c) — both
    exporters' padding and causal masks — with cond a bool [B, 1, S, total] whose B and S are
    provably x's: cond becomes one int32 mask_index shared by every layer and c the
    mask_filter_value, so the result is the split form's to the bit, a query that may attend nothing
    included (MiniLM at seq 128: ~9% faster than the split form). Any other bias, outlier channels
    of x to mask, or `qattention=False` keeps the split form: three MatMulIntegerToFloat on one
    DynamicQuantizeLinear, then MultiHeadAttention with the bias. A bias moves into the int8 kernel
    only for a layer without one of its own. Embedding rows: Gather of the int8 rows and of their
    scales, Cast, Mul.

    Options:

    - `per_channel`: one weight scale per output column (QAttention: per column of the packed weight);
      False: one per tensor (QAttention: one per projection).
    - `exclude`: `;`-separated node names or op types kept float; a name matching no node or op type
      of the model (after the float passes) is an error.
    - `embeddings`: quantize embedding tables (Gather by rows of a constant [V, D] float32 table).
    - `min_embedding_bytes`: the smallest table quantized.
    - `outlier_ratio`: input channels whose measured peak is above that many times the median peak
      are computed in float beside the int8 product (see the module above); 0 (the default) turns it
      off, otherwise it must be above 1.
    - `max_outliers`: at most this many such channels per input, the largest.
    - `mask_outliers`: False keeps only the carved outliers (`--outlier-mode carve`): x is not masked.
    - `qattention`: False always splits ort's Attention as above.
    """

    target_aware = True
    tolerance = "int8"
    handles = "MatMul/Gemm/Attention weights and embedding tables; a CNN's Convs take --mode static"
    float32_only = "dynamic int8 quantizes float32 activations"
    # ort: a layer alone on its input runs DynamicQuantizeMatMul, which quantizes x inside the kernel
    quantizes_inside = True
    activations = "dynamic activations"  # how the report says x is quantized

    def __init__(self, per_channel: bool = True, exclude: str = "", embeddings: bool = True,
                 min_embedding_bytes: int = 1 << 20, outlier_ratio: float = 0.0, max_outliers: int = 8,
                 mask_outliers: bool = True, qattention: bool = True) -> None:
        super().__init__(exclude, min_embedding_bytes)
        if outlier_ratio and outlier_ratio <= 1:
            raise InputError(f"quantize_dynamic: outlier_ratio must be above 1 (or 0 for none), got {outlier_ratio}")
        self.per_channel = per_channel
        self.embeddings = embeddings
        self.outlier_ratio = outlier_ratio
        self.max_outliers = max_outliers
        self.mask_outliers = mask_outliers  # False: only carved outliers (outliers.py), no masked ones
        self.qattention = qattention  # False: every Attention split, its projections int8 MatMuls
        self._quantized: dict[tuple, tuple[ir.Value, ir.Value, ir.Value | None]] = {}

    def measures(self) -> bool:
        return bool(self.outlier_ratio)

    def requires(self, model: ir.Model) -> list[Request]:
        return [Request(CHANNELS, linear_inputs(model))] if self.measures() else []

    @property
    def channel_peaks(self) -> dict[str, np.ndarray]:
        """[K] largest |x| per input channel, by the name of the x a MatMul reads (measured)."""
        return self.statistics.peaks()

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self._check_exclude(model)
        infer_types(self, model)
        self._quantized.clear()
        self._projections.clear()
        counts = {"linear": 0, "qattention": 0, "attention": 0, "embedding": 0, "outliers": 0, "carved": 0}
        for graph in model.graphs():
            if self.target == "ort":
                masks: dict[ir.Value, ir.Value] = {}
                for node in list(graph):
                    if node.domain != MS_DOMAIN or node.op_type != "Attention":
                        continue
                    found = self._qattention_plan(node)
                    weight_bytes = getattr(constant_tensor(node.inputs[1]), "nbytes", 0)
                    if found is not None:
                        if not self._excluded(node, weight_bytes):
                            qattention.emit(model, graph, node, found, self.per_channel, masks,
                                            lambda x, before, name: self._quantize_input(graph, x, before, name))
                            self.record(node, "int8", before=weight_bytes, after=weight_bytes // 4)
                            counts["qattention"] += 1
                    elif self._split_attention(model, graph, node, separate=True):
                        self.record(node, "int8", before=weight_bytes, after=weight_bytes // 4)
                        counts["attention"] += 1
            helpers, carved = self._carve(graph)
            counts["carved"] += len(carved)
            groups: dict[ir.Value, list[Linear]] = {}
            for node in list(graph):
                linear = self._linear(node) if node not in helpers else None
                if linear is not None:
                    groups.setdefault(linear.x, []).append(linear)
            for x, members in groups.items():
                peaks = self.channel_peaks.get(x.name) if self.mask_outliers and x not in carved else None
                outliers = pick(peaks, _width(members[0]), self.outlier_ratio, self.max_outliers)
                self._emit(model, graph, members, outliers)
                counts["linear"] += len(members)
                counts["outliers"] += len(members) if len(outliers) else 0
            if self.embeddings:
                counts["embedding"] += sum(self._embedding(graph, node) for node in list(graph)
                                           if is_op(node, "Gather"))
        scales = "per-channel" if self.per_channel else "per-tensor"
        if counts["linear"]:
            self.changed(f"{counts['linear']} MatMul/Gemm int8 ({scales} weights, {self.activations})")
        if counts["qattention"]:
            self.changed(f"{counts['qattention']} Attention → QAttention (QKV projection int8 inside the kernel)")
        if counts["attention"]:
            self.changed(f"{counts['attention']} Attention QKV projections int8 (MultiHeadAttention after)")
        if counts["carved"]:
            self.changed(f"{counts['carved']} activations' outlier channels (peak above {self.outlier_ratio:g}x the "
                         "median) carved out of the layer producing them and computed apart in float")
        if counts["outliers"]:
            self.changed(f"{counts['outliers']} of them with their outlier input channels (peak above "
                         f"{self.outlier_ratio:g}x the median) masked out and multiplied in float beside the int8 one")
        if counts["embedding"]:
            self.changed(f"{counts['embedding']} embedding tables int8 (per-row scales)")
        modified = any(counts.values())
        if modified:
            ir.passes.common.RemoveUnusedNodesPass()(model)
        return ir.passes.PassResult(model, modified=modified)

    def _qattention_plan(self, node: ir.Node) -> qattention.Plan | None:
        """How the node becomes a QAttention, or None: turned off, an attention bias QAttention cannot
        take, or outlier channels of x to mask (only the split projections can leave them float)."""
        if not self.qattention:
            return None
        found = qattention.plan(node)
        if found is None or (self.mask_outliers and
                             len(pick(self.channel_peaks.get(node.inputs[0].name), found.weight.shape[0],
                                      self.outlier_ratio, self.max_outliers))):
            return None
        return found

    def _carve(self, graph: ir.Graph) -> tuple[set[ir.Node], set[ir.Value]]:
        """Carve the outlier channels out of activations produced by act(x·W) (outliers.carve_all):
        (the float MatMuls added, the activations carved)."""
        return carve_all(graph, self.channel_peaks, self.outlier_ratio, self.max_outliers,
                         frozen=lambda item: item.name in self.exclude or item.op_type in self.exclude)

    def _weights(self, graph: ir.Graph, linear: Linear, outliers: np.ndarray) -> tuple[ir.Value, ir.Value, ir.Value | None]:
        """The int8 weight [K, N] and its scales, made once per float weight; with outlier
        channels, their rows are zero in the int8 weight and kept float apart ([k, N])."""
        key = (id(linear.weight), linear.transposed, outliers.tobytes())
        if key not in self._quantized:
            weight = constant_array(linear.weight)
            weight = weight.T if linear.transposed else weight
            base = linear.weight.name or "weight"
            rows = None
            if len(outliers):
                rows = new_initializer(graph, np.ascontiguousarray(weight[outliers]), f"{base}_outlier_rows")
                weight = weight.copy()
                weight[outliers] = 0
            q, scale = symmetric_int8(weight, axis=1 if self.per_channel else None)
            self._quantized[key] = (new_initializer(graph, q, f"{base}_int8"),
                                    new_initializer(graph, scale, f"{base}_scale"), rows)
        q, scale, rows = self._quantized[key]
        node = linear.nodes[0]
        if node not in self._projections:  # a split Attention's projections: the Attention was recorded
            after = sum(value.const_value.nbytes for value in (q, scale, rows) if value is not None)
            self.record(node, "int8", before=constant_tensor(linear.weight).nbytes, after=after)
        return self._quantized[key]

    # -- emitting ---------------------------------------------------------------------------

    def _emit(self, model: ir.Model, graph: ir.Graph, members: list[Linear], outliers: np.ndarray) -> None:
        if self.target == "ort":
            for linear in members:
                _absorb_bias(graph, linear)
        first = members[0].nodes[0]
        name = fresh_node_name(graph, f"{first.name or 'matmul'}/quant")
        x, x_outliers = members[0].x, None
        if len(outliers):
            x, x_outliers = self._split_outliers(graph, first, name, x, outliers, _width(members[0]))
        if self.target == "ort" and len(members) == 1 and self.quantizes_inside:
            linear = members[0]
            q, scale, rows = self._weights(graph, linear, outliers)
            node = ir.Node(MS_DOMAIN, "DynamicQuantizeMatMul", self._trim([x, q, scale, None, linear.bias]),
                           name=name)
            model.opset_imports.setdefault(MS_DOMAIN, 1)
            self._replace(graph, linear, [node, *self._add_outliers(graph, name, node, x_outliers, rows)])
            return
        xq, xs, xz = self._quantize_input(graph, x, first, name)
        for index, linear in enumerate(members):
            q, scale, rows = self._weights(graph, linear, outliers)
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
            nodes += self._add_outliers(graph, base, nodes[-1], x_outliers, rows)
            self._replace(graph, linear, nodes)

    def _quantize_input(self, graph: ir.Graph, x: ir.Value, before: ir.Node, name: str) -> qattention.Quantized:
        """(x as uint8, its scale, its zero point), quantized in front of `before`: at run time,
        over x's own range."""
        quantize = ir.Node("", "DynamicQuantizeLinear", [x], num_outputs=3, name=fresh_node_name(graph, f"{name}/x"))
        for value, suffix in zip(quantize.outputs, ("quantized", "scale", "zero_point")):
            value.name = fresh_value_name(graph, f"{name}/x_{suffix}")
        graph.insert_before(before, quantize)
        return tuple(quantize.outputs)

    @staticmethod
    def _split_outliers(graph: ir.Graph, first: ir.Node, name: str, x: ir.Value, outliers: np.ndarray,
                        width: int) -> tuple[ir.Value, ir.Value]:
        """(x with the outlier channels zeroed, for int8; x's outlier channels alone, for float)."""
        mask = np.ones(width, np.float32)
        mask[outliers] = 0
        zeroed = ir.Node("", "Mul", [x, new_initializer(graph, mask, f"{name}_inlier_mask")],
                         name=fresh_node_name(graph, f"{name}/inliers"))
        gathered = ir.Node("", "Gather", [x, new_initializer(graph, outliers, f"{name}_outlier_channels")],
                           [ir.AttrInt64("axis", -1)], name=fresh_node_name(graph, f"{name}/outliers"))
        for node in (zeroed, gathered):
            node.outputs[0].dtype = ir.DataType.FLOAT
            graph.insert_before(first, node)
        return zeroed.outputs[0], gathered.outputs[0]

    @staticmethod
    def _add_outliers(graph: ir.Graph, base: str, last: ir.Node, x_outliers: ir.Value | None,
                      rows: ir.Value | None) -> list[ir.Node]:
        """x's outlier channels times their float weight rows, added to the int8 product."""
        if x_outliers is None:
            return []
        product = ir.Node("", "MatMul", [x_outliers, rows], name=fresh_node_name(graph, f"{base}/outlier_product"))
        return [product, ir.Node("", "Add", [last.outputs[0], product.outputs[0]],
                                 name=fresh_node_name(graph, f"{base}/outlier_sum"))]

    @staticmethod
    def _trim(inputs: list) -> list:
        while inputs and inputs[-1] is None:
            inputs.pop()
        return inputs


def _absorb_bias(graph: ir.Graph, linear: Linear) -> None:
    """Move the bias that the node after the layer adds — a constant [N] input of a Sum (the
    residual sum before a LayerNormalization), or BiasGelu's, which becomes Gelu — into the int8
    kernel, which adds it as it writes the product: MiniLM at seq 128 runs ~0.4 ms (6%) faster."""
    consumer = only_consumer(linear.out)
    if linear.bias is not None or consumer is None or consumer.graph is not graph:
        return
    columns = constant_tensor(linear.weight).shape[0 if linear.transposed else 1]

    def bias(value: ir.Value | None) -> bool:
        array = constant_array(value) if value is not linear.out else None
        return array is not None and array.shape == (columns,) and array.dtype == np.float32

    if is_op(consumer, "Sum") and len(consumer.inputs) > 2:
        found = [index for index, value in enumerate(consumer.inputs) if bias(value)]
        if len(found) == 1:
            linear.bias = consumer.inputs[found[0]]
            rest = [value for index, value in enumerate(consumer.inputs) if index != found[0]]
            for index, value in enumerate(rest):
                consumer.replace_input_with(index, value)
            consumer.resize_inputs(len(rest))
    elif consumer.domain == MS_DOMAIN and consumer.op_type == "BiasGelu" and consumer.inputs[0] is linear.out \
            and len(consumer.inputs) == 2 and bias(consumer.inputs[1]):
        linear.bias = consumer.inputs[1]
        gelu = ir.Node(MS_DOMAIN, "Gelu", [linear.out], name=consumer.name)
        ir.convenience.replace_nodes_and_values(graph, consumer, [consumer], [gelu], consumer.outputs, gelu.outputs)


def _width(linear: Linear) -> int:
    """K, the input channels of the layer's [K, N] weight."""
    return constant_tensor(linear.weight).shape[1 if linear.transposed else 0]
