"""quantize_static: QDQ pairs at calibrated ranges run in ONNX Runtime, fuse into its int8 kernels, and stay close to float."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from graphopt import model as model_io
from graphopt.errors import InputError
from graphopt.passes import create_pass
from graphopt.passes.quantize.calibrate import minmax_range
from graphopt.passes.quantize.scales import symmetric_int8
from graphopt.pipeline import PassManager
from graphopt.runtime.activations import histograms
from tests.helpers import parse, run, statistics, to_proto

_RNG = np.random.default_rng(7)


def _floats(array: np.ndarray) -> str:
    return ", ".join(repr(float(item)) for item in np.asarray(array).reshape(-1))


_W1 = (_RNG.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32)
_B1 = (_RNG.standard_normal(8) * 0.1).astype(np.float32)
_W2 = (_RNG.standard_normal((8, 8, 3, 3)) * 0.15).astype(np.float32)
_B2 = (_RNG.standard_normal(8) * 0.1).astype(np.float32)
_WF = (_RNG.standard_normal((8, 5)) * 0.5).astype(np.float32)
_BF = (_RNG.standard_normal(5) * 0.1).astype(np.float32)


def _cnn() -> onnx.ModelProto:
    """Conv → Relu → MaxPool → Conv → Relu → Add (residual) → GlobalAveragePool → Flatten → Gemm."""
    return parse(f"""<ir_version: 9, opset_import: ["" : 17]>
        g (float[1, 3, 8, 8] x) => (float[1, 5] y) <float[8, 3, 3, 3] w1 = {{{_floats(_W1)}}}, float[8] b1 = {{{_floats(_B1)}}},
          float[8, 8, 3, 3] w2 = {{{_floats(_W2)}}}, float[8] b2 = {{{_floats(_B2)}}}, float[8, 5] wf = {{{_floats(_WF)}}},
          float[5] bf = {{{_floats(_BF)}}}> {{
            c1 = Conv <pads = [1, 1, 1, 1]> (x, w1, b1)
            r1 = Relu(c1)
            p1 = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (r1)
            c2 = Conv <pads = [1, 1, 1, 1]> (p1, w2, b2)
            r2 = Relu(c2)
            s = Add(r2, p1)
            g1 = GlobalAveragePool(s)
            f = Flatten(g1)
            y = Gemm(f, wf, bf) }}""")


def _samples(count: int = 16, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Input sets of their own seed (calibration 0, evaluation 1): the same whichever tests ran before."""
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(count)]


def _ranges(model: onnx.ModelProto, samples) -> dict[str, tuple[float, float]]:
    ir_model = model_io.from_proto(model)
    names = [value.name for node in ir_model.graph for value in node.outputs] + \
        [value.name for value in ir_model.graph.inputs]
    return {name: minmax_range(histogram) for name, histogram in histograms(ir_model, names, samples).items()}


def _quantize(model: onnx.ModelProto, ranges, **options):
    ir_model = model_io.from_proto(model)
    quantize = create_pass("quantize_static", options)
    quantize.statistics = statistics(ranges=ranges)
    report = PassManager([quantize]).run(ir_model)
    return ir_model, report.passes[0]


def _fused_ops(model) -> list[str]:
    """The op types ONNX Runtime runs after its own optimizations (QDQ fusions included)."""
    options = ort.SessionOptions()
    options.log_severity_level = 4
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(_fused_ops.path)
    ort.InferenceSession(to_proto(model).SerializeToString(), options, providers=["CPUExecutionProvider"])
    return [node.op_type for node in onnx.load(str(_fused_ops.path)).graph.node]


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a.reshape(-1), b.reshape(-1)) / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(autouse=True)
def _fused_path(tmp_path):
    _fused_ops.path = tmp_path / "fused.onnx"


@pytest.mark.parametrize("options", [{}, {"per_channel": False}])
def test_a_cnn_runs_close_to_float_and_every_op_fuses_into_an_int8_kernel(options):
    model = _cnn()
    quantized, report = _quantize(model, _ranges(model, _samples()), **options)
    assert report.changes and "2 Conv" in report.changes[0] and "1 Gemm" in report.changes[0]
    for feeds in _samples(4, seed=1):
        (want,), (got,) = run(model, feeds), run(quantized, feeds)
        assert _cosine(want, got) > 0.999
        assert np.abs(got - want).max() < 0.05 * np.abs(want).max()
    fused = _fused_ops(quantized)
    assert "Conv" not in fused and "Relu" not in fused  # QLinearConv, the Relus folded into its Q
    assert fused.count("QLinearConv") == 2
    assert "Add" not in fused and "QLinearAdd" in fused
    assert "QLinearGlobalAveragePool" in fused and "GlobalAveragePool" not in fused
    assert "QGemm" in fused and "Gemm" not in fused
    assert [op for op in fused if op.endswith("MaxPool")] == ["NhwcMaxPool"]  # on the int8 data, its pair dropped


@pytest.mark.parametrize("symmetric", [False, True])
def test_int8_activations_run_close_to_float(symmetric):
    """(ONNX Runtime's CPU kernels fuse fewer of them: uint8 is the default for a reason.)"""
    model = _cnn()
    quantized, _ = _quantize(model, _ranges(model, _samples()), activation_type="s8", symmetric=symmetric)
    zero_points = {name: value.const_value.numpy() for name, value in quantized.graph.initializers.items()
                   if name.endswith("_zero_point") and not name.startswith(("w", "b"))}
    assert zero_points and all(point.dtype == np.int8 for point in zero_points.values())
    assert (zero_points["r1_zero_point"] == 0) if symmetric else (zero_points["r1_zero_point"] == -128)
    for feeds in _samples(4, seed=1):
        (want,), (got,) = run(model, feeds), run(quantized, feeds)
        assert _cosine(want, got) > 0.999


def test_weights_scales_and_bias_are_the_direct_computation():
    model = _cnn()
    ranges = _ranges(model, _samples())
    quantized, _ = _quantize(model, ranges)
    init = {name: value.const_value.numpy() for name, value in quantized.graph.initializers.items()}
    q, scale = symmetric_int8(_W1, axis=0)
    np.testing.assert_array_equal(init["w1_quantized"], q)
    np.testing.assert_allclose(init["w1_scale"], scale)
    low, high = ranges["x"]
    x_scale = (high - low) / 255
    assert init["x_scale"] == pytest.approx(x_scale) and init["x_zero_point"] == round(-low / x_scale)
    np.testing.assert_array_equal(init["b1_quantized"], np.rint(_B1 / (x_scale * scale)).astype(np.int32))
    # the Relu's output, not the Conv's, carries a pair: [0, high] with zero point 0
    assert "c1_scale" not in init and init["r1_zero_point"] == 0
    assert init["r1_scale"] == pytest.approx(ranges["r1"][1] / 255)
    # MaxPool moves data: its output keeps its input's scale and zero point, and so the int8 data
    assert init["p1_scale"] == init["r1_scale"] and init["p1_zero_point"] == init["r1_zero_point"]


def test_activation_matmul_mul_concat_and_movement():
    model = parse("""<ir_version: 9, opset_import: ["" : 17]>
        g (float[2, 4, 6] a, float[2, 6, 4] b) => (float[2, 4, 3] y) <float[8, 3] w = {WEIGHT}> {
            m = MatMul(a, b)
            t = Transpose <perm = [0, 2, 1]> (m)
            k = Mul(t, m)
            c = Concat <axis = 2> (k, m)
            y = MatMul(c, w) }""".replace("WEIGHT", _floats(np.linspace(-1, 1, 24, dtype=np.float32))))
    rng = np.random.default_rng(2)
    samples = [{"a": rng.standard_normal((2, 4, 6)).astype(np.float32),
                "b": rng.standard_normal((2, 6, 4)).astype(np.float32)} for _ in range(8)]
    quantized, report = _quantize(model, _ranges(model, samples))
    assert "2 MatMul" in report.changes[0] and "1 Mul" in report.changes[0] and "1 Transpose" in report.changes[0]
    assert "1 Concat" in report.changes[0]
    for feeds in samples[:3]:
        (want,), (got,) = run(model, feeds), run(quantized, feeds)
        assert _cosine(want, got) > 0.999
    fused = _fused_ops(quantized)
    assert "QLinearMatMul" in fused and "QLinearMul" in fused and "Transpose" in fused


def test_arithmetic_a_float_op_finishes_stays_float():
    """A written-out GELU (tanh form, as tf2onnx writes it) between two linear layers: x·x·x and the
    rest of the Tanh's argument feed only the Tanh, so they stay float (int8 there only adds rounding,
    and lost a real classifier's output); the gate after the Tanh, read by the int8 MatMul, and the
    MatMuls go int8."""
    rng = np.random.default_rng(3)
    w1, w2 = (rng.standard_normal(shape).astype(np.float32) * 0.5 for shape in ((6, 8), (8, 4)))
    model = parse(f"""<ir_version: 9, opset_import: ["" : 17]>
        g (float[2, 6] a) => (float[2, 4] y) <float[6, 8] w1 = {{{_floats(w1)}}}, float[8, 4] w2 = {{{_floats(w2)}}},
          float c = {{0.044715}}, float k = {{0.7978846}}, float one = {{1.0}}, float half = {{0.5}}> {{
            h = MatMul(a, w1)
            h2 = Mul(h, h)
            h3 = Mul(h2, h)
            ch3 = Mul(c, h3)
            inner = Add(h, ch3)
            scaled = Mul(k, inner)
            t = Tanh(scaled)
            t1 = Add(one, t)
            half_t1 = Mul(half, t1)
            g = Mul(h, half_t1)
            y = MatMul(g, w2) }}""")
    samples = [{"a": rng.standard_normal((2, 6)).astype(np.float32)} for _ in range(16)]
    quantized, report = _quantize(model, _ranges(model, samples))
    assert "2 MatMul" in report.changes[0] and "1 Add, 2 MatMul, 2 Mul" in report.changes[0]  # 1 + t, ½·, h·
    idle = [reason for reason in report.skipped if "no int8 kernel reads its output" in reason]
    assert len(idle) == 5, report.skipped  # h·h, ·h, c·, h +, k·
    for feeds in samples[:4]:
        (want,), (got,) = run(model, feeds), run(quantized, feeds)
        assert _cosine(want, got) > 0.999
    fused = _fused_ops(quantized)
    assert "QLinearMatMul" in fused and "Tanh" in fused


def test_a_tensor_without_a_range_keeps_its_node_float():
    model = _cnn()
    ranges = _ranges(model, _samples())
    del ranges["s"]
    quantized, report = _quantize(model, ranges)
    assert any("Add" in reason and "no calibrated range for s" in reason for reason in report.skipped)
    feeds = _samples(1, seed=1)[0]
    (want,), (got,) = run(model, feeds), run(quantized, feeds)
    assert _cosine(want, got) > 0.999
    assert "Add" in _fused_ops(quantized)  # float, between the int8 kernels


@pytest.mark.parametrize("options, message", [
    ({"activation_type": "u4"}, "--activation-type 'u4'"),
    ({"symmetric": True}, "symmetric activations are int8"),
])
def test_bad_options_are_input_errors(options, message):
    with pytest.raises(InputError, match=message):
        create_pass("quantize_static", options)


def test_a_reshape_moves_int8_data_and_keeps_its_shape_input():
    model = parse(f"""<ir_version: 9, opset_import: ["" : 17]>
        g (float[1, 3, 8, 8] x) => (float[1, 8, 4, 2] y) <float[8, 3, 3, 3] w1 = {{{_floats(_W1)}}},
          float[8] b1 = {{{_floats(_B1)}}}, int64[4] shape = {{1, 8, 4, 16}},
          float[16, 2] w2 = {{{_floats(np.linspace(-1, 1, 32, dtype=np.float32))}}}> {{
            c = Conv <pads = [1, 1, 1, 1]> (x, w1, b1)
            r = Reshape(c, shape)
            m = Mul(r, r)
            u = Relu(m)
            y = MatMul(u, w2) }}""")
    quantized, report = _quantize(model, _ranges(model, _samples()))
    assert "1 Reshape" in report.changes[0] and "1 Mul" in report.changes[0]
    shape = quantized.graph.initializers["shape"].const_value.numpy()
    assert shape.dtype == np.int64 and shape.tolist() == [1, 8, 4, 16]  # data movement's other inputs untouched
    reshape = next(node for node in quantized.graph if node.op_type == "Reshape")
    assert reshape.inputs[1].name == "shape"
    for feeds in _samples(3, seed=1):
        (want,), (got,) = run(model, feeds), run(quantized, feeds)
        assert _cosine(want, got) > 0.999
    assert "QLinearMul" in _fused_ops(quantized)


def _depthwise(bias: bool) -> onnx.ModelProto:
    """A depthwise 3x3 Conv (no padding) whose channels' weights differ 100-fold: one scale per
    tensor leaves the small channels a few levels, and their rounding error a mean the bias can take."""
    weight = _RNG.standard_normal((8, 1, 3, 3)).astype(np.float32) * np.logspace(-2, 0, 8, dtype=np.float32)[:, None,
                                                                                                            None, None]
    b = (_RNG.standard_normal(8) * 0.1).astype(np.float32)
    inits = f"float[8, 1, 3, 3] w = {{{_floats(weight)}}}" + (f", float[8] b = {{{_floats(b)}}}" if bias else "")
    return parse(f"""<ir_version: 9, opset_import: ["" : 17]>
        g (float[1, 8, 8, 8] x) => (float[1, 8, 6, 6] y) <{inits}> {{
            y = Conv <group = 8> (x, w{", b" if bias else ""}) }}"""), weight


@pytest.mark.parametrize("bias", [True, False])
def test_bias_correction_takes_the_weights_mean_error_out_of_the_output(bias):
    model, weight = _depthwise(bias)
    rng = np.random.default_rng(4)
    samples = [{"x": (rng.standard_normal((1, 8, 8, 8)) + 2.0).astype(np.float32)} for _ in range(32)]
    ranges = _ranges(model, samples)
    means = np.mean([sample["x"] for sample in samples], axis=(0, 1, 3, 4)).astype(np.float64)
    plain, _ = _quantize(model, ranges, per_channel=False, bias_correction=False)
    quantize = create_pass("quantize_static", {"per_channel": False})
    quantize.statistics = statistics(ranges=ranges, means={"x": means})
    corrected = model_io.from_proto(model)
    report = PassManager([quantize]).run(corrected).passes[0]
    assert "1 Conv/Gemm biases corrected" in report.changes[1]
    assert ("given a bias" in report.changes[1]) == (not bias)
    # the correction is E[x]·(Ŵ − W) summed over each filter, a direct computation
    q, scale = symmetric_int8(weight, None)
    shift = (q.astype(np.float64) * scale - weight).reshape(8, 9).sum(axis=1) * means
    stored = {name: value.const_value.numpy() for name, value in corrected.graph.initializers.items()}
    (bias_q,) = [array for name, array in stored.items() if array.dtype == np.int32 and name.endswith("_quantized")]
    x_scale = corrected.graph.initializers["x_scale"].const_value.numpy().item()
    original = _initializers(model)["b"] if bias else np.zeros(8)
    np.testing.assert_allclose(bias_q * x_scale * scale, original - shift, atol=x_scale * scale)
    errors = {}
    for label, quantized in (("plain", plain), ("corrected", corrected)):
        difference = [run(quantized, feeds)[0] - run(model, feeds)[0] for feeds in samples[:8]]
        errors[label] = np.abs(np.mean(difference, axis=(0, 1, 3, 4))).max()  # the worst channel's mean error
    assert errors["corrected"] < errors["plain"] / 3


def _initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {tensor.name: onnx.numpy_helper.to_array(tensor) for tensor in model.graph.initializer}


def test_slices_of_a_float_input_read_only_by_int8_kernels_are_quantized_once_before_them():
    """YOLOX's Focus: four Slices of the image concatenated into a Conv. The image is quantized once
    and sliced as int8 (it was four QuantizeLinear, one per slice)."""
    rng = np.random.default_rng(4)
    weight = rng.standard_normal((8, 12, 3, 3)).astype(np.float32) * 0.2
    slices = "\n".join(f"s{i} = Slice(x, start{i}, end, axes, steps)" for i in range(4))
    model = parse(f"""<ir_version: 9, opset_import: ["" : 17]>
        g (float[1, 3, 16, 16] x) => (float[1, 8, 8, 8] y) <float[8, 12, 3, 3] w = {{{_floats(weight)}}},
          int64[2] start0 = {{0, 0}}, int64[2] start1 = {{1, 0}}, int64[2] start2 = {{0, 1}}, int64[2] start3 = {{1, 1}},
          int64[2] end = {{16, 16}}, int64[2] axes = {{2, 3}}, int64[2] steps = {{2, 2}}> {{
            {slices}
            c = Concat <axis = 1> (s0, s1, s2, s3)
            y = Conv <pads = [1, 1, 1, 1]> (c, w) }}""")
    samples = [{"x": rng.uniform(0, 1, (1, 3, 16, 16)).astype(np.float32)} for _ in range(8)]
    quantized, report = _quantize(model, _ranges(model, samples))
    assert "4 Slice" in report.changes[0] and "1 Concat" in report.changes[0] and "1 Conv" in report.changes[0]
    quantize_inputs = [node.inputs[0].name for node in quantized.graph if node.op_type == "QuantizeLinear"]
    assert quantize_inputs.count("x") == 1
    for feeds in samples[:3]:
        (want,), (got,) = run(model, feeds), run(quantized, feeds)
        assert _cosine(want, got) > 0.999
    fused = _fused_ops(quantized)
    assert fused.count("QuantizeLinear") == 1 and "QLinearConcat" in fused, fused
