"""Test helpers: build models from ONNX text, run them in ONNX Runtime, compare outputs."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

import graphopt
from graphopt.passes.contract import Statistics
from graphopt.runtime.activations import ChannelStats
from graphopt.runtime.histograms import DEFAULT_BINS, Histogram


def parse(text: str) -> onnx.ModelProto:
    """A model from ONNX textual syntax, checked."""
    model = onnx.parser.parse_model(text)
    onnx.checker.check_model(model)
    return model


def to_proto(model: ir.Model | onnx.ModelProto) -> onnx.ModelProto:
    return model if isinstance(model, onnx.ModelProto) else ir.serde.serialize_model(model)


def run(model: ir.Model | onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 4
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(to_proto(model).SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


_NUMPY = {
    onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.DOUBLE: np.float64,
    onnx.TensorProto.FLOAT16: np.float16, onnx.TensorProto.INT64: np.int64,
    onnx.TensorProto.INT32: np.int32, onnx.TensorProto.BOOL: np.bool_,
    onnx.TensorProto.UINT8: np.uint8, onnx.TensorProto.INT8: np.int8,
}


def random_feeds(model: onnx.ModelProto, seed: int = 0, dim: int = 3) -> dict[str, np.ndarray]:
    """Random inputs for every graph input that is not an initializer; symbolic dims = `dim`."""
    rng = np.random.default_rng(seed)
    initializers = {tensor.name for tensor in model.graph.initializer}
    feeds = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor_type = value.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else dim for d in tensor_type.shape.dim]
        dtype = _NUMPY[tensor_type.elem_type]
        if dtype == np.bool_:
            feeds[value.name] = rng.random(shape) > 0.5
        elif np.issubdtype(dtype, np.integer):
            feeds[value.name] = rng.integers(0, 3, size=shape).astype(dtype)
        else:
            feeds[value.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


def assert_same(expected: list, actual: list, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    assert len(expected) == len(actual)
    for want, got in zip(expected, actual):
        want, got = np.asarray(want), np.asarray(got)
        assert want.shape == got.shape and want.dtype == got.dtype
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)


def assert_int8_close(expected: list, actual: list, tolerance: str = "int8") -> None:
    """Outputs within the tolerance graphopt validates quantized models at (int8 or int4: cosine, top-1)."""
    from graphopt.runtime.compare import TOLERANCES, compare

    assert len(expected) == len(actual)
    for index, (want, got) in enumerate(zip(expected, actual)):
        result = compare(f"output {index}", np.asarray(want), np.asarray(got), TOLERANCES[tolerance])
        assert result.passed, result


def optimize_and_compare(model: onnx.ModelProto, feeds=None, rtol: float = 1e-5,
                         **kwargs) -> graphopt.OptimizeResult:
    """Optimize a copy of `model` and assert ONNX Runtime gives the same outputs before and after."""
    feeds = feeds if feeds is not None else random_feeds(model)
    expected = run(model, feeds)
    original = onnx.ModelProto()
    original.CopyFrom(model)
    result = graphopt.optimize(original, **kwargs)
    assert_same(expected, run(result.model, feeds), rtol=rtol, atol=rtol)
    return result


def op_types(model: ir.Model | onnx.ModelProto) -> list[str]:
    return [node.op_type for node in to_proto(model).graph.node]


def statistics(*, ranges: dict | None = None, peaks: dict | None = None, means: dict | None = None,
               mean_squares: dict | None = None, grams: dict | None = None) -> Statistics:
    """What the lossy pipeline would hand a pass, made from known numbers: `ranges` become histograms
    whose min and max are exactly those; `peaks`, `mean_squares` and `grams` channel statistics."""
    histograms = {}
    for name, (low, high) in (ranges or {}).items():
        histograms[name] = Histogram.empty(DEFAULT_BINS)
        histograms[name].add(np.array([low, high], np.float32))
    names = {*(peaks or {}), *(mean_squares or {}), *(grams or {})}
    channels = {name: ChannelStats(np.asarray((peaks or {}).get(name, np.ones(1)), np.float32),
                                   np.asarray((mean_squares or {}).get(name, np.ones(1)), np.float32), 1,
                                   (grams or {}).get(name)) for name in names}
    return Statistics(channels=channels, histograms=histograms, means=dict(means or {}))
