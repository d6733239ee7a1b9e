"""A lossy run: float passes, then the lossy passes, judged, guarded, written.

1. The float passes run on the loaded model (to a fixed point): the float model.
2. The data-dependent exact passes before the first lossy pass (SmoothQuant, outlier carving)
   get the statistics they declare, measured on the float model over the calibration data (or
   the validation inputs), and rewrite it once; the nodes they add stay as they are.
3. The lossy passes get theirs, each measured on the model as the lossy passes before it leave
   it (one more pass over the data per pass that measures), and run on a clone: the candidate.
4. With a score budget, the fallback backs the most sensitive layers off along their passes'
   ladders until it is met, judged on held-out calibration samples when there are some.
5. Validation against the input at the budget's tolerance; the kernel guard; the latency guard
   (passes that buy speed) or the size guard (passes that buy size); then the write.
Every way in — graphopt quantize, optimize with a lossy preset, pass list or recipe, run, the
API — comes here, so every one gets the same result and the same checks.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable
from typing import Any

import onnx
import onnx_ir as ir
from onnx_ir.passes.common import NameFixPass

from graphopt import model as model_io
from graphopt.errors import InputError, NothingChanged, ValidationFailed
from graphopt.lossy import guards
from graphopt.lossy.budget import Budget
from graphopt.lossy.fallback import Fallback, Layer, choose
from graphopt.lossy.result import LossyResult
from graphopt.lossy.statistics import hand_over
from graphopt.passes import Pass
from graphopt.pipeline import DEFAULT_MAX_ITERATIONS, PassManager, PassObserver, PipelineReport
from graphopt.runtime.calibration import CalibrationData
from graphopt.runtime import guard, kernels
from graphopt.runtime.guard import guard_feeds
from graphopt.runtime.providers import SessionConfig
from graphopt.runtime.validate import ValidationResult, Validator

HELD_OUT = 32  # calibration samples judging a budget, at most: an eighth of them, but 8 (or a quarter) at least
HELD_OUT_MIN = 8  # 4 held-out files passed a classifier whose int8 form changed others' outputs (cosine 0.03)
# Without a budget, a result failing its tolerance is backed off layer by layer for models up to this
# many changed layers: a trial per layer takes minutes beyond it (PP-OCRv4's detector: 5 minutes).
DEFAULT_FALLBACK_LAYERS = 48
DEFAULT_FALLBACK_SECONDS = 180  # or more layers, where trying each takes about this long in all
FROZEN = "the float part of {pass_}, kept as it is on purpose"


@dataclasses.dataclass
class Source:
    """The model as the user gave it (the reference) and the loaded model the passes change."""

    reference: Any
    model: ir.Model
    opset: int | None = None  # the opset the user asked for, if any
    notes: list[str] = dataclasses.field(default_factory=list)


def load(model, opset: int | None = None) -> Source:
    """A path, an onnx.ModelProto or an onnx_ir.Model (cloned: the caller's stays the reference)."""
    if isinstance(model, onnx.ModelProto):
        source = Source(model, model_io.from_proto(model))
    elif isinstance(model, ir.Model):
        model_io.check_input(model)
        source = Source(model.clone(), model)
        model_io.dynamic_legacy_dims(source.model)
    else:
        source = Source(model, model_io.load(model))
    if opset is not None:
        source.model = model_io.convert_opset(source.model, opset)
        source.opset = opset
    return source


def _convert_for(source: Source, plan: Plan) -> str:
    """Convert a model below the opset its lossy passes need to the oldest that serves them, saying
    so. Where the user chose the opset, refuse; where the conversion fails or would change the
    model's inputs, go on at the model's opset: what stops the passes is returned, to be said if
    they change nothing."""
    needs = [(pass_.needs_opset(plan.target), pass_.name) for pass_ in plan.passes if pass_.lossy]
    if not needs or not ({"", "ai.onnx"} & set(source.model.opset_imports)):
        return ""  # no ONNX op to quantize in a model of other domains only
    required, name = max(needs)
    current = model_io.model_opset(source.model)
    if current >= required:
        return ""
    where = f" on --target {plan.target}" if name == "quantize_weight_only" else ""
    why = f"{name} needs opset {required} or newer{where}"
    if source.opset is not None:
        raise InputError(f"--opset {source.opset}: {why}")
    try:
        converted = model_io.convert_opset(source.model, required)
    except InputError as error:
        return f"{why}, the model has {current}, and {error}"
    if _interface(converted) != _interface(source.model):  # Scan-8's batch axis is gone in Scan-9 …
        return f"{why}, the model has {current}, and converting it would change its inputs or outputs"
    source.model = converted
    source.notes.append(f"converted the model from opset {current} to {required}: {why} (--opset N chooses)")
    return ""


@dataclasses.dataclass
class Plan:
    """What to run: the float passes, then `passes` (data-dependent exact ones, then the lossy ones)."""

    float_passes: list[Pass]
    passes: list[Pass]
    target: str = "portable"
    float_target: str | None = None  # the float passes' target, when it is not `target`
    fixed_point: bool = True
    max_iterations: int = DEFAULT_MAX_ITERATIONS
    check: bool = True

    def split(self) -> tuple[list[Pass], list[Pass]]:
        """(the passes before the first lossy one, applied once; the rest, rebuilt for each candidate)."""
        first = next((index for index, pass_ in enumerate(self.passes) if pass_.lossy), len(self.passes))
        return self.passes[:first], self.passes[first:]


@dataclasses.dataclass
class Checks:
    """How the result is judged and where its data comes from."""

    budget: Budget
    config: SessionConfig  # validation and statistics sessions
    bench_config: SessionConfig  # the latency guard's
    validate: bool = True
    check_speed: bool = True
    force: bool = False
    inputs: Any = None
    shapes: dict | None = None
    input_ranges: dict | None = None
    calibration: str | Iterable | None = None


def run(source: Source, output, plan: Plan, checks: Checks, *, observer: PassObserver | None = None,
        external_data: bool | None = None) -> LossyResult:
    _check(plan, checks)
    blocked = _convert_for(source, plan)
    samples = CalibrationData(source.model, checks.calibration) if checks.calibration is not None else None
    held_out = _held_out(plan, checks, samples)
    float_model = source.model
    float_report = PassManager(plan.float_passes, target=plan.float_target or plan.target,
                               fixed_point=plan.fixed_point and bool(plan.float_passes),
                               max_iterations=plan.max_iterations, check=plan.check, observer=observer).run(float_model)
    NameFixPass(_NodeNames())(float_model)  # the report, --exclude and the fallback know layers by name
    for pass_ in plan.passes:
        if pass_.lossy and pass_.kernel_type:
            pass_.kernels = kernels.table(float_model, checks.config.resolved_ep(), pass_.kernel_type)
    validator = _validator(source, plan, checks, samples, held_out)
    data = samples if samples is not None else validator.input_sets if validator is not None else None
    progress = getattr(observer, "calibration", None)
    prepare, lossy = plan.split()
    prepared = _prepare(float_model, prepare, lossy, data, checks.config, plan, progress)
    _hand_over_staged(lossy, float_model, data, checks.config, plan, progress)
    if samples is None and checks.inputs is None:
        for pass_ in plan.passes:
            if pass_.statistics is not None:
                pass_.statistics.synthesized = True  # a pass may trust such ranges less (convert_precision)

    def build(backed_off: dict[str, str]) -> tuple[ir.Model, PipelineReport]:
        candidate = float_model.clone()
        for pass_ in lossy:
            pass_.backed_off = _own(backed_off, pass_, lossy)
        return candidate, PassManager(lossy, target=plan.target, check=plan.check).run(candidate)

    start = time.perf_counter()
    candidate, report = build({})
    checked: dict[tuple, ValidationResult] = {}  # by the choices it was built with: each is judged once

    def check(backed_off: dict[str, str]) -> ValidationResult:
        key = tuple(sorted(backed_off.items()))
        if key not in checked:
            checked[key] = validator.check(build(backed_off)[0] if backed_off else candidate)
        return checked[key]

    fallback, target, untried = None, checks.budget.target, ""
    if target is None and checks.budget.fallback and checks.validate and not check({}).passed:
        layers = sum(outcome.changed for entry in report.passes for outcome in entry.outcomes)
        expected = 2 * layers * (time.perf_counter() - start)  # a trial per layer, then about as many on the path
        if layers <= DEFAULT_FALLBACK_LAYERS or expected <= DEFAULT_FALLBACK_SECONDS:
            target = validator.tolerance.min_cosine  # the tolerance is the budget: back off until it passes
        else:
            untried = (f" (the fallback, on by default up to {DEFAULT_FALLBACK_LAYERS} layers or about "
                       f"{DEFAULT_FALLBACK_SECONDS // 60} min, would try these {layers} one by one, about "
                       f"{expected / 60:.0f} min: --min-cosine runs it)")
    if target is not None:
        fallback = _fall_back(float_model, report, lossy, checks.budget, target, check)
        if fallback.backed_off:
            candidate, report = build(fallback.backed_off)
    outcomes = [outcome for entry in report.passes for outcome in entry.outcomes]
    if any(pass_.lossy for pass_ in lossy) and not any(outcome.changed for outcome in outcomes) and not checks.force:
        said = f"nothing was {_verb(lossy)}: {blocked}" if blocked else _nothing_changed(lossy, outcomes, float_model)
        raise NothingChanged(f"{said}; nothing was written (--force writes it)")
    chosen = tuple(sorted(fallback.backed_off.items())) if fallback is not None else ()
    validation = (checked.get(chosen) or validator.validate(candidate, locate=False)) if checks.validate else None
    if validation is not None and not validation.passed and not checks.force:
        raise ValidationFailed(f"the {_verb(lossy)} model does not match the input: {validation.summary()}"
                               f"{untried}; nothing was written", validation)
    result = LossyResult(candidate, _merged(float_report, prepared, report), [], validation,
                         [*model_io.notes(float_model), *source.notes], outcomes,
                         model_io.parameter_bytes(float_model), model_io.parameter_bytes(candidate),
                         _verb(lossy), fallback)
    _guard(result, float_model, lossy, checks, build, held_out[0] if held_out else None)
    if output is not None:
        result.written = model_io.save(candidate, output, external_data=external_data)
    return result


def _interface(model: ir.Model) -> list[tuple]:
    return [(value.name, value.dtype, None if value.shape is None else value.shape.rank())
            for value in (*model.graph.inputs, *model.graph.outputs)]


def _nothing_changed(lossy: list[Pass], outcomes: list, model: ir.Model) -> str:
    """Why a run changed no layer: the commonest reasons, with a layer each."""
    verb = _verb(lossy)
    if not outcomes:
        acting = [pass_ for pass_ in lossy if pass_.lossy]
        handles = "; ".join(f"{pass_.name}: {pass_.handles}" for pass_ in acting if pass_.handles)
        bodies = sum(1 for node in model.graph.all_nodes() if node.op_type in ("If", "Loop", "Scan"))
        inside = f"; layers inside the bodies of its {bodies} If/Loop/Scan nodes are left as they are" if bodies else ""
        return (f"nothing was {verb}: {', '.join(pass_.name for pass_ in acting)} found no layer it handles"
                + (f" ({handles})" if handles else "") + inside)
    reasons: dict[str, list[str]] = {}
    for outcome in outcomes:
        reasons.setdefault(outcome.reason or "no reason given", []).append(f"{outcome.op_type} {outcome.layer!r}")
    common = sorted(reasons.items(), key=lambda item: -len(item[1]))
    said = "; ".join(f"{len(layers)} ({layers[0]}{', …' if len(layers) > 1 else ''}): {reason}"
                     for reason, layers in common[:3])
    more = f"; {len(common) - 3} more reasons in the report" if len(common) > 3 else ""
    return f"{verb} 0 of {len(outcomes)} layers: {said}{more}"


def _check(plan: Plan, checks: Checks) -> None:
    checks.budget.check()
    if checks.budget.target is not None and not checks.validate:
        raise InputError("--min-cosine and --max-drop are measured by validation: drop --no-validate")
    needing = next((pass_ for pass_ in plan.passes if pass_.needs_calibration), None)
    if needing is not None and checks.calibration is None:
        raise InputError(f"{needing.needs_calibration}: give --calib DATA")
    judged = checks.validate and (checks.budget.target is not None or checks.budget.fallback)
    if checks.calibration is not None and not judged and not any(pass_.measures() for pass_ in plan.passes):
        raise InputError("--calib feeds the statistics a pass measures (static int8's ranges, --algorithm mse/gptq, "
                         "--outlier-ratio, --smooth, low_rank's whitening); this run measures none (nothing would "
                         "use the data)")


def _held_out(plan: Plan, checks: Checks, samples: CalibrationData | None):
    """A budget, validation (with the fallback or all-or-nothing), and passes whose statistics fit the
    data (static int8's ranges) whatever the budget, are judged on held-out calibration samples the
    statistics never see: synthesized inputs (random pixels, random ids) saturate ranges measured on
    real samples and say nothing of how a language model's real sentences fare."""
    judged_on_data = checks.budget.target is not None or checks.validate or \
        any(pass_.needs_calibration for pass_ in plan.passes)
    if samples is None or len(samples) < 2 or not judged_on_data or checks.inputs is not None:
        return None
    return samples.split_off(min(HELD_OUT, max(1, len(samples) // 8, min(HELD_OUT_MIN, len(samples) // 4))))


def _validator(source: Source, plan: Plan, checks: Checks, samples, held_out) -> Validator | None:
    measuring = any(pass_.measures() for pass_ in plan.passes)
    if not checks.validate and not (measuring and samples is None):
        return None
    reference = source.reference
    config = checks.config
    if config.opt_level == "disable" and any(getattr(pass_, "folds_at_load", False) for pass_ in plan.passes):
        config = dataclasses.replace(config, opt_level="basic")  # the decoders as ONNX Runtime runs them: folded
    return Validator(reference, feeds=checks.inputs, shapes=checks.shapes, ranges=checks.input_ranges,
                     tol=checks.budget.resolve(plan.passes), config=config,
                     reference_ir=reference if isinstance(reference, ir.Model) else None, feed_sets=held_out)


def _prepare(model: ir.Model, prepare: list[Pass], lossy: list[Pass], data, config: SessionConfig, plan: Plan,
             progress) -> PipelineReport | None:
    """Run the data-dependent exact passes once, in place, on statistics measured before the first;
    the nodes each adds are frozen for the lossy passes (smoothing's Muls, whose input int8 would
    lose what smoothing saves; the carved channels' float MatMuls)."""
    if not prepare:
        return None
    hand_over(prepare, model, data, config, progress)
    reports, frozen = [], {}
    for pass_ in prepare:
        before = {node.name for node in model.graph}
        reports.append(PassManager([pass_], target=plan.target, check=plan.check).run(model))
        frozen.update((node.name, FROZEN.format(pass_=pass_.name)) for node in model.graph if node.name not in before)
    for pass_ in lossy:
        pass_.frozen = dict(frozen)
    return _merged(*reports)


def _hand_over_staged(lossy: list[Pass], model: ir.Model, data, config: SessionConfig, plan: Plan, progress) -> None:
    """Each lossy pass's statistics, measured on the model as the lossy passes before it leave it
    (all layers in their own forms): pruned channels' readers, a factorized layer's inputs, a
    compressed model's activation ranges. A form the fallback changes later keeps these numbers
    (a pass checks that a statistic still fits the value it reads)."""
    staged = model
    for index, pass_ in enumerate(lossy):
        hand_over([pass_], staged, data, config, progress)
        if any(later.measures() for later in lossy[index + 1:]):
            staged = model.clone() if staged is model else staged
            PassManager([pass_], target=plan.target, check=plan.check).run(staged)


def _fall_back(float_model: ir.Model, report: PipelineReport, lossy: list[Pass], budget: Budget, target: float,
               check: Callable[[dict[str, str]], ValidationResult]) -> Fallback:
    """Back off the changed layers along their passes' ladders, in the float model's order, judged
    by the budget on `check(choices)` (the model built with them, validated); by bytes when a pass
    buys size per byte (its `cost`)."""
    passes = {pass_.name: pass_ for pass_ in lossy}
    changed = {_key(entry.name, outcome.layer, lossy): (passes[entry.name], outcome) for entry in report.passes
               for outcome in entry.outcomes if outcome.changed}
    order = {node.name: index for index, node in enumerate(float_model.graph)}
    layers = [Layer(name, owner.ladder()[1:], float(outcome.bytes_before or 1))
              for name, (owner, outcome) in sorted(changed.items(),
                                                    key=lambda item: order.get(item[1][1].layer, len(order)))]
    costs = any(pass_.cost == "bytes" for pass_ in lossy)
    return choose(layers, lambda backed_off: budget.judge(check(backed_off)), target, costs=costs)


def _key(pass_name: str, layer: str, lossy: list[Pass]) -> str:
    """A layer's name in the fallback's choices: `pass:layer` where several lossy passes may each
    back the same layer off (a pruned layer, then quantized), else the layer's own name."""
    return f"{pass_name}:{layer}" if sum(pass_.lossy for pass_ in lossy) > 1 else layer


def _own(backed_off: dict[str, str], pass_: Pass, lossy: list[Pass]) -> dict[str, str]:
    """The fallback's choices for one pass's layers."""
    if sum(other.lossy for other in lossy) <= 1:
        return dict(backed_off)
    prefix = f"{pass_.name}:"
    return {key[len(prefix):]: form for key, form in backed_off.items() if key.startswith(prefix)}


def _guard(result: LossyResult, float_model: ir.Model, lossy: list[Pass], checks: Checks, build: Callable,
           sample: dict | None) -> None:
    """The kernel guard, then the latency guard (timed on the user's inputs, else on a held-out sample of
    the calibration data: real shapes, else synthesized ones) or the size guard."""
    guards.check_kernels(float_model, result.model, checks.config, checks.force, label=f"the {result.verb} model")
    objectives = {part for pass_ in lossy if pass_.lossy for part in pass_.objective.split("+")}
    if "latency" in objectives and checks.check_speed:
        feeds = sample if sample is not None and checks.inputs is None else \
            guard_feeds(float_model, checks.inputs, checks.shapes, checks.input_ranges)
        latency, result.alternatives = guards.time_path(float_model, result.model, result.fallback,
                                                        lambda backed_off: build(backed_off)[0],
                                                        checks.bench_config, feeds, result.verb)
        def measure(runs: int):
            return guard.compare_latency(float_model, result.model, checks.bench_config, feeds, runs=runs,
                                         label=result.verb)

        result.latency = guards.refuse_slower(measure, checks.budget.min_speedup, checks.force, first=latency)
    if "size" in objectives or checks.budget.max_size < 1.0:
        compressed = any(pass_.smaller_compressed for pass_ in lossy if pass_.lossy) or "size" not in objectives
        result.size = guards.check_size(float_model, result.model, checks.budget.max_size, checks.force, compressed)


def _verb(lossy: list[Pass]) -> str:
    return next((pass_.verb for pass_ in lossy if pass_.lossy), "changed")


def _merged(*reports: PipelineReport | None) -> PipelineReport:
    present = [report for report in reports if report is not None]
    first, last = present[0], present[-1]
    return dataclasses.replace(first, passes=[entry for report in present for entry in report.passes],
                               seconds=sum(report.seconds for report in present), nodes_after=last.nodes_after)


class _NodeNames:
    """Unnamed nodes are named after their op type (NameFixPass makes the names unique)."""

    def generate_node_name(self, node: ir.Node) -> str:
        return node.name or node.op_type

    def generate_value_name(self, value: ir.Value) -> str:
        return value.name or "value"
