"""Validation: run a reference and a candidate on the same inputs and compare every output.

Inputs are the user's (.npz) or synthesized at two shape sets when any axis is dynamic. When
an output fails, the divergence is located: values both models compute under the same name
are exposed as extra outputs, a chunk at a time in the candidate's topological order (one
ONNX Runtime run per chunk and model, not per node), and the first one beyond tolerance names
the node that produced it.

An output with elements outside an fp32-tight tolerance is judged once more against the reference's
own fp32 noise (see graphopt.runtime.compare): the reference run again with ONNX Runtime's graph
optimizations the other way, once per validator, only when some element is outside. A candidate
whose float inputs or outputs are of another float type (float16 throughout) is fed the inputs
converted and compared on its outputs widened to the reference's type.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from graphopt import model as model_io
from graphopt import shapes
from graphopt.errors import InputError
from graphopt.runtime import inputs as input_io
from graphopt.runtime.compare import NOISE_FACTOR, OutputComparison, Tolerance, compare, tolerance
from graphopt.runtime.providers import SessionConfig, create_session, model_label

EXPOSED_PER_RUN = 512


@dataclasses.dataclass
class InputSetResult:
    """The comparison of every output for one set of inputs."""

    shapes: dict[str, list[int]]
    outputs: list[OutputComparison]

    @property
    def passed(self) -> bool:
        return all(output.passed for output in self.outputs)

    @property
    def max_abs_error(self) -> float:
        return max((output.max_abs_error for output in self.outputs), default=0.0)

    def to_dict(self) -> dict[str, Any]:
        return {"shapes": self.shapes, "passed": self.passed, "max_abs_error": self.max_abs_error,
                "outputs": [output.to_dict() for output in self.outputs]}


@dataclasses.dataclass
class Divergence:
    """The first value, in the candidate's topological order, that differs beyond tolerance."""

    value: str
    node: str
    op_type: str
    comparison: OutputComparison
    matching_inputs: list[str]
    differing_weights: list[str] = dataclasses.field(default_factory=list)
    uncompared_inputs: list[str] = dataclasses.field(default_factory=list)

    def describe(self) -> str:
        return (f"first divergence at {self.op_type} node {self.node!r} (output {self.value!r}): "
                f"max abs error {self.comparison.max_abs_error:.3g}, "
                f"cosine {self.comparison.cosine:.6f}")

    def inputs_summary(self) -> str:
        """What is known about the diverging node's inputs: matching, differing weights, unknown."""
        parts = [f"its inputs that match the reference: {', '.join(self.matching_inputs) or 'none'}"]
        if self.differing_weights:
            parts.append(f"weights that differ from the reference's: {', '.join(self.differing_weights)}")
        if self.uncompared_inputs:
            parts.append(f"not comparable (the reference has no value of that name): "
                         f"{', '.join(self.uncompared_inputs)}")
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["comparison"] = self.comparison.to_dict()
        return data


@dataclasses.dataclass
class ValidationResult:
    passed: bool
    tolerance: Tolerance
    ep: str
    input_sets: list[InputSetResult]
    divergence: Divergence | None = None
    problem: str = ""
    opt_level: str = "disable"

    def failures(self) -> list[OutputComparison]:
        return [output for run in self.input_sets for output in run.outputs if not output.passed]

    def summary(self) -> str:
        if self.passed:
            noisy = sum(1 for run in self.input_sets for output in run.outputs if output.noise)
            within = f" ({noisy} within {NOISE_FACTOR}x the reference's own fp32 noise)" if noisy else ""
            return (f"PASS ({self.tolerance.name}): {sum(len(r.outputs) for r in self.input_sets)} "
                    f"output comparisons over {len(self.input_sets)} input set(s){within}, {self.how()}")
        if self.problem:
            return f"FAIL: {self.problem}"
        first = self.failures()[0]
        text = f"FAIL ({self.tolerance.name}): output {first.name!r}: {first.reason}, {self.how()}"
        if self.divergence is not None:
            text += f"; {self.divergence.describe()}"
        return text

    def how(self) -> str:
        """Which graphs ONNX Runtime compared: as written, or after its own optimizations."""
        if self.opt_level == "disable":
            return f"graphs as written on {self.ep} (ONNX Runtime graph optimizations disabled)"
        return f"on {self.ep} after ONNX Runtime's {self.opt_level!r} graph optimizations"

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed, "tolerance": self.tolerance.to_dict(), "ep": self.ep,
            "ort_graph_optimization_level": self.opt_level,
            "problem": self.problem, "input_sets": [run.to_dict() for run in self.input_sets],
            "divergence": self.divergence.to_dict() if self.divergence else None,
        }


def _as_ir(model) -> ir.Model:
    if isinstance(model, ir.Model):
        return model
    if isinstance(model, onnx.ModelProto):
        return model_io.from_proto(model)
    return model_io.load(model)


_FLOATS = {"tensor(float16)": np.float16, "tensor(float)": np.float32, "tensor(double)": np.float64}


def _other_float_inputs(session, feeds: dict[str, np.ndarray]) -> dict[str, type]:
    """{input: numpy type} for the candidate's float inputs of another float type than the
    reference's (a model converted to float16 with its inputs): fed converted."""
    types = {value.name: _FLOATS.get(value.type) for value in session.get_inputs()}
    return {name: types[name] for name, array in feeds.items()
            if types.get(name) is not None and np.issubdtype(array.dtype, np.floating) and array.dtype != types[name]}


def _widened(got: Any, want: Any) -> Any:
    """A candidate's float output in the reference's float type (float16 -> float32), to compare."""
    if isinstance(got, np.ndarray) and isinstance(want, np.ndarray) and got.dtype != want.dtype and \
            np.issubdtype(got.dtype, np.floating) and np.issubdtype(want.dtype, np.floating):
        return got.astype(want.dtype)
    return got


def _flatten(name: str, value: Any) -> list[tuple[str, Any]]:
    """Sequence outputs become one entry per element; optional outputs that are absent vanish."""
    if value is None:
        return []
    if isinstance(value, list):
        return [item for index, element in enumerate(value) for item in _flatten(f"{name}[{index}]", element)]
    return [(name, value)]


class Validator:
    """Reference outputs computed once, against which candidates are checked."""

    def __init__(self, reference, *, feeds: dict[str, np.ndarray] | str | os.PathLike | None = None,
                 shapes: dict[str, tuple[int, ...]] | None = None,
                 ranges: dict[str, tuple[float, float]] | None = None,
                 tol: Tolerance | str = "fp32", config: SessionConfig = SessionConfig(opt_level="disable"),
                 seed: int = 0, reference_ir: ir.Model | None = None,
                 feed_sets: Sequence[dict[str, np.ndarray]] | None = None) -> None:
        """reference_ir: the reference already loaded (it is kept unchanged), to avoid a reload;
        feed_sets: input sets already checked against the model (a held-out slice of calibration
        data), used instead of `feeds` or synthesized ones."""
        self.reference = reference
        self.reference_ir = reference_ir if reference_ir is not None else _as_ir(reference)
        self.tolerance = tol if isinstance(tol, Tolerance) else tolerance(tol)
        self.config = config
        self.input_sets = list(feed_sets) if feed_sets else self._input_sets(feeds, shapes or {}, ranges or {}, seed)
        self._runnable = self.reference_ir if self.reference_ir.meta.get(model_io.ZERO_DIMS_KEY) else reference
        self._noise_by_set: list[dict[str, float]] | None = None
        self._reference_session = create_session(self._runnable, config,
                                                 label=model_label(reference, "the reference model"))
        try:
            self._expected = [self._reference_session.run(feeds_) for feeds_ in self.input_sets]
        except InputError as error:
            if feeds is None:
                raise InputError(f"{error} (the inputs were synthesized: give real ones with "
                                 "--inputs FILE.npz, or --shape / --input-range)") from None
            raise
        self._output_names = [value.name for value in self._reference_session.inner.get_outputs()]

    def _noise(self, index: int) -> dict[str, float]:
        """The reference's own fp32 noise on input set `index`, per output: the largest change that
        running it with ONNX Runtime's graph optimizations the other way (on where they are off)
        makes — summation order, fused kernels. Measured once, on the first output found outside."""
        if self._noise_by_set is None:
            other = dataclasses.replace(self.config, opt_level="all" if self.config.opt_level == "disable" else "disable")
            try:
                session = create_session(self._runnable, other, label=model_label(self.reference, "the reference model"))
                again_by_set = [session.run(feeds) for feeds in self.input_sets]
            except InputError:  # ORT cannot run it that way: no noise measured, no allowance
                again_by_set = [[] for _ in self.input_sets]
            self._noise_by_set = []
            for expected, again_outputs in zip(self._expected, again_by_set):
                noise = {}
                for name, want, again in zip(self._output_names, expected, again_outputs):
                    for (item, a), (_, b) in zip(_flatten(name, want), _flatten(name, again)):
                        a, b = np.asarray(a), np.asarray(b)
                        if a.dtype.kind == "f" and a.shape == b.shape and a.size:
                            difference = np.abs(a.astype(np.float64) - b)
                            noise[item] = float(np.max(difference, where=np.isfinite(difference), initial=0.0))
                self._noise_by_set.append(noise)
        return self._noise_by_set[index]

    def _input_sets(self, feeds, shape_overrides, ranges, seed) -> list[dict[str, np.ndarray]]:
        if feeds is not None:
            return [input_io.user_feeds(self.reference_ir, feeds)]
        signature = input_io.signature(self.reference_ir)
        first = input_io.synthesize(self.reference_ir, shape_overrides, ranges, seed=seed)
        sets = [first]
        if input_io.dynamic(signature):
            second = input_io.synthesize(self.reference_ir, shape_overrides, ranges, seed=seed + 1,
                                         defaults=input_io.SECOND_DIMS)
            if any(second[name].shape != first[name].shape for name in first):
                sets.append(second)
        return sets

    def check(self, candidate) -> ValidationResult:
        """Compare the candidate's outputs with the reference's on every input set.

        A candidate ONNX Runtime cannot load or run does not compute the same thing: that is
        a failed validation (the reference and the inputs already ran), not bad input.
        """
        try:
            return self._check(candidate)
        except InputError as error:
            return ValidationResult(False, self.tolerance, self.config.resolved_ep(), [],
                                    problem=f"the candidate fails in ONNX Runtime: {error}",
                                    opt_level=self.config.opt_level)

    def _check(self, candidate) -> ValidationResult:
        session = create_session(candidate, self.config, label=model_label(candidate, "the candidate model"))
        candidate_inputs = {value.name for value in session.inner.get_inputs()}
        missing_inputs = set(self.input_sets[0]) - candidate_inputs
        candidate_outputs = [value.name for value in session.inner.get_outputs()]
        problem = ""
        if missing_inputs or candidate_inputs - set(self.input_sets[0]):
            problem = (f"the candidate's inputs {sorted(candidate_inputs)} differ from the "
                       f"reference's {sorted(self.input_sets[0])}")
        elif set(candidate_outputs) != set(self._output_names):
            problem = (f"the candidate's outputs {sorted(candidate_outputs)} differ from the "
                       f"reference's {sorted(self._output_names)}")
        if problem:
            return ValidationResult(False, self.tolerance, session.ep, [], problem=problem,
                                    opt_level=self.config.opt_level)
        results = []
        retyped = _other_float_inputs(session.inner, self.input_sets[0])
        for index, (feeds, expected) in enumerate(zip(self.input_sets, self._expected)):
            fed = {name: array.astype(retyped[name]) if name in retyped else array for name, array in feeds.items()}
            actual = dict(zip(candidate_outputs, session.run(fed)))
            comparisons = []
            for name, want in zip(self._output_names, expected):
                want_items, got_items = _flatten(name, want), _flatten(name, actual[name])
                if [n for n, _ in want_items] != [n for n, _ in got_items]:
                    comparisons.append(OutputComparison(name, [], "sequence", np.inf, np.inf, 0.0, 1.0,
                                                        None, None, False, "sequence lengths differ"))
                    continue
                for (item_name, a), (_, b) in zip(want_items, got_items):
                    b = _widened(b, a)
                    comparison = compare(item_name, a, b, self.tolerance)
                    if comparison.mismatch_fraction > self.tolerance.max_mismatch and \
                            comparison.dtype.startswith("float"):  # elements outside: within fp32's own noise?
                        comparison = compare(item_name, a, b, self.tolerance, self._noise(index).get(item_name))
                    comparisons.append(comparison)
            results.append(InputSetResult({k: list(v.shape) for k, v in feeds.items()}, comparisons))
        passed = all(run.passed for run in results)
        return ValidationResult(passed, self.tolerance, session.ep, results, opt_level=self.config.opt_level)

    def validate(self, candidate, locate: bool = True) -> ValidationResult:
        """check(), then on failure locate the first diverging node."""
        result = self.check(candidate)
        if not result.passed and not result.problem and locate:
            failing = next(i for i, run in enumerate(result.input_sets) if not run.passed)
            try:
                result.divergence = self.locate(candidate, self.input_sets[failing])
            except InputError:  # exposing intermediate values can make ORT refuse a model
                result.divergence = None
        return result

    def locate(self, candidate, feeds: dict[str, np.ndarray]) -> Divergence | None:
        """The first value in the candidate's order that both models name and that differs."""
        candidate_ir = _as_ir(candidate)
        for model in (self.reference_ir, candidate_ir):
            try:
                shapes.infer_shapes(model, only_if_missing=True)
            except shapes.InferenceFailed:
                pass
        reference_values = {value.name: value for node in self.reference_ir.graph
                            for value in node.outputs if _exposable(value)}
        graph_outputs = {value.name for value in candidate_ir.graph.outputs}
        order = [(value, node) for node in candidate_ir.graph for value in node.outputs
                 if _exposable(value) and value.name in reference_values and value.name not in graph_outputs]
        compared: set[str] = set()
        for start in range(0, len(order), EXPOSED_PER_RUN):
            chunk = order[start:start + EXPOSED_PER_RUN]
            names = [value.name for value, _ in chunk]
            want = run_exposed(self.reference_ir, [reference_values[n] for n in names], feeds, self.config)
            got = run_exposed(candidate_ir, [value for value, _ in chunk], feeds, self.config)
            for (value, node), a, b in zip(chunk, want, got):
                if np.shape(a) != np.shape(b) or np.asarray(a).dtype != np.asarray(b).dtype:
                    continue  # the same name for another value (a rewrite reused a freed name)
                comparison = compare(value.name, a, b, self.tolerance)
                if not comparison.passed:
                    return self._divergence(value, node, comparison, compared)
                compared.add(value.name)
        return self._output_divergence(candidate_ir, feeds, compared)

    def _divergence(self, value: ir.Value, node: ir.Node, comparison: OutputComparison,
                    compared: set[str]) -> Divergence:
        """The diverging node with its inputs sorted: matching, weights that differ, unknown."""
        reference_weights = {name: v for graph in self.reference_ir.graphs()
                             for name, v in graph.initializers.items() if v.const_value is not None}
        matching, differing, uncompared = [], [], []
        for input_ in node.inputs:
            if input_ is None:
                continue
            if input_.const_value is not None:
                reference = reference_weights.get(input_.name)
                if reference is None:
                    uncompared.append(input_.name)
                    continue
                difference = _weight_difference(reference.const_value, input_.const_value)
                if difference is None:
                    matching.append(input_.name)
                else:
                    differing.append(f"{input_.name} ({difference})")
            elif input_.name in compared or input_.is_graph_input():
                matching.append(input_.name)
            else:
                uncompared.append(input_.name)
        return Divergence(value.name, node.name or "", node.op_type, comparison, matching, differing, uncompared)

    def _output_divergence(self, candidate_ir: ir.Model, feeds, compared: set[str]) -> Divergence | None:
        """No shared intermediate differs: blame the producer of the first failing output."""
        session = create_session(candidate_ir, self.config, label="the candidate model")
        expected = self._reference_session.run(feeds)
        actual = dict(zip([v.name for v in session.inner.get_outputs()], session.run(feeds)))
        for value in candidate_ir.graph.outputs:
            index = self._output_names.index(value.name)
            comparison = compare(value.name, expected[index], actual[value.name], self.tolerance)
            producer = value.producer()
            if not comparison.passed and producer is not None:
                return self._divergence(value, producer, comparison, compared)
        return None


def _weight_difference(reference: ir.TensorProtocol, candidate: ir.TensorProtocol) -> str | None:
    """None when two weights are identical, else how they differ."""
    want, got = reference.numpy(), candidate.numpy()
    if want.shape != got.shape or want.dtype != got.dtype:
        return f"{list(got.shape)} {got.dtype} vs {list(want.shape)} {want.dtype}"
    if np.array_equal(want, got, equal_nan=want.dtype.kind in "fc"):
        return None
    if want.dtype.kind in "fciu":
        return f"max abs difference {float(np.max(np.abs(want.astype(np.float64) - got.astype(np.float64)))):.3g}"
    return "values differ"


def _exposable(value: ir.Value) -> bool:
    return bool(value.name) and isinstance(value.type, ir.TensorType) and value.dtype is not None


def run_exposed(model: ir.Model, values: Sequence[ir.Value], feeds, config: SessionConfig) -> list:
    """Run the model with `values` added as graph outputs (restored afterwards)."""
    return next(exposed_runs(model, values, [feeds], config))


def exposed_runs(model: ir.Model, values: Sequence[ir.Value], feed_sets: Iterable[dict],
                 config: SessionConfig) -> Iterator[list]:
    """One session with `values` exposed as outputs, run on each of `feed_sets` in turn: the
    values' arrays per input set. The model's outputs are restored before the first run."""
    outputs = model.graph.outputs
    original = list(outputs)
    outputs.extend(value for value in values if value not in original)
    try:
        session = create_session(model, config, label="the model with intermediate values exposed")
    finally:
        outputs.clear()
        outputs.extend(original)
    yield from session_runs(session, values, feed_sets)


def session_runs(session, values: Sequence[ir.Value], feed_sets: Iterable[dict]) -> Iterator[list]:
    """The arrays of `values` (outputs of `session`) for each of `feed_sets`, in turn."""
    names = [value.name for value in session.inner.get_outputs()]
    for feeds in feed_sets:
        results = dict(zip(names, session.run(feeds)))
        yield [results[value.name] for value in values]


def validate(reference, candidate, *, inputs: str | os.PathLike | dict | None = None,
             shapes: dict[str, tuple[int, ...]] | None = None,
             ranges: dict[str, tuple[float, float]] | None = None,
             tolerance: Tolerance | str = "fp32", config: SessionConfig = SessionConfig(opt_level="disable"),
             locate: bool = True, seed: int = 0) -> ValidationResult:
    """Run both models on the same inputs and compare every output; locate the divergence on failure.

    reference/candidate: paths, onnx.ModelProto or onnx_ir.Model. inputs: an .npz path or
    {name: array}; otherwise inputs are synthesized (see graphopt.runtime.inputs).
    """
    validator = Validator(reference, feeds=inputs, shapes=shapes, ranges=ranges, tol=tolerance,
                          config=config, seed=seed)
    return validator.validate(candidate, locate=locate)
