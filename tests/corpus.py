"""ONNX's own node test cases as a semantic-preservation corpus: optimize each, compare in ORT."""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import warnings

import numpy as np
import onnx
import onnxruntime as ort

import graphopt
from graphopt.errors import GuardRefused, NothingChanged, ValidationFailed
from graphopt.passes import pass_class
from graphopt.pipeline import resolve_spec
from graphopt.runtime.compare import Tolerance, compare
from tests.helpers import to_proto


@functools.cache
def node_cases() -> tuple:
    """ONNX's node test cases that ONNX Runtime itself runs, with their first input set."""
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = collect_testcases(None)
    runnable = []
    for case in cases:
        inputs = list(case.data_sets[0][0]) if case.data_sets else []
        try:
            expected = _run(case.model, inputs)
        except Exception:
            continue
        runnable.append((case.name, case.model, inputs, expected, len(cases)))
    return tuple(runnable)


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 4
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _input_names(model: onnx.ModelProto) -> list[str]:
    """The graph inputs a run feeds, in order (initializers listed as inputs are defaults)."""
    initializers = {tensor.name for tensor in model.graph.initializer}
    return [value.name for value in model.graph.input if value.name not in initializers]


def _run(model: onnx.ModelProto, inputs: list) -> list:
    session = _session(model)
    names = [value.name for value in session.get_inputs()]
    return session.run(None, dict(zip(names, inputs)))


def same_outputs(expected, actual, rtol: float = 1e-4, atol: float = 1e-5) -> bool:
    """Equal structure, dtypes and shapes; integers exact, floats within tolerance, NaN == NaN."""
    if isinstance(expected, list) or isinstance(actual, list):
        return (isinstance(expected, list) and isinstance(actual, list) and len(expected) == len(actual)
                and all(same_outputs(a, b, rtol, atol) for a, b in zip(expected, actual)))
    if expected is None or actual is None:
        return expected is None and actual is None
    expected, actual = np.asarray(expected), np.asarray(actual)
    if expected.shape != actual.shape or expected.dtype != actual.dtype:
        return False
    if expected.dtype.kind in "fc":
        return bool(np.allclose(actual, expected, rtol=rtol, atol=atol, equal_nan=True))
    return bool(np.array_equal(actual, expected))


def _within(expected, actual, tolerance: Tolerance) -> bool:
    """Equal structure; every output within `tolerance` (integers exact, as compare judges them)."""
    if isinstance(expected, list) or isinstance(actual, list):
        return (isinstance(expected, list) and isinstance(actual, list) and len(expected) == len(actual)
                and all(_within(a, b, tolerance) for a, b in zip(expected, actual)))
    if expected is None or actual is None:
        return expected is None and actual is None
    return compare("output", np.asarray(expected), np.asarray(actual), tolerance).passed


@dataclasses.dataclass
class CorpusResult:
    counts: collections.Counter
    failures: list[str]
    total_cases: int


def _layout(value):
    """Shapes, nested like the outputs (sequence outputs are lists)."""
    return [_layout(item) for item in value] if isinstance(value, (list, tuple)) else np.shape(value)


def _same_layout(expected, actual) -> bool:
    return _layout(expected) == _layout(actual)


def run_corpus(cases, tolerance: Tolerance | None = None, **optimize_kwargs) -> CorpusResult:
    """Optimize every case; a quantizing pipeline must load and run, the others keep the outputs.
    With a `tolerance` (reduced precision), every case is validated on its own inputs and must keep
    its outputs within it, or be refused with a reason (nothing written)."""
    spec = resolve_spec(optimize_kwargs.get("preset"), optimize_kwargs.get("passes"))
    lossy = spec.lossy and tolerance is None
    calibrated = any(pass_class(name).needs_calibration for name, _ in spec.passes)  # ranges: the case's inputs
    counts: collections.Counter = collections.Counter()
    failures: list[str] = []
    logging.disable(logging.WARNING)
    try:
        for name, model, inputs, expected, total in cases:
            copy = onnx.ModelProto()
            copy.CopyFrom(model)
            try:
                calibration = [dict(zip(_input_names(model), inputs))] if calibrated else None
                extra = {"calibration": calibration} if calibrated else {}
                if tolerance is not None:
                    if not all(isinstance(array, np.ndarray) and array.dtype.kind in "biuf" for array in inputs):
                        counts["not_validated_sequence_or_string_inputs"] += 1
                        continue
                    extra = {"validate": True, "check_speed": False, "tolerance": tolerance.name,
                             "inputs": dict(zip(_input_names(model), inputs))}
                result = graphopt.optimize(copy, **optimize_kwargs, **extra)
                optimized = to_proto(result.model)
            except graphopt.GraphoptError as error:
                if isinstance(error, NothingChanged):
                    counts["refused_with_nothing_to_quantize"] += 1  # said with the reason, nothing written
                    continue
                if tolerance is not None and isinstance(error, (ValidationFailed, GuardRefused)):
                    counts["refused_with_a_reason"] += 1  # the result failed its checks: not written
                    continue
                if calibrated and "this model cannot be calibrated" in str(error):
                    counts["refused_calibration_of_sequence_or_optional_inputs"] += 1  # a clear InputError
                    continue
                counts["refused"] += 1
                failures.append(f"{name}: refused: {error}")
                continue
            except Exception as error:  # noqa: BLE001 - the corpus counts every crash
                counts["exception"] += 1
                failures.append(f"{name}: {type(error).__name__}: {error}")
                continue
            try:
                actual = _run(optimized, inputs)
            except Exception as error:  # noqa: BLE001
                counts["ort_rejects_output"] += 1
                failures.append(f"{name}: ONNX Runtime rejects the result: {str(error)[:200]}")
                continue
            if lossy and _same_layout(expected, actual):
                counts["runs_with_the_same_output_shapes"] += 1  # quantized on purpose: not compared
            elif tolerance is not None and _within(expected, actual, tolerance):
                counts["within_tolerance"] += 1
            elif tolerance is None and same_outputs(expected, actual):
                counts["identical_within_tolerance"] += 1
                if any(entry.skipped for entry in result.report.passes if entry.ran):
                    counts["of_which_a_pass_skipped_something_with_a_reason"] += 1
            else:
                counts["different_outputs"] += 1
                failures.append(f"{name}: outputs differ")
    finally:
        logging.disable(logging.NOTSET)
    return CorpusResult(counts, failures, cases[0][4] if cases else 0)
