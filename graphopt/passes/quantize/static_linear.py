"""quantize_static_linear: static int8 for transformers — linear layers int8 at calibrated input scales, the rest float.

quantize_static puts Q/DQ pairs around every op an int8 kernel runs, which suits CNNs: ONNX
Runtime fuses their Conv → Relu → Add chains into int8 kernels that hand int8 to each other. A
transformer's linear layers sit between LayerNormalization, Gelu, Softmax and residual sums,
which have no int8 kernels; pairs around them only round and copy (MiniLM: 88 pairs left
unfused, sentence cosine 0.91). Here, as in quantize_dynamic, only x·W (+ bias) and a fused
Attention's packed QKV projection are int8, but x is quantized at the scale and zero point
calibrated for it (each input's histogram, which the pass requires, made a range by `calibrator`) instead of over
its own range at run time:

  ort       QuantizeLinear(x) → MatMulIntegerToFloat(xq, q, xs, s, xz, bias), one QuantizeLinear
            per x shared by its layers; com.microsoft Attention → QuantizeLinear + QAttention
            (qattention.py), else its projections as above and MultiHeadAttention
  portable  QuantizeLinear(x) → DequantizeLinear → MatMul(·, DequantizeLinear(q)) [→ Add(bias)]:
            the QDQ form TensorRT and OpenVINO read, which ONNX Runtime fuses into
            MatMulIntegerToFloat

Weights are symmetric int8 per output column (`per_channel`) or per tensor; embedding tables
become int8 rows as in quantize_dynamic. A layer whose x has no finite range stays float, with
the reason in the report. The kernels are dynamic int8's, so the speed is too (the run-time
min/max it saves costs about what a QuantizeLinear does); the gain is where the activations'
ranges are stable enough to calibrate, and ranges that outlier channels would stretch are best
tamed first (smooth_activations, carve_outliers, run before calibrating).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from graphopt.passes.contract import HISTOGRAMS, Request
from graphopt.passes.match import constant_tensor, fresh_node_name, fresh_value_name, new_initializer
from graphopt.passes.quantize import qattention
from graphopt.passes.quantize._linear import Linear, linear_inputs
from graphopt.passes.quantize.calibrate import calibrated_range
from graphopt.passes.quantize.dynamic import QuantizeDynamic
from graphopt.passes.quantize.static import ACTIVATION_TYPES, activation_params, check_activations
from graphopt.passes.registry import register


@register("quantize_static_linear", min_opset=13)
class QuantizeStaticLinear(QuantizeDynamic):
    """Quantize MatMul/Gemm/Attention to int8 with each input at its calibrated scale (static), the rest float.

    Run by `graphopt quantize --mode static` for a model with attention (`--scheme linear`, or
    `auto`: a fused attention node, or a Softmax reading a MatMul of two activations through at most
    four scaling, masking or layout ops), and by the int8-static preset for such a model in place of
    the quantize_static its pass list names. ort: QAttention where quantize_dynamic would emit it,
    only with `u8` activations and a calibrated range for x (the split form otherwise); a bias the
    next Sum or BiasGelu adds moves into MatMulIntegerToFloat as in quantize_dynamic. Outlier
    channels are not handled here: carve_outliers and smooth_activations run before calibration.
    MiniLM: a 2.85x speedup at a worst sentence cosine of 0.9905, as fast as dynamic int8 or
    slightly faster at the same accuracy; 2.73x at 0.9973 with
    `--smooth 0.5 --outlier-ratio 10 --outlier-mode carve`.

    Options:

    - `per_channel`: one weight scale per output column (QAttention: per column of the packed weight);
      False: one per tensor (QAttention: one per projection).
    - `calibrator`: how each input's histogram becomes its range: `minmax`, `percentile` or `entropy`.
    - `activation_type`: `u8` (a zero point) or `s8` (no QAttention: ONNX Runtime's reads uint8).
    - `symmetric`: zero point 0 for activations (`s8` only).
    - `exclude`: `;`-separated node names or op types kept float; unknown names are an error.
    - `embeddings`: embedding tables as int8 rows.
    - `qattention`: False always splits ort's Attention (three projections, MultiHeadAttention).
    """

    tolerance = "int8-static"
    needs_calibration = "static int8 measures the range of every linear layer's input on calibration data"
    float32_only = "static int8 quantizes float32 activations"
    quantizes_inside = False  # x is quantized once, at its calibrated scale, for every layer reading it
    activations = "activations at calibrated scales"

    def __init__(self, per_channel: bool = True, calibrator: str = "minmax", activation_type: str = "u8",
                 symmetric: bool = False, exclude: str = "", embeddings: bool = True, qattention: bool = True) -> None:
        super().__init__(per_channel=per_channel, exclude=exclude, embeddings=embeddings, outlier_ratio=0.0,
                         qattention=qattention)
        check_activations(calibrator, activation_type, symmetric)
        self.calibrator = calibrator
        self.activation_type = activation_type
        self.symmetric = symmetric
        self.ranges: dict[str, tuple[float, float]] = {}  # {value name: (low, high)}, from the histograms
        self._inputs: dict[ir.Value, qattention.Quantized] = {}

    def measures(self) -> bool:
        return True

    def requires(self, model: ir.Model) -> list[Request]:
        return [Request(HISTOGRAMS, linear_inputs(model))]

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self._inputs.clear()
        self.ranges = {name: calibrated_range(histogram, self.calibrator)
                       for name, histogram in self.statistics.histograms.items()}
        return super().call(model)

    # -- which layers: those whose input has a range ------------------------------------------

    def _ranged(self, x: ir.Value, node: ir.Node) -> bool:
        bounds = self.ranges.get(x.name)
        if bounds is None or not np.isfinite(bounds).all():
            self.keep(node, f"no finite calibrated range for {x.name!r}",
                      before=getattr(constant_tensor(node.inputs[1]), "nbytes", 0))
            return False
        return True

    def _linear(self, node: ir.Node) -> Linear | None:
        linear = super()._linear(node)
        return linear if linear is not None and self._ranged(linear.x, node) else None

    def _qattention_plan(self, node: ir.Node) -> qattention.Plan | None:
        if self.activation_type != "u8" or node.inputs[0].name not in self.ranges:
            return None  # ONNX Runtime's QAttention reads uint8; the split form says why it stays float
        return super()._qattention_plan(node)

    def _split_attention(self, model: ir.Model, graph: ir.Graph, node: ir.Node,
                         separate: bool = False) -> list[ir.Node]:
        if not self._ranged(node.inputs[0], node):
            return []
        return super()._split_attention(model, graph, node, separate)

    # -- emitting ---------------------------------------------------------------------------

    def _quantize_input(self, graph: ir.Graph, x: ir.Value, before: ir.Node, name: str) -> qattention.Quantized:
        """x through one QuantizeLinear at its calibrated scale and zero point, right after its
        producer (every layer reading x shares it)."""
        if x in self._inputs:
            return self._inputs[x]
        params = activation_params(*self.ranges[x.name], self.activation_type, self.symmetric)
        dtype = ACTIVATION_TYPES[self.activation_type][0]
        base = x.name or name
        scale = new_initializer(graph, np.array(params.scale, np.float32), f"{base}_scale")
        zero = new_initializer(graph, np.array(params.zero_point, dtype.numpy()), f"{base}_zero_point")
        quantize = ir.Node("", "QuantizeLinear", [x, scale, zero], name=fresh_node_name(graph, f"{base}/Q"))
        quantize.outputs[0].name = fresh_value_name(graph, f"{base}_quantized")
        quantize.outputs[0].dtype, quantize.outputs[0].shape = dtype, x.shape
        producer = x.producer()
        if producer is not None and producer.graph is graph:
            graph.insert_after(producer, quantize)
        else:
            graph.insert_before(next(iter(graph)), quantize)
        self._inputs[x] = (quantize.outputs[0], scale, zero)
        return self._inputs[x]

    def _emit(self, model: ir.Model, graph: ir.Graph, members: list[Linear], outliers: np.ndarray) -> None:
        if self.target == "ort":
            super()._emit(model, graph, members, outliers)
            return
        first = members[0].nodes[0]
        name = fresh_node_name(graph, f"{first.name or 'matmul'}/quant")
        xq, xs, xz = self._quantize_input(graph, members[0].x, first, name)
        dequantize = ir.Node("", "DequantizeLinear", [xq, xs, xz], name=fresh_node_name(graph, f"{name}/x_DQ"))
        dequantize.outputs[0].dtype, dequantize.outputs[0].shape = ir.DataType.FLOAT, members[0].x.shape
        dequantize.outputs[0].name = fresh_value_name(graph, f"{xq.name}_dequantized")
        graph.insert_after(xq.producer(), dequantize)
        for index, linear in enumerate(members):
            q, scale, _ = self._weights(graph, linear, outliers)
            base = fresh_node_name(graph, f"{name}_{index}" if len(members) > 1 else name)
            zero = new_initializer(graph, np.zeros(scale.shape, np.int8), f"{q.name}_zero_point")
            axis = [ir.AttrInt64("axis", 1)] if scale.shape else []
            weight = ir.Node("", "DequantizeLinear", [q, scale, zero], axis, name=fresh_node_name(graph, f"{base}/W_DQ"))
            weight.outputs[0].name = fresh_value_name(graph, f"{q.name}_dequantized")
            product = ir.Node("", "MatMul", [dequantize.outputs[0], weight.outputs[0]], name=base)
            nodes = [weight, product]
            if linear.bias is not None:
                nodes.append(ir.Node("", "Add", [product.outputs[0], linear.bias],
                                     name=fresh_node_name(graph, f"{base}/bias")))
            for node in nodes:
                node.outputs[0].dtype = ir.DataType.FLOAT
            self._replace(graph, linear, nodes)
