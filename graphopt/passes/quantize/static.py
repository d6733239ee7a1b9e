"""quantize_static: int8 QuantizeLinear → DequantizeLinear pairs (QDQ) at calibrated ranges, where int8 kernels read them.

Standard ONNX for both targets: ONNX Runtime fuses DQ → op → Q into its int8 kernels at load
(QLinearConv, QLinearMatMul, QGemm, QLinearAdd, QLinearMul, QLinearConcat, QLinearAveragePool,
QLinearGlobalAveragePool) and drops the pairs around data movement; TensorRT and OpenVINO read
QDQ the same way.

  compute      Conv, ConvTranspose, MatMul, Gemm: a constant weight becomes int8 (symmetric, one
               scale per output channel with `per_channel`, else per tensor) behind a
               DequantizeLinear; a Conv/Gemm constant bias int32 at scale x_scale · w_scale
               (zero point 0), as the integer kernels add it, less E[x]·(Ŵ − W), the mean
               error the weights' rounding adds (bias correction, from the measured mean of each
               input channel; a Conv or Gemm without a bias gets one); activations through Q/DQ
  elementwise  Add, Mul, AveragePool, GlobalAveragePool, Concat: every float input and the output
               through Q/DQ (a constant input stored quantized at its own min/max), only where an int8
               kernel reads the output (directly or through data movement): arithmetic a float op
               finishes (a written-out GELU's x·x·x before its Tanh, a LayerNorm's E[x²] − E[x]²)
               stays float
  movement     Reshape, Transpose, Flatten, Squeeze, Unsqueeze, MaxPool, Resize, Split, Slice:
               quantized only between quantized tensors, every output at its input's scale and zero
               point (so the pair around it drops and the data stays int8)
  activation   a Relu reading only a compute op's, Add's or Mul's output: that output gets no pair,
               the Relu's output does, with zero point at the bottom of the int8 range (ONNX Runtime
               then folds the Relu into the Q, leaving Conv → Q, Add → Q)

Each float tensor a quantized node reads or writes gets one pair right after its producer (or
at the graph input), read by every consumer; graph outputs stay float (the last layer runs as
DQ → op, the integer product scaled back to float). The pass requires every float value's
histogram on the calibration data (and, for bias correction, the Conv/Gemm inputs' channel
means); `calibrator` makes each histogram a range (graphopt.passes.quantize.calibrate). A node
whose tensors have no range stays float, with the reason in the report. Activations are uint8 with a zero point (`activation_type` "u8") or int8
(`s8`, `symmetric` for zero point 0).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from graphopt.errors import InputError
from graphopt.passes.match import (
    constant_array,
    constant_tensor,
    drop_unused_initializers,
    fresh_node_name,
    fresh_value_name,
    infer_types,
    new_initializer,
)
from graphopt import shapes
from graphopt.passes.contract import HISTOGRAMS, MEANS, LossyPass, Request
from graphopt.passes.quantize._linear import name_set
from graphopt.passes.quantize.calibrate import CALIBRATORS, calibrated_range
from graphopt.passes.quantize.scales import dequantize, symmetric_int8
from graphopt.passes.registry import register

COMPUTE = {"Conv": 1, "ConvTranspose": 1, "MatMul": 1, "Gemm": 1}  # op: index of the weight
ELEMENTWISE = ("Add", "Mul", "AveragePool", "GlobalAveragePool", "Concat")
MOVEMENT = ("Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "MaxPool", "Resize", "Split", "Slice")
RELU_FOLDS = (*COMPUTE, "Add", "Mul")  # ops whose int8 kernel the Relu after them folds into
ACTIVATION_TYPES = {"u8": (ir.DataType.UINT8, 0, 255), "s8": (ir.DataType.INT8, -128, 127)}
BIAS_QMAX = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class Params:
    """A tensor's quantization: x ≈ scale · (q − zero_point)."""

    scale: float
    zero_point: int


def check_activations(calibrator: str, activation_type: str, symmetric: bool) -> None:
    """The static quantizers' activation options, or an InputError saying what is wrong."""
    if calibrator not in CALIBRATORS:
        raise InputError(f"--calibrator {calibrator!r}: choose from {', '.join(CALIBRATORS)}")
    if activation_type not in ACTIVATION_TYPES:
        raise InputError(f"--activation-type {activation_type!r}: choose u8 or s8")
    if symmetric and activation_type == "u8":
        raise InputError("symmetric activations are int8 (--activation-type s8): uint8 needs its zero point")


def activation_params(low: float, high: float, activation_type: str, symmetric: bool) -> Params:
    """The scale and zero point of an activation calibrated to [low, high] (widened to hold 0)."""
    _, qmin, qmax = ACTIVATION_TYPES[activation_type]
    low, high = min(low, 0.0), max(high, 0.0)
    if symmetric:
        peak = max(-low, high)
        return Params(peak / qmax if peak > 0 else 1.0, 0)
    if high == low:
        return Params(1.0, qmin if activation_type == "u8" else 0)
    scale = (high - low) / (qmax - qmin)
    return Params(scale, int(np.clip(round(qmin - low / scale), qmin, qmax)))


def float_values(model: ir.Model) -> tuple[str, ...]:
    """Names of the model's float inputs and node outputs (each gets a histogram); missing types
    are inferred first (a model loaded without value_info, under --preset O0)."""
    try:
        shapes.infer_shapes(model, only_if_missing=True)
    except shapes.InferenceFailed:
        pass  # values of unknown type get no range, and the nodes reading them say why they stay float
    values = [*model.graph.inputs, *(value for node in model.graph for value in node.outputs)]
    return tuple(value.name for value in values if value.name and value.dtype == ir.DataType.FLOAT
                 and isinstance(value.type, ir.TensorType))  # not a sequence of float tensors


def conv_gemm_inputs(model: ir.Model) -> tuple[str, ...]:
    """Names of the inputs x of the Convs and Gemms with a constant weight (channel axis 1): what bias
    correction measures the mean of."""
    return tuple(dict.fromkeys(
        node.inputs[0].name for node in model.graph
        if node.op_type in ("Conv", "Gemm") and node.domain in ("", "ai.onnx") and len(node.inputs) > 1
        and constant_tensor(node.inputs[1]) is not None and node.inputs[0] is not None and node.inputs[0].name
        and not (node.op_type == "Gemm" and node.attributes.get_int("transA", 0))))


@register("quantize_static", min_opset=13)
class QuantizeStatic(LossyPass):
    """Insert int8 QuantizeLinear/DequantizeLinear pairs at calibrated ranges around the ops int8 kernels run.

    Run by the int8-static preset (with `--calib`) and `graphopt quantize --mode static --scheme qdq`
    (`auto` picks it for a model without attention); for a model with attention the preset runs
    quantize_static_linear instead, while a pass list or recipe ending in quantize_static runs this
    pass as named. The float passes before it run for the portable target: contrib fusions such as
    FusedConv would hide the Conv → Relu that ONNX Runtime's QDQ fusions look for. Only the main
    graph is quantized. ResNet-50 (random weights, 16 random calibration images): every Conv, Add
    and the Gemm run as QLinearConv, QLinearAdd and QGemm after ONNX Runtime's fusions (its global
    pooling, a ReduceMean in the dynamo export, stays float), output cosine 0.9999.

    Options:

    - `per_channel`: one weight scale per output channel; False: one per tensor.
    - `activation_type`: `u8` (a zero point; ONNX Runtime's CPU kernels fuse uint8 best) or `s8`.
    - `symmetric`: zero point 0 for activations (`s8` only).
    - `exclude`: `;`-separated node names or op types kept float.
    - `calibrator`: how each activation's histogram becomes its range: `minmax` (the
      exact min and max), `percentile` (the 99.999th and 0.001st percentiles) or `entropy` (the clip
      with the least KL divergence at 128 levels, 256 for non-negative data: TensorRT's method). On
      digits-cnn with 112 calibration images `entropy` clipped too hard (a budget kept both Convs
      float); `minmax` and `percentile` kept every layer int8 at top-1 agreement 1.0.
    - `bias_correction`: subtract E[x]·(Ŵ − W) from the Conv/Gemm biases (see above); in the tests a
      depthwise Conv with one weight scale per tensor has its worst channel's mean output error cut
      more than 3x.
    """

    tolerance = "int8-static"
    handles = "Conv, MatMul, Gemm, pooling and the ops between them"
    needs_calibration = "static int8 measures every activation's range on calibration data"

    def __init__(self, per_channel: bool = True, activation_type: str = "u8", symmetric: bool = False,
                 exclude: str = "", calibrator: str = "minmax", bias_correction: bool = True) -> None:
        super().__init__()
        check_activations(calibrator, activation_type, symmetric)
        self.per_channel = per_channel
        self.activation_type = activation_type
        self.symmetric = symmetric
        self.exclude = name_set(exclude)
        self.calibrator = calibrator
        self.bias_correction = bias_correction
        self.corrected = self.corrected_added = 0  # biases corrected, biases added for it (last call)
        self.ranges: dict[str, tuple[float, float]] = {}  # {value name: (low, high)}, from the histograms

    def requires(self, model: ir.Model) -> list[Request]:
        requests = [Request(HISTOGRAMS, float_values(model))]
        if self.bias_correction:
            requests.append(Request(MEANS, conv_gemm_inputs(model), axis=1))
        return requests

    @property
    def input_means(self) -> dict[str, np.ndarray]:
        """{Conv/Gemm input name: its mean per input channel} (measured): bias correction."""
        return self.statistics.means

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        infer_types(self, model)
        graph = model.graph
        self.ranges = {name: calibrated_range(histogram, self.calibrator)
                       for name, histogram in self.statistics.histograms.items()}
        chosen = self._choose(graph)
        for node in chosen:
            if node.op_type not in MOVEMENT and node.op_type != "Relu":
                weight = constant_tensor(node.inputs[COMPUTE[node.op_type]]) if node.op_type in COMPUTE else None
                self.record(node, "int8", before=getattr(weight, "nbytes", 0),
                            after=getattr(weight, "nbytes", 0) // 4)
        params = self._params(chosen)
        self.corrected = self.corrected_added = 0
        weights = sum(self._quantize_weight(graph, node, params) for node in chosen if node.op_type in COMPUTE)
        tensors = [value for value in _tensors(chosen) if value in params]
        for value in tensors:
            self._insert_pair(graph, value, params[value])
        counts: dict[str, int] = {}
        for node in chosen:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
        if chosen:
            kinds = ", ".join(f"{count} {op}" for op, count in sorted(counts.items()))
            self.changed(f"{len(tensors)} activations int8 ({self.activation_type}) around {kinds}; "
                         f"{weights} weights int8 ({'per channel' if self.per_channel else 'per tensor'})")
        if self.corrected:
            added = f" ({self.corrected_added} given a bias for it)" if self.corrected_added else ""
            self.changed(f"{self.corrected} Conv/Gemm biases corrected for the weights' rounding (mean input "
                         f"times the weight error){added}")
        return ir.passes.PassResult(model, modified=bool(chosen))

    # -- which nodes ---------------------------------------------------------------------------

    def _choose(self, graph: ir.Graph) -> list[ir.Node]:
        chosen: list[ir.Node] = []
        for node in graph:
            if node.op_type in MOVEMENT or node.domain not in ("", "ai.onnx"):
                continue
            if node.op_type not in COMPUTE and node.op_type not in ELEMENTWISE and node.op_type != "Relu":
                continue
            reason = "excluded" if self._excluded_quietly(node) else self.held(node) or self._unquantizable(node)
            if reason:
                if node.op_type != "Relu":
                    self.keep(node, reason, layer=node.name or node.outputs[0].name)
                continue
            chosen.append(node)
        chosen = self._int8_paths(chosen)
        moving = True
        quantized = set(_tensors(chosen))
        while moving:  # data movement between quantized tensors, chains included
            moving = False
            for node in graph:
                if node.op_type in MOVEMENT and node not in chosen and not self._excluded_quietly(node) and \
                        not any(out.is_graph_output() for out in node.outputs) and \
                        (node.inputs[0] in quantized and any(use.node in chosen for out in node.outputs
                                                             for use in out.uses()) or self._feeds_only_int8(node, chosen)):
                    chosen.append(node)
                    quantized.update(node.outputs)
                    moving = True
        order = {node: index for index, node in enumerate(graph)}
        return sorted(chosen, key=order.__getitem__)

    def _int8_paths(self, chosen: list[ir.Node]) -> list[ir.Node]:
        """The chosen nodes less the elementwise ones whose output no int8 kernel reads (through data
        movement): there int8 only adds rounding. Arithmetic that a float op finishes (a GELU's
        x·x·x before its Tanh, a LayerNorm's E[x²] − E[x]² written out) stays float; a residual Add
        read by the next block's Conv, or a Concat of feature maps, keeps int8.
        Written-out GELUs and LayerNorms (tf2onnx's) lost a classifier's output (cosine 0.03) in int8."""
        chosen = [node for node in chosen if node.op_type != "Relu" or _after_compute(node, chosen)]
        while True:
            kept = set(chosen)
            idle = [node for node in chosen if node.op_type in ELEMENTWISE and not _feeds_int8(node.outputs[0], kept)]
            if not idle:
                return chosen
            for node in idle:
                self.keep(node, "no int8 kernel reads its output (int8 would only add rounding)",
                          layer=node.name or node.outputs[0].name)
            chosen = [node for node in chosen if node not in idle]
            chosen = [node for node in chosen if node.op_type != "Relu" or _after_compute(node, chosen)]

    def _feeds_only_int8(self, node: ir.Node, chosen: list[ir.Node]) -> bool:
        """Data movement from a float tensor with a range whose every reader is an int8 kernel: the
        data is quantized once before it (YOLOX's Focus: four Slices of the image into a Concat read
        by a Conv, one QuantizeLinear on the image instead of four on the slices)."""
        source = node.inputs[0]
        return source is not None and source.name in self.ranges and constant_tensor(source) is None and \
            source.dtype == ir.DataType.FLOAT and all(use.node in chosen and use.node.op_type not in MOVEMENT
                                                      for out in node.outputs for use in out.uses())

    def _excluded_quietly(self, node: ir.Node) -> bool:
        return node.name in self.exclude or node.op_type in self.exclude

    def _unquantizable(self, node: ir.Node) -> str:
        data = _data_inputs(node)
        if not data or any(value.dtype != ir.DataType.FLOAT for value in [*data, *node.outputs[:1]]):
            return "not float32"
        if len(node.outputs) != 1 or node.outputs[0].is_graph_output() and node.op_type not in COMPUTE:
            return "its output is a graph output" if len(node.outputs) == 1 else "several outputs"
        if node.op_type in COMPUTE:
            if node.op_type != "MatMul" and constant_tensor(node.inputs[COMPUTE[node.op_type]]) is None:
                return "its weight is not a constant"
            if node.op_type == "Gemm" and any(node.attributes.get_float(name, 1.0) != 1.0 for name in ("alpha", "beta")):
                return "alpha or beta other than 1"
            if node.op_type == "Gemm" and node.attributes.get_int("transA", 0):
                return "transA"
        reads = [value for value in data if constant_tensor(value) is None]
        missing = [value.name for value in [*reads, *node.outputs]
                   if value.name not in self.ranges and not value.is_graph_output()]
        if missing:
            return f"no calibrated range for {', '.join(missing[:2])}"
        measured = [self.ranges[value.name] for value in [*reads, *node.outputs] if value.name in self.ranges]
        constants = [constant_array(value) for value in data if constant_tensor(value) is not None]
        if node.op_type in COMPUTE and constant_tensor(node.inputs[COMPUTE[node.op_type]]) is not None:
            constants.append(constant_array(node.inputs[COMPUTE[node.op_type]]))  # the weight
        if not all(np.isfinite(bounds).all() for bounds in measured) or \
                not all(np.isfinite(array).all() for array in constants):
            return "inf or NaN in its calibrated ranges or constants"
        return ""

    # -- quantization parameters ----------------------------------------------------------------

    def _params(self, chosen: list[ir.Node]) -> dict[ir.Value, Params]:
        params: dict[ir.Value, Params] = {}
        chosen_set = set(chosen)
        for node in chosen:  # in graph order: a movement node's input is settled before it
            for value in _data_inputs(node):
                if value in params:
                    continue
                array = constant_array(value)
                if array is not None:
                    params[value] = self._activation(float(min(array.min(), 0)), float(max(array.max(), 0)))
                elif value.name in self.ranges and not _feeds_relu(value, chosen_set):
                    params[value] = self._activation(*self.ranges[value.name])
            if node.op_type in MOVEMENT:  # every output (a Split's) at its input's scale
                params.update((out, params[node.inputs[0]]) for out in node.outputs)
                continue
            out = node.outputs[0]
            if out.is_graph_output() or _feeds_relu(out, chosen_set):
                continue
            if node.op_type == "Relu":
                params[out] = self._activation(0.0, self.ranges[out.name][1])
            else:
                params[out] = self._activation(*self.ranges[out.name])
        return params

    def _activation(self, low: float, high: float) -> Params:
        return activation_params(low, high, self.activation_type, self.symmetric)

    # -- rewriting -------------------------------------------------------------------------------

    def _insert_pair(self, graph: ir.Graph, value: ir.Value, params: Params) -> None:
        """value → Q → DQ, read by all of value's readers; a constant is stored quantized behind the DQ."""
        dtype = ACTIVATION_TYPES[self.activation_type][0]
        base = value.name or "x"
        array = constant_array(value)
        if array is not None:
            _, qmin, qmax = ACTIVATION_TYPES[self.activation_type]
            q = np.clip(np.rint(array / params.scale) + params.zero_point, qmin, qmax).astype(dtype.numpy())
            dequantized = self._dequantized(graph, q, np.float32(params.scale),
                                            np.array(params.zero_point, dtype.numpy()), None, base)
            for use in list(value.uses()):
                use.node.replace_input_with(use.idx, dequantized)
            drop_unused_initializers(graph, [value])
            return
        scale = new_initializer(graph, np.array(params.scale, np.float32), f"{base}_scale")
        zero = new_initializer(graph, np.array(params.zero_point, dtype.numpy()), f"{base}_zero_point")
        uses = list(value.uses())
        quantize = ir.Node("", "QuantizeLinear", [value, scale, zero], name=fresh_node_name(graph, f"{base}/Q"))
        quantize.outputs[0].name = fresh_value_name(graph, f"{base}_quantized")
        quantize.outputs[0].dtype, quantize.outputs[0].shape = dtype, value.shape
        dequantize = ir.Node("", "DequantizeLinear", [quantize.outputs[0], scale, zero],
                             name=fresh_node_name(graph, f"{base}/DQ"))
        dequantize.outputs[0].name = fresh_value_name(graph, f"{base}_dequantized")
        dequantize.outputs[0].dtype, dequantize.outputs[0].shape = value.dtype, value.shape
        producer = value.producer()
        if producer is not None:
            graph.insert_after(producer, [quantize, dequantize])
        else:
            graph.insert_before(next(iter(graph)), [quantize, dequantize])
        for use in uses:
            use.node.replace_input_with(use.idx, dequantize.outputs[0])

    def _quantize_weight(self, graph: ir.Graph, node: ir.Node, params: dict[ir.Value, Params]) -> int:
        index = COMPUTE[node.op_type]
        weight = constant_array(node.inputs[index])
        if weight is None or weight.dtype != np.float32:
            return 0
        grouped = node.op_type == "ConvTranspose" and node.attributes.get_int("group", 1) != 1
        axis = _channel_axis(node) if self.per_channel and weight.ndim >= 2 and not \
            (node.op_type == "MatMul" and weight.ndim != 2) and not grouped else None
        q, scale = symmetric_int8(weight, axis)
        base = node.inputs[index].name or "weight"
        old = [node.inputs[index]]
        node.replace_input_with(index, self._dequantized(graph, q, scale, np.zeros(scale.shape, np.int8), axis, base))
        bias = node.inputs[2] if len(node.inputs) > 2 and node.op_type in ("Conv", "Gemm") else None
        biases = constant_array(bias) if bias is not None else None
        x = params.get(node.inputs[0])
        channels = weight.shape[_channel_axis(node)]
        correction = self._correction(node, weight, q, scale, axis) if x is not None else None
        if correction is not None and not np.all(np.isfinite(correction)):
            correction = None  # statistics that overflowed correct nothing
        if correction is not None and (bias is None or (biases is not None and biases.shape == (channels,))):
            biases = (np.zeros(channels, np.float32) if biases is None else biases) - correction.astype(np.float32)
            if bias is None:
                node.resize_inputs(3)
                self.corrected_added += 1
            self.corrected += 1
        bias_scale = (x.scale * np.broadcast_to(scale, biases.shape)).astype(np.float32) \
            if biases is not None and x is not None and biases.shape == (channels,) else None
        if bias_scale is not None and np.all(np.isfinite(biases)) and np.all(np.isfinite(bias_scale)):
            # in float64: float32 rounds BIAS_QMAX (2**31 - 1) up to 2**31, which int32 cannot hold
            q_bias = np.clip(np.rint(biases.astype(np.float64) / np.where(bias_scale > 0, bias_scale, 1.0)),
                             -BIAS_QMAX, BIAS_QMAX)
            node.replace_input_with(2, self._dequantized(graph, q_bias.astype(np.int32), bias_scale,
                                                         np.zeros(biases.shape, np.int32), 0,
                                                         bias.name if bias is not None else f"{base}_bias"))
            if bias is not None:
                old.append(bias)
        drop_unused_initializers(graph, old)
        return 1

    def _correction(self, node: ir.Node, weight: np.ndarray, q: np.ndarray, scale: np.ndarray,
                    axis: int | None) -> np.ndarray | None:
        """E[x]·(Ŵ − W) per output channel of a Conv or Gemm: what the int8 weights' rounding adds to
        the output on average, which the bias then subtracts (bias correction, Nagel et al. 2019;
        the mean is over every position of x, padding not counted). None without measured means."""
        means = self.input_means.get(node.inputs[0].name)
        if not self.bias_correction or means is None or node.op_type not in ("Conv", "Gemm"):
            return None
        error = dequantize(q, scale, axis).astype(np.float64) - weight
        if node.op_type == "Conv":
            groups = node.attributes.get_int("group", 1)
            outputs, per_group = weight.shape[:2]
            if means.shape != (per_group * groups,) or outputs % groups:
                return None
            group_means = means.reshape(groups, per_group)[np.arange(outputs) // (outputs // groups)]
            return (error.reshape(outputs, per_group, -1).sum(axis=2) * group_means).sum(axis=1)
        error = error.T if node.attributes.get_int("transB", 0) else error  # [K, N]
        return means @ error if means.shape == (error.shape[0],) else None

    @staticmethod
    def _dequantized(graph: ir.Graph, q: np.ndarray, scale: np.ndarray, zero: np.ndarray, axis: int | None,
                     base: str) -> ir.Value:
        inputs = [new_initializer(graph, q, f"{base}_quantized"), new_initializer(graph, np.asarray(scale, np.float32),
                                                                                  f"{base}_scale"),
                  new_initializer(graph, zero, f"{base}_zero_point")]
        attributes = [ir.AttrInt64("axis", axis)] if axis is not None and np.ndim(scale) == 1 else []
        node = ir.Node("", "DequantizeLinear", inputs, attributes, name=fresh_node_name(graph, f"{base}/DQ"))
        node.outputs[0].name = fresh_value_name(graph, f"{base}_dequantized")
        node.outputs[0].dtype, node.outputs[0].shape = ir.DataType.FLOAT, ir.Shape(q.shape)
        graph.insert_before(next(iter(graph)), node)
        return node.outputs[0]


def _tensors(nodes: list[ir.Node]) -> list[ir.Value]:
    """The tensors the nodes read (`_data_inputs`) or write, once each, in order."""
    seen: dict[ir.Value, None] = {}
    for node in nodes:
        for value in _data_inputs(node):
            seen.setdefault(value)
        for out in node.outputs if node.op_type in MOVEMENT else node.outputs[:1]:
            seen.setdefault(out)
    return list(seen)


def _data_inputs(node: ir.Node) -> list[ir.Value]:
    """The inputs that carry data through the quantized node: a compute op's activation (both of
    an activation-by-activation MatMul; the weight and bias are quantized apart), every input of
    Add, Mul and Concat, the first of the others (not a Reshape's shape or a Resize's scales)."""
    if node.op_type in COMPUTE:
        return [value for index, value in enumerate(node.inputs[:2]) if value is not None and
                (index == 0 or (node.op_type == "MatMul" and constant_tensor(value) is None))]
    if node.op_type in ("Add", "Mul", "Concat"):
        return [value for value in node.inputs if value is not None]
    return node.inputs[:1] if node.inputs and node.inputs[0] is not None else []


def _feeds_int8(value: ir.Value, chosen: set[ir.Node]) -> bool:
    """A chosen node reads `value`, directly or through data movement."""
    for use in value.uses():
        node = use.node
        if node in chosen or (node.op_type in MOVEMENT and use.idx == 0 and
                              not any(out.is_graph_output() for out in node.outputs) and
                              any(_feeds_int8(out, chosen) for out in node.outputs)):
            return True
    return False


def _after_compute(relu: ir.Node, chosen: list[ir.Node]) -> bool:
    """A Relu is quantized when it reads the output of a chosen compute op, Add or Mul, and
    nothing else does (a residual block's Add → Relu as much as Conv → Relu)."""
    producer = relu.inputs[0].producer()
    return producer in chosen and producer.op_type in RELU_FOLDS and len(relu.inputs[0].uses()) == 1 and \
        not relu.inputs[0].is_graph_output()


def _feeds_relu(value: ir.Value, chosen: set[ir.Node]) -> bool:
    """The output a chosen Relu takes over (no pair of its own)."""
    uses = list(value.uses())
    return len(uses) == 1 and uses[0].node in chosen and uses[0].node.op_type == "Relu" and \
        value.producer() is not None and value.producer().op_type in RELU_FOLDS


def _channel_axis(node: ir.Node) -> int:
    """The weight's output-channel axis."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm":
        return 0 if node.attributes.get_int("transB", 0) else 1
    return 1  # MatMul: the columns of [K, N]
