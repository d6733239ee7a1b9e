"""Every preset on the same model expressed in every opset from 7 to the newest ORT runs."""

from __future__ import annotations

import functools

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphopt
from graphopt.errors import GuardRefused, NothingChanged
from graphopt.pipeline import FLOAT_PRESETS, LOSSY_PRESETS, PRESETS
from graphopt.quantization import mode_tolerance
from tests.helpers import assert_int8_close, assert_same, run


@functools.cache
def _opset7_model() -> onnx.ModelProto:
    """Conv, BatchNorm, shape arithmetic into a Reshape, MatMul, no-ops; IR 3 (inits are inputs)."""
    rng = np.random.default_rng(0)
    arrays = {
        "W": rng.standard_normal((4, 3, 3, 3)), "B": rng.standard_normal(4),
        "scale": rng.random(4) + 0.5, "bias": rng.standard_normal(4),
        "mean": rng.standard_normal(4), "var": rng.random(4) + 0.5,
        "M": rng.standard_normal((64, 10)),
    }
    inits = [numpy_helper.from_array(a.astype(np.float32), n) for n, a in arrays.items()]
    inits += [numpy_helper.from_array(np.array(0, np.int64), "idx"),
              numpy_helper.from_array(np.array([-1], np.int64), "minus1")]
    nodes = [
        helper.make_node("Identity", ["x"], ["xi"]),
        helper.make_node("Conv", ["xi", "W", "B"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["bn"]),
        helper.make_node("Relu", ["bn"], ["r"]),
        helper.make_node("Dropout", ["r"], ["d"]),
        helper.make_node("Shape", ["d"], ["s"]),
        helper.make_node("Gather", ["s", "idx"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n"], ["n1"], axes=[0]),
        helper.make_node("Concat", ["n1", "minus1"], ["target"], axis=0),
        helper.make_node("Reshape", ["d", "target"], ["flat"]),
        helper.make_node("MatMul", ["flat", "M"], ["mm"]),
        helper.make_node("Transpose", ["mm"], ["t"], perm=[0, 1]),
        helper.make_node("Softmax", ["t"], ["y"], axis=1),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])]
    inputs += [helper.make_tensor_value_info(t.name, t.data_type, t.dims) for t in inits]
    graph = helper.make_graph(nodes, "g", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 7)], ir_version=3)


def _in_opset(version: int) -> onnx.ModelProto | None:
    model = _opset7_model()
    return model if version == 7 else onnx.version_converter.convert_version(model, version)


def _ort_quantizes(version: int) -> bool:
    """Whether ONNX Runtime has a QuantizeLinear kernel at this opset (13 and above)."""
    if version < 13:
        return True  # quantize_static skips the model: nothing to load
    node = helper.make_node("QuantizeLinear", ["x", "s"], ["q"])
    graph = helper.make_graph([node], "q", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("q", TensorProto.UINT8, [2])],
                              [numpy_helper.from_array(np.array(0.1, np.float32), "s")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", version)])
    return _ort_runs(model, {"x": np.ones(2, np.float32)})


def _ort_runs(model: onnx.ModelProto, feeds) -> bool:
    try:
        run(model, feeds)
    except Exception:
        return False
    return True


_FEEDS = {"x": np.random.default_rng(1).standard_normal((2, 3, 4, 4)).astype(np.float32)}


@pytest.mark.parametrize("version", range(7, onnx.defs.onnx_opset_version() + 1))
def test_every_preset_in_every_opset(version):
    model = _in_opset(version)
    if not _ort_runs(model, _FEEDS):
        pytest.skip(f"ONNX Runtime does not run opset {version}")
    expected = run(model, _FEEDS)
    for preset in PRESETS:
        calibration = {"calibration": [_FEEDS]} if preset == "int8-static" else {}
        if preset == "int8-static" and not _ort_quantizes(version):  # ONNX Runtime 1.32: no QuantizeLinear-28
            with pytest.raises(GuardRefused, match="cannot load the quantized model"):
                graphopt.optimize(model, preset=preset, **calibration)
            continue
        lossy = preset not in FLOAT_PRESETS
        if lossy and preset != "int8-static":  # no MatMul, small weights: nothing to change is refused, --force writes it
            with pytest.raises(NothingChanged):
                graphopt.optimize(model, preset=preset)
        result = graphopt.optimize(model, preset=preset, force=lossy, **calibration)
        tolerance = mode_tolerance(LOSSY_PRESETS[preset]) if preset in LOSSY_PRESETS else "fp16"
        same = functools.partial(assert_int8_close, tolerance=tolerance) if lossy else assert_same
        same(expected, run(result.model, _FEEDS))
        for batch in (1, 5):
            feeds = {"x": np.ones((batch, 3, 4, 4), np.float32)}
            same(run(model, feeds), run(result.model, feeds))
        if preset == "O1" and version >= 14:
            assert "Dropout" not in [n.op_type for n in result.model.graph]
