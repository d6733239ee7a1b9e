"""smooth_activations: SmoothQuant's migration is exact in float, folded into LayerNorm or as a Mul."""

from __future__ import annotations

import numpy as np
import onnx

from graphopt.passes import create_pass
from graphopt.pipeline import PassManager
from graphopt import model as model_io
from tests.helpers import op_types, parse, run, statistics, to_proto

_RNG = np.random.default_rng(3)
_W = _RNG.standard_normal((8, 6)).astype(np.float32)
_V = _RNG.standard_normal((8, 8)).astype(np.float32)
_PEAK = np.array([40, 1, 1, 2, 1, 1, 30, 1], np.float32)  # two outlier channels


def _floats(array: np.ndarray) -> str:
    return ", ".join(repr(float(item)) for item in array.reshape(-1))


def _model(body: str) -> onnx.ModelProto:
    return parse(f"""<ir_version: 9, opset_import: ["" : 18]>
        g (float[B, 8] x) => (float[B, 6] y, float[B, 8] r) <float[8, 6] w = {{{_floats(_W)}}},
          float[8, 8] v = {{{_floats(_V)}}}, float[8] gamma = {{{_floats(np.linspace(0.5, 2, 8))}}},
          float[8] beta = {{{_floats(np.linspace(-1, 1, 8))}}}> {{ {body} }}""")


def _smooth(model: onnx.ModelProto, value: str, alpha: float = 0.5):
    ir_model = model_io.from_proto(model)
    smooth = create_pass("smooth_activations", {"alpha": alpha})
    smooth.statistics = statistics(peaks={value: _PEAK})
    report = PassManager([smooth]).run(ir_model)
    return ir_model, report.passes[0]


def _x(rng: np.random.Generator = _RNG) -> dict[str, np.ndarray]:
    x = rng.standard_normal((5, 8)).astype(np.float32)
    return {"x": x * _PEAK}


def test_smoothing_folds_into_layernorm_and_computes_the_same():
    model = _model("""n = LayerNormalization <axis = -1> (x, gamma, beta)
                      y = MatMul(n, w)
                      r = MatMul(n, v)""")
    smoothed, report = _smooth(model, "n")
    assert report.changes == ["1 activations smoothed into their LayerNormalization"]
    assert op_types(smoothed) == ["LayerNormalization", "MatMul", "MatMul"]
    feeds = _x()
    for want, got in zip(run(model, feeds), run(smoothed, feeds)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # the LayerNorm's output lost its outliers: the channels now share the range
    weights = {value.name: value.const_value.numpy() for value in smoothed.graph.initializers.values()}
    gamma = next(array for name, array in weights.items() if name.startswith("gamma"))
    assert gamma[0] < np.linspace(0.5, 2, 8)[0] and not np.allclose(gamma, np.linspace(0.5, 2, 8))


def test_an_activation_read_elsewhere_gets_a_mul_in_front_of_its_linear_layers():
    model = _model("""h = Relu(x)
                      y = MatMul(h, w)
                      r = Add(h, x)""")  # the residual keeps the unsmoothed value
    smoothed, report = _smooth(model, "h")
    assert report.changes == ["1 activations smoothed by a Mul in front of their linear layers"]
    assert op_types(smoothed) == ["Relu", "Mul", "MatMul", "Add"]
    feeds = _x()
    for want, got in zip(run(model, feeds), run(smoothed, feeds)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    proto = to_proto(smoothed)
    scaled = next(onnx.numpy_helper.to_array(init) for init in proto.graph.initializer if init.name.startswith("w"))
    scale = scaled[:, 0] / _W[:, 0]
    expected = np.sqrt(_PEAK) / np.sqrt(np.abs(_W).max(axis=1))  # alpha 0.5
    np.testing.assert_allclose(scale, expected, rtol=1e-5)


def test_no_outliers_or_no_statistics_change_nothing():
    model = _model("""h = Relu(x)
                      y = MatMul(h, w)
                      r = Add(h, x)""")
    ir_model = model_io.from_proto(model)
    smooth = create_pass("smooth_activations")
    smooth.statistics = statistics(peaks={"h": np.ones(8, np.float32)})
    assert not PassManager([smooth]).run(ir_model).passes[0].modified
    assert not PassManager([create_pass("smooth_activations")]).run(model_io.from_proto(model)).passes[0].modified


def test_with_outlier_carving_the_activations_it_carves_are_left_to_it():
    """x → LayerNorm → ·W1 + b1 → Gelu → ·W → Relu, outliers in both activations: smoothing takes the
    LayerNorm's, and leaves the Gelu's to quantize_dynamic's carving (no Mul in front of W2)."""
    rng = np.random.default_rng(21)  # its own: the shared generator's state depends on which tests ran first
    w1 = rng.standard_normal((8, 8)).astype(np.float32)
    w1[:, 3] *= 40  # hidden channel 3 dwarfs the others
    model = parse(f"""<ir_version: 9, opset_import: ["" : 20, "com.microsoft" : 1]>
        g (float[B, 8] x) => (float[B, 6] y) <float[8, 8] w1 = {{{_floats(w1)}}}, float[8] b1 = {{{_floats(_V[0])}}},
          float[8, 6] w = {{{_floats(_W)}}}, float[8] gamma = {{{_floats(np.linspace(0.5, 2, 8))}}},
          float[8] beta = {{{_floats(np.linspace(-1, 1, 8))}}}> {{
            n = LayerNormalization <axis = -1> (x, gamma, beta)
            m = MatMul(n, w1)
            h = com.microsoft.BiasGelu(m, b1)
            p = MatMul(h, w)
            y = Relu(p) }}""")  # carving adds into the reader's result, so that is not the output
    feeds = _x(rng)
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    exposed.graph.output.append(onnx.helper.make_tensor_value_info("h", onnx.TensorProto.FLOAT, None))
    float_h = run(exposed, feeds)[1]
    peaks = {"n": _PEAK, "h": np.abs(float_h).max(axis=0)}
    reports = {}
    for ratio in (0.0, 6.0):
        ir_model = model_io.from_proto(model)
        for node in ir_model.graph:
            node.outputs[0].dtype = node.outputs[0].dtype or ir_model.graph.inputs[0].dtype
        smooth = create_pass("smooth_activations", {"alpha": 0.5, "outlier_ratio": ratio})
        smooth.statistics = statistics(peaks=peaks)
        reports[ratio] = PassManager([smooth]).run(ir_model).passes[0]
        (got,) = run(ir_model, feeds)
        np.testing.assert_allclose(got, run(model, feeds)[0], rtol=1e-4, atol=1e-4)  # exact in float either way
        if ratio:
            assert op_types(ir_model) == ["LayerNormalization", "MatMul", "BiasGelu", "MatMul", "Relu"]
    assert reports[0.0].changes == ["1 activations smoothed into their LayerNormalization",
                                    "1 activations smoothed by a Mul in front of their linear layers"]
    assert reports[6.0].changes == ["1 activations smoothed into their LayerNormalization"]
    assert reports[6.0].skipped == ["1 activations left to the outlier carving (not smoothed)"]
