"""Turns presets, pass lists and recipe files into passes, and runs them with a PassManager.

The manager runs the passes in order (optionally until nothing changes), skips a pass outside
its opset window or target with a reason, checks the model's invariants after every pass that
changed it, and records a PassReport per pass run.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import onnx_ir as ir
import yaml

from graphopt import checks
from graphopt.model import model_opset
from graphopt.errors import GraphoptError, InputError, PassError
from graphopt.memory import gc_paused
from graphopt.passes import TARGETS, Pass, create_pass, pass_class, pass_options
from graphopt.passes.contract import LayerOutcome
from graphopt.passes.match import INFERRED
from graphopt.passes.registry import option_from_text

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

_CLEANUP = (
    "remove_unused",
    "fold_constants",
    "eliminate_noops",
    "collapse_shape_ops",
    "lift_constants",
    "fold_batchnorm",
    "dedupe_initializers",
    "eliminate_common_subexpressions",
    "remove_unused",
    "topological_sort",
)

_FUSIONS = ("unflatten_gemm", "fuse_layernorm", "fuse_gelu", "fuse_attention", "fold_affine_into_linear",
            "pack_parallel_matmuls", "fuse_pad", "fuse_conv_activation", "fuse_matmul_add", "residual_sum")

# O3 adds fusions that round differently from the graph they replace (within fp32's own noise, see
# graphopt.runtime.compare), before fuse_conv_activation: a HardSigmoid they make joins its Conv
_AT = _FUSIONS.index("fuse_conv_activation")
_O3 = (*_CLEANUP, *_FUSIONS[:_AT], "fuse_hardswish", *_FUSIONS[_AT:], "strip_debug_info")

PRESETS: dict[str, tuple[str, ...]] = {
    "O0": (),
    "O1": _CLEANUP,
    "O2": (*_CLEANUP, *_FUSIONS, "strip_debug_info"),
    "O3": _O3,
    "int8-dynamic": (*_O3, "quantize_dynamic"),
    "int4-weight-only": (*_O3, "quantize_weight_only"),
    "int8-static": (*_O3, "quantize_static"),
    "fp16": (*_O3, "convert_precision"),
}
FLOAT_PRESETS = ("O0", "O1", "O2", "O3")  # the presets that change no number on purpose
PRESET_SUMMARIES = {
    "O0": "no passes (load, check and save only)",
    "O1": "cleanup: dead code, no-ops, constant/shape/BatchNorm folding, dedupe, CSE",
    "O2": "O1 plus fusions for the target (LayerNorm, GELU, attention, constant Mul/Add into weights, Pad into Conv/pooling, activation into Conv, MatMul+Add to Gemm, residual Add as Sum) and deployment hygiene",
    "O3": "the best float model graphopt makes for the target: O2 plus fusions that compute the same function but "
          "round differently (hardswish/hardsigmoid written as Add/Clip/Mul/Div become HardSwish/HardSigmoid), "
          "validated at fp32 within the model's own fp32 noise",
    "int8-dynamic": "O3, then int8 weights for MatMul/Gemm/attention projections and embedding tables, activations quantized at run time",
    "int4-weight-only": "O3, then int4 weight blocks (32 along K) for MatMul/Gemm (ort: MatMulNBits; portable: blocked DequantizeLinear, opset 21) and embedding tables",
    "int8-static": "O3, then int8 activations at ranges calibrated on --calib: QDQ pairs around "
                   "Conv/MatMul/Gemm/Add/Mul/pooling/Concat (after O3's portable fusions), or for a model with "
                   "attention only its linear layers and attention projections",
    "fp16": "O3, then float16: computed in it where the EP has half kernels and the measured values fit "
            "(on the CPU EP, whose x86 build has none, the weights only, widened once at load); inputs and outputs "
            "stay float32",
}
# The quantizing presets are graphopt quantize's modes after O3: graphopt.optimize runs them as it does.
LOSSY_PRESETS = {"int8-dynamic": "dynamic", "int4-weight-only": "weight-only", "int8-static": "static"}
DEFAULT_MAX_ITERATIONS = 4


@dataclasses.dataclass
class PassReport:
    name: str
    iteration: int
    nodes_before: int
    nodes_after: int
    initializers_before: int
    initializers_after: int
    parameter_bytes_before: int
    parameter_bytes_after: int
    seconds: float
    modified: bool
    skipped: list[str] = dataclasses.field(default_factory=list)
    changes: list[str] = dataclasses.field(default_factory=list)
    ran: bool = True
    outcomes: list[LayerOutcome] = dataclasses.field(default_factory=list)  # a lossy pass's, per layer

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class PipelineReport:
    passes: list[PassReport]
    iterations: int
    converged: bool
    seconds: float
    target: str
    nodes_before: int
    nodes_after: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "iterations": self.iterations,
            "converged": self.converged,
            "seconds": self.seconds,
            "nodes_before": self.nodes_before,
            "nodes_after": self.nodes_after,
            "passes": [report.to_dict() for report in self.passes],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


@dataclasses.dataclass(frozen=True)
class _Stats:
    nodes: int
    initializers: int
    parameter_bytes: int


def _stats(model: ir.Model) -> _Stats:
    initializers = 0
    parameter_bytes = 0
    for graph in model.graphs():
        for value in graph.initializers.values():
            initializers += 1
            if value.const_value is not None:
                parameter_bytes += value.const_value.nbytes
    return _Stats(sum(1 for _ in checks.all_nodes(model.graph)), initializers, parameter_bytes)


PassObserver = Callable[[int, int, Pass], None]
PassHook = Callable[[Pass, ir.Model], None]


class PassManager:
    """Runs passes in order, optionally to a fixed point, with invariant checks and reports."""

    def __init__(
        self,
        passes: Sequence[Pass],
        *,
        target: str = "portable",
        fixed_point: bool = False,
        max_iterations: int = DEFAULT_MAX_ITERATIONS,
        check: bool = True,
        observer: PassObserver | None = None,
        after_change: PassHook | None = None,
    ) -> None:
        if target not in TARGETS:
            raise InputError(f"unknown target {target!r} (choose from {', '.join(TARGETS)})")
        if max_iterations < 1:
            raise InputError("max_iterations must be at least 1")
        self.passes = list(passes)
        self.target = target
        self.fixed_point = fixed_point
        self.max_iterations = max_iterations if fixed_point else 1
        self.check = check
        self._observer = observer
        self.after_change = after_change

    def run(self, model: ir.Model) -> PipelineReport:
        """Run the passes; in fixed-point mode, until a whole round changes nothing.

        Passes are deterministic, so a pass that changed nothing is not run again until
        another pass has changed the model: the last round then costs almost nothing.
        """
        with gc_paused():
            return self._run(model)

    def _run(self, model: ir.Model) -> PipelineReport:
        start = time.perf_counter()
        reports: list[PassReport] = []
        converged = not self.fixed_point
        generation = 0
        idle_at: dict[int, int] = {}
        iteration = 0
        stats = initial = _stats(model)
        checker = checks.IncrementalChecker(model) if self.check else None
        for iteration in range(1, self.max_iterations + 1):
            changed = False
            for index, pass_ in enumerate(self.passes):
                if idle_at.get(index) == generation:
                    continue
                if self._observer is not None:
                    self._observer(iteration, index, pass_)
                report, stats = self._run_one(pass_, model, iteration, stats, checker)
                reports.append(report)
                if report.modified:
                    generation += 1
                    changed = True
                else:
                    idle_at[index] = generation
            if not changed:
                converged = True
                break
        if checker is not None and generation:
            self._check(checker.finish, model, "the pipeline")
        return PipelineReport(reports, iteration, converged, time.perf_counter() - start, self.target,
                              initial.nodes, stats.nodes)

    def _run_one(self, pass_: Pass, model: ir.Model, iteration: int, before: _Stats,
                 checker: checks.IncrementalChecker | None) -> tuple[PassReport, _Stats]:
        """Run one pass; `before` are the model's stats now, the stats after are returned."""
        reason = self._refusal(pass_, model)
        if reason is not None:
            report = PassReport(pass_.name, iteration, before.nodes, before.nodes, before.initializers,
                                before.initializers, before.parameter_bytes, before.parameter_bytes,
                                0.0, False, [reason], ran=False)
            return report, before
        pass_.skipped.clear()
        pass_.changes.clear()
        pass_.outcomes.clear()
        pass_.target = self.target
        start = time.perf_counter()
        try:
            modified = pass_(model).modified
        except GraphoptError:
            raise
        except Exception as error:
            raise PassError(f"pass {pass_.name} failed: {type(error).__name__}: "
                            f"{checks.first_line(str(error))}; nothing was written") from error
        seconds = time.perf_counter() - start
        if modified:
            model.meta.pop(INFERRED, None)  # the shapes the passes inferred may be stale now
        if modified and checker is not None:
            self._check(checker.check, model, f"pass {pass_.name}")
        if modified and self.after_change is not None:
            self.after_change(pass_, model)
        after = _stats(model) if modified else before
        report = PassReport(pass_.name, iteration, before.nodes, after.nodes, before.initializers,
                            after.initializers, before.parameter_bytes, after.parameter_bytes,
                            seconds, modified, list(pass_.skipped), list(pass_.changes), True, list(pass_.outcomes))
        return report, after

    @staticmethod
    def _check(check, model: ir.Model, culprit: str) -> None:
        try:
            check(model)
        except checks.InvariantError as error:
            raise PassError(f"{culprit} broke the model: {error}; nothing was written") from None

    def _refusal(self, pass_: Pass, model: ir.Model) -> str | None:
        if self.target not in pass_.targets:
            return f"not for target {self.target!r}"
        opset = model_opset(model)
        if opset < pass_.min_opset:
            return (f"needs opset >= {pass_.min_opset}, model has {opset} "
                    f"(convert with --opset {pass_.min_opset})")
        return None


@dataclasses.dataclass
class PipelineSpec:
    """What to run: pass names with options, and how to iterate."""

    passes: list[tuple[str, dict[str, Any]]]
    fixed_point: bool = True
    max_iterations: int = DEFAULT_MAX_ITERATIONS

    def build(self) -> list[Pass]:
        return [create_pass(name, options) for name, options in self.passes]

    @property
    def lossy(self) -> bool:
        """Whether a pass changes the numbers on purpose (the run then goes through graphopt.lossy)."""
        return any(pass_class(name).lossy for name, _ in self.passes)

    def without(self, name: str) -> None:
        """Drop every run of the pass `name` (e.g. strip_debug_info for --keep-metadata)."""
        self.passes = [(entry, options) for entry, options in self.passes if entry != name]

    def first(self, name: str, options: dict[str, Any]) -> None:
        """Run the pass `name` with `options` before the others (e.g. fix_shape)."""
        self.passes.insert(0, (name, options))


def preset_spec(preset: str) -> PipelineSpec:
    if preset not in PRESETS:
        raise InputError(f"unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
    return PipelineSpec([(name, {}) for name in PRESETS[preset]])


def passes_spec(entries: str | Sequence[str | tuple[str, dict[str, Any]]]) -> PipelineSpec:
    """A spec from `a,b:key=value,c`, or a list of such entries and (name, options) pairs; each
    pass runs once, in order."""
    if isinstance(entries, str):
        entries = entries.split(",")
    entries = [entry if isinstance(entry, tuple) else entry.strip() for entry in entries
               if isinstance(entry, tuple) or entry.strip()]
    if not entries:
        raise InputError("--passes is empty")
    return PipelineSpec([(entry[0], dict(entry[1])) if isinstance(entry, tuple) else _pass_entry(entry)
                         for entry in entries], fixed_point=False)


def _pass_entry(entry: str) -> tuple[str, dict[str, Any]]:
    """`name` or `name:key=value:key2=value2`, the values converted to the options' types."""
    name, *settings = (part.strip() for part in entry.split(":"))
    if not settings:
        return name, {}
    known = {option.name: option for option in pass_options(pass_class(name))}
    options: dict[str, Any] = {}
    for setting in settings:
        key, equals, text = (part.strip() for part in setting.partition("="))
        if not equals or not key:
            raise InputError(f"pass {name!r}: {setting!r} in {entry!r} is not key=value")
        if key in options:
            raise InputError(f"pass {name!r}: option {key!r} is given twice in {entry!r}")
        option = known.get(key)
        # an unknown key stays text: create_pass rejects it, listing the pass's options
        options[key] = text if option is None else option_from_text(name, option, text)
    return name, options


_RECIPE_KEYS = {"passes", "fixed_point", "max_iterations"}


def recipe_spec(path: str | Path) -> PipelineSpec:
    """Read a TOML or YAML recipe: `passes` (names, or tables with `name` and options)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise InputError(f"cannot read recipe {path}: {error.strerror}") from None
    try:
        if path.suffix.lower() == ".toml":
            data = tomllib.loads(text)
        elif path.suffix.lower() in (".yaml", ".yml"):
            data = yaml.safe_load(text)
        else:
            raise InputError(f"recipe {path} must end in .toml, .yaml or .yml")
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as error:
        raise InputError(f"recipe {path} is not valid {path.suffix[1:].upper()}: "
                         f"{checks.first_line(str(error))}") from None
    if not isinstance(data, dict):
        raise InputError(f"recipe {path} must be a table with a `passes` list")
    unknown = set(data) - _RECIPE_KEYS
    if unknown:
        raise InputError(f"recipe {path}: unknown key {sorted(unknown)[0]!r} "
                         f"(allowed: {', '.join(sorted(_RECIPE_KEYS))})")
    entries = data.get("passes")
    if not isinstance(entries, list) or not entries:
        raise InputError(f"recipe {path} needs a non-empty `passes` list")
    passes = [_recipe_entry(path, entry) for entry in entries]
    fixed_point = data.get("fixed_point", False)
    max_iterations = data.get("max_iterations", DEFAULT_MAX_ITERATIONS)
    if not isinstance(fixed_point, bool):
        raise InputError(f"recipe {path}: fixed_point must be true or false")
    if isinstance(max_iterations, bool) or not isinstance(max_iterations, int) or max_iterations < 1:
        raise InputError(f"recipe {path}: max_iterations must be a positive integer")
    spec = PipelineSpec(passes, fixed_point, max_iterations)
    spec.build()  # reject unknown passes and bad options now, before any work
    return spec


def _recipe_entry(path: Path, entry: Any) -> tuple[str, dict[str, Any]]:
    if isinstance(entry, str):
        return entry, {}
    if isinstance(entry, dict) and isinstance(entry.get("name"), str):
        options = {key: value for key, value in entry.items() if key != "name"}
        return entry["name"], options
    if isinstance(entry, dict) and len(entry) == 1:
        name, options = next(iter(entry.items()))
        if isinstance(name, str) and isinstance(options, dict):
            return name, options
    raise InputError(f"recipe {path}: each pass is a name or a table with `name` and options, "
                     f"got {entry!r}")


def resolve_spec(preset: str | None = None, passes: str | Sequence[str] | None = None,
                 recipe: str | Path | None = None) -> PipelineSpec:
    """The spec from exactly one of preset, passes or recipe (preset O1 when none is given)."""
    given = [name for name, value in (("preset", preset), ("passes", passes), ("recipe", recipe))
             if value is not None]
    if len(given) > 1:
        raise InputError(f"give only one of preset, passes and recipe (got {' and '.join(given)})")
    if recipe is not None:
        return recipe_spec(recipe)
    if passes is not None:
        return passes_spec(passes)
    return preset_spec(preset or "O1")
