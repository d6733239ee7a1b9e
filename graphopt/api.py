"""The Python API behind every CLI command: optimize, quantize, validate, bench, list passes."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Sequence

import onnx
import onnx_ir as ir

from graphopt import compression, lossy, quantization
from graphopt import model as model_io
from graphopt.errors import InputError, ValidationFailed
from graphopt.lossy import Budget, LossyResult, guards
from graphopt.outputs import check_output_differs, check_output_file  # noqa: F401  (the CLI's)
from graphopt.passes import Pass
from graphopt.passes.registry import PassInfo, list_passes  # noqa: F401  (the API's)
from graphopt.pipeline import (
    LOSSY_PRESETS,
    PassManager,
    PassObserver,
    PipelineReport,
    PipelineSpec,
    resolve_spec,
)
from graphopt.runtime import bench as bench_module
from graphopt.runtime import compare
from graphopt.runtime.bench import BenchResult, ProgressCallback
from graphopt.runtime.compare import Tolerance
from graphopt.runtime import guard as latency_guard
from graphopt.runtime.guard import LatencyCheck
from graphopt.runtime import inputs as input_io
from graphopt.runtime.options import RuntimeOptions
from graphopt.runtime.providers import opset_warnings
from graphopt.runtime.validate import ValidationResult, Validator

Shapes = dict[str, tuple[int, ...]]
Ranges = dict[str, tuple[float, float]]


@dataclasses.dataclass
class OptimizeResult:
    model: ir.Model
    report: PipelineReport
    written: list[os.PathLike]
    validation: ValidationResult | None = None
    warnings: list[str] = dataclasses.field(default_factory=list)
    latency: LatencyCheck | None = None  # with check_speed: the input against the result, on the EP


def optimize(
    model: ir.Model | onnx.ModelProto | str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    preset: str | None = None,
    passes: str | Sequence[str] | None = None,
    recipe: str | os.PathLike | None = None,
    target: str = "portable",
    opset: int | None = None,
    fixed_point: bool | None = None,
    max_iterations: int | None = None,
    check: bool = True,
    external_data: bool | None = None,
    validate: bool = False,
    validate_each: bool = False,
    check_speed: bool | None = None,
    force: bool = False,
    inputs: str | os.PathLike | dict | None = None,
    shapes: Shapes | None = None,
    input_ranges: Ranges | None = None,
    tolerance: str | Tolerance | None = None,
    min_cosine: float | None = None,
    max_drop: float | None = None,
    fallback: bool = True,
    min_speedup: float = 1.0,
    max_size: float = 1.0,
    runtime: RuntimeOptions | None = None,
    observer: PassObserver | None = None,
    fix_shapes: Shapes | None = None,
    keep_metadata: bool = False,
    calibration: str | os.PathLike | Iterable[dict] | None = None,
) -> OptimizeResult | LossyResult:
    """Optimize a model (an ir.Model is changed in place) and optionally write it atomically.

    Give at most one of `preset` (O0-O3, default O1, or a quantizing preset), `passes` ("a,b,c" or
    a list) and `recipe` (a TOML/YAML file). `fixed_point` repeats the passes until nothing changes.
    `validate` compares the result with the input in ONNX Runtime and raises ValidationFailed
    (nothing written) when outputs differ beyond `tolerance` (default fp32), unless `force`;
    `validate_each` checks after every pass that changed the model and names the first one that
    broke it. `fix_shapes` ({input: shape}) makes those inputs static first (validation then runs
    at those shapes); `keep_metadata` keeps the debug info O2/O3 strip. `check_speed=True` times the
    input against the float result on the EP and refuses (GuardRefused) a result under `min_speedup`
    times its speed, unless `force` (by default: slower by more than 3% and 5 µs, then in the median
    of 5 more timings too — graphopt.lossy.guards.refuse_slower); for a lossy run it is on with `validate`.

    A pass list or recipe is split at its first lossy pass (or pass that needs measurements): what
    comes before runs as float passes, the rest through the lossy pipeline (graphopt.lossy), as
    graphopt.quantize runs it — statistics on `calibration` (or the validation inputs), the budget
    (`min_cosine`, `max_drop`; for a float run `min_cosine` tightens the tolerance), held-out
    judging, the kernel guard, with `validate` the latency guard (`check_speed`, `min_speedup`) and
    the size guard (`max_size`) — returning a LossyResult. A quantizing preset (int8-dynamic,
    int4-weight-only, int8-static) is graphopt.quantize's mode after these float passes, so both
    give the same file.
    """
    spec = _spec(preset, passes, recipe, fixed_point, max_iterations, keep_metadata, fix_shapes, shapes)
    shapes = {**(shapes or {}), **(fix_shapes or {})} or None
    check_output_file(output)
    built = spec.build()
    split = next((index for index, pass_ in enumerate(built) if pass_.lossy or pass_.measures()), len(built))
    if split < len(built) or calibration is not None:
        if validate_each:
            raise InputError("--validate-each checks float passes; a lossy pass is judged as a whole (--validate)")
        source = lossy.load(model, opset)
        mode = LOSSY_PRESETS.get(preset or "")
        plan = quantization.plan(source, quantization.settings(mode=mode), target=target, float_passes=built[:split],
                                 fixed_point=spec.fixed_point, check=check) if mode else \
            lossy.Plan(built[:split], built[split:], target=target, fixed_point=spec.fixed_point,
                       max_iterations=spec.max_iterations, check=check)
        checks = _checks(Budget(tolerance, min_cosine, max_drop, fallback, min_speedup, max_size), runtime,
                         validate=validate, check_speed=validate and check_speed is not False, force=force,
                         inputs=inputs, shapes=shapes, input_ranges=input_ranges, calibration=calibration)
        return _finished(lossy.run(source, output, plan, checks, observer=observer, external_data=external_data))
    manager = PassManager(built, target=target, fixed_point=spec.fixed_point,
                          max_iterations=spec.max_iterations, check=check, observer=observer)
    tol = compare.tolerance(tolerance or "fp32", min_cosine=min_cosine) if min_cosine is not None else tolerance
    return _optimize_float(model, output, manager, opset, validate, validate_each, force,
                           Validation(inputs, shapes, input_ranges, tol or "fp32", runtime), external_data,
                           bool(check_speed), min_speedup)


def _spec(preset, passes, recipe, fixed_point, max_iterations, keep_metadata, fix_shapes, shapes) -> PipelineSpec:
    spec = resolve_spec(preset, passes, recipe)
    if keep_metadata:
        spec.without("strip_debug_info")
    if fix_shapes:
        clash = sorted(name for name in set(fix_shapes) & set(shapes or {})
                       if tuple(shapes[name]) != tuple(fix_shapes[name]))
        if clash:
            raise InputError(f"--shape {clash[0]} differs from --fix-shape {clash[0]}: the fixed model only runs "
                             "at the fixed shape")
        spec.first("fix_shape", {"shapes": dict(fix_shapes)})
    if fixed_point is not None:
        spec.fixed_point = fixed_point
    if max_iterations is not None:
        spec.max_iterations = max_iterations
    return spec


@dataclasses.dataclass
class Validation:
    """What validation runs on and how: the inputs, their shapes and ranges, the tolerance, the sessions."""

    inputs: str | os.PathLike | dict | None
    shapes: Shapes | None
    input_ranges: Ranges | None
    tolerance: str | Tolerance
    runtime: RuntimeOptions | None


def _optimize_float(model, output, manager: PassManager, opset: int | None, validate: bool, validate_each: bool,
                    force: bool, validation: Validation, external_data: bool | None, check_speed: bool = False,
                    min_speedup: float = 1.0) -> OptimizeResult:
    source = lossy.load(model)
    model = source.model
    validator = None
    # The input before the passes run (cheap: tensors are shared): what the result is timed against,
    # and what describes the reference (the file or proto as given, which ORT loads as is).
    snapshot = model.clone() if check_speed or validate or validate_each else None
    if snapshot is not None:
        snapshot.meta.update(model.meta)
    if validate or validate_each:
        validator = Validator(snapshot if isinstance(source.reference, ir.Model) else source.reference,
                              feeds=validation.inputs, shapes=validation.shapes, ranges=validation.input_ranges,
                              tol=validation.tolerance, config=(validation.runtime or RuntimeOptions()).for_validation(),
                              reference_ir=snapshot)
    if validate_each:
        manager.after_change = _each_pass_check(validator)
    if opset is not None:
        model = model_io.convert_opset(model, opset)
    report = manager.run(model)
    result = validator.validate(model) if validator is not None else None
    if result is not None and not result.passed and not force:
        raise ValidationFailed(f"the optimized model does not match the input: {result.summary()}; "
                               "nothing was written", result)
    latency = None
    if check_speed:  # a float preset must not make the model slower (If branches, Casts … have)
        config = (validation.runtime or RuntimeOptions()).for_bench()
        feeds = latency_guard.guard_feeds(snapshot, validation.inputs, validation.shapes, validation.input_ranges)
        def measure(runs: int) -> latency_guard.LatencyCheck:
            return dataclasses.replace(latency_guard.compare_latency(snapshot, model, config, feeds, runs=runs,
                                                                     label="optimized"), baseline="input")

        latency = guards.refuse_slower(measure, min_speedup, force)
    written = model_io.save(model, output, external_data=external_data) if output is not None else []
    return OptimizeResult(model, report, written, result, model_io.notes(model) + opset_warnings(model), latency)


QUANTIZE_MODES = quantization.MODES


def quantize(
    model: ir.Model | onnx.ModelProto | str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    preset: str = "O3",
    target: str = "portable",
    opset: int | None = None,
    validate: bool = True,
    check_speed: bool = True,
    force: bool = False,
    inputs: str | os.PathLike | dict | None = None,
    calibration: str | os.PathLike | Iterable[dict] | None = None,
    shapes: Shapes | None = None,
    input_ranges: Ranges | None = None,
    tolerance: str | Tolerance | None = None,
    min_cosine: float | None = None,
    max_drop: float | None = None,
    fallback: bool = True,
    min_speedup: float = 1.0,
    max_size: float = 1.0,
    runtime: RuntimeOptions | None = None,
    observer: PassObserver | None = None,
    external_data: bool | None = None,
    **options,
) -> LossyResult:
    """Quantize a model after the `preset`'s float passes (O3; O0 quantizes the graph as it is).

    `options` are graphopt.quantization.QuantizeSettings' (`mode`, `algorithm`, `smooth` …; the
    table on the Python API page): dynamic int8 by default. The result is validated against the
    input at the mode's tolerance (`tolerance` overrides it) on `inputs`, or on held-out samples of
    `calibration` (an .npz, a folder of .npz or an iterable of input sets) when a budget or static
    int8 needs real data; with `min_cosine` (worst output cosine) or `max_drop` (top-1 agreement
    lost) the most sensitive layers go back to float (weight-only: to 8 bits) until the budget is
    met. A model ONNX Runtime cannot run on the EP, not `min_speedup` times faster than float
    (`check_speed`), or (below 1) over `max_size` of float's compressed weights, is refused
    (GuardRefused) unless `force`. `opset` converts first (portable
    int4 needs 21). Statistics (static ranges, mse, gptq, outlier_ratio, smooth) are measured on
    `calibration` when given, otherwise on the validation inputs (random token ids make poor
    statistics for a language model). Nothing is written when a check fails.
    """
    source = lossy.load(model, opset)
    plan = quantization.plan(source, quantization.settings(**options), target=target, preset=preset)
    checks = _checks(Budget(tolerance, min_cosine, max_drop, fallback, min_speedup, max_size), runtime, validate=validate,
                     check_speed=check_speed, force=force, inputs=inputs, shapes=shapes, input_ranges=input_ranges,
                     calibration=calibration)
    return _finished(lossy.run(source, output, plan, checks, observer=observer, external_data=external_data))


def compress(
    model: ir.Model | onnx.ModelProto | str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    preset: str = "O3",
    target: str = "portable",
    opset: int | None = None,
    validate: bool = True,
    check_speed: bool = True,
    force: bool = False,
    inputs: str | os.PathLike | dict | None = None,
    calibration: str | os.PathLike | Iterable[dict] | None = None,
    shapes: Shapes | None = None,
    input_ranges: Ranges | None = None,
    tolerance: str | Tolerance | None = None,
    min_cosine: float | None = None,
    max_drop: float | None = None,
    fallback: bool = True,
    min_speedup: float = 1.0,
    max_size: float = 1.0,
    runtime: RuntimeOptions | None = None,
    observer: PassObserver | None = None,
    external_data: bool | None = None,
    **options,
) -> LossyResult:
    """Compress a model after the `preset`'s float passes: structured pruning, low-rank
    factorization, weight sharing, magnitude pruning and quantization, in that order, as
    `options` (graphopt.compression.CompressSettings': `prune_channels`, `rank_ratio`,
    `cluster_bits`, `quantize` …) ask. Judged, backed off, guarded and written as `quantize` is:
    statistics and a budget are measured on `calibration` when given, else on the validation inputs."""
    source = lossy.load(model, opset)
    plan = compression.plan(source, compression.settings(**options), target=target, preset=preset)
    checks = _checks(Budget(tolerance, min_cosine, max_drop, fallback, min_speedup, max_size), runtime, validate=validate,
                     check_speed=check_speed, force=force, inputs=inputs, shapes=shapes, input_ranges=input_ranges,
                     calibration=calibration)
    return _finished(lossy.run(source, output, plan, checks, observer=observer, external_data=external_data))


def _checks(budget: Budget, runtime: RuntimeOptions | None, **how) -> lossy.Checks:
    runtime = runtime or RuntimeOptions()
    return lossy.Checks(budget, runtime.for_validation(), runtime.for_bench(), **how)


def _finished(result: LossyResult) -> LossyResult:
    result.warnings = [*result.warnings, *opset_warnings(result.model)]
    return result


def _each_pass_check(validator: Validator):
    def check(pass_: Pass, model: ir.Model) -> None:
        result = validator.validate(model)
        if not result.passed:
            raise ValidationFailed(f"pass {pass_.name} changed the outputs: {result.summary()}; "
                                   "nothing was written", result)

    return check


def validate(
    reference: ir.Model | onnx.ModelProto | str | os.PathLike,
    candidate: ir.Model | onnx.ModelProto | str | os.PathLike,
    *,
    inputs: str | os.PathLike | dict | None = None,
    shapes: Shapes | None = None,
    input_ranges: Ranges | None = None,
    tolerance: str | Tolerance = "fp32",
    runtime: RuntimeOptions | None = None,
    locate: bool = True,
) -> ValidationResult:
    """Run both models on the same inputs (several shapes when axes are dynamic), compare every
    output, and on failure name the first node whose output diverges."""
    # a missing or unreadable file, or a model that takes other inputs, is bad input, not a failed validation
    candidate_ir = model_io.load(candidate) if isinstance(candidate, (str, os.PathLike)) else \
        model_io.from_proto(candidate) if isinstance(candidate, onnx.ModelProto) else candidate
    validator = Validator(reference, feeds=inputs, shapes=shapes, ranges=input_ranges,
                          tol=tolerance, config=(runtime or RuntimeOptions()).for_validation())
    input_io.same_inputs(validator.reference_ir, candidate_ir)
    return validator.validate(candidate, locate=locate)


def bench(
    models: Sequence[str | os.PathLike],
    *,
    inputs: str | os.PathLike | dict | None = None,
    shapes: Shapes | None = None,
    input_ranges: Ranges | None = None,
    sweep: Sequence[dict[str, tuple[int, ...]]] | None = None,
    warmup: int = 10,
    runs: int | None = None,
    seconds: float | None = None,
    concurrency: int = 1,
    runtime: RuntimeOptions | None = None,
    progress: ProgressCallback | None = None,
    labels: Sequence[str] | None = None,
) -> BenchResult:
    """Latency of one or more models on the same inputs, each timed while it owns the machine
    (models take turns in time slices). `runs` (default 100) or `seconds`, not both; `sweep`
    is a list of shape sets (see graphopt.runtime.inputs.parse_sweep); `concurrency` keeps that
    many requests in flight on each session. Models that take different inputs (names, dtypes,
    ranks) are an InputError naming the first difference."""
    return bench_module.bench(models, config=(runtime or RuntimeOptions()).for_bench(), inputs=inputs,
                              shapes=shapes, ranges=input_ranges, sweep=sweep, warmup=warmup, runs=runs,
                              seconds=seconds, concurrency=concurrency, progress=progress, labels=labels)


def distill(
    teacher: str | os.PathLike,
    output: str | os.PathLike,
    *,
    student=None,
    student_onnx: str | os.PathLike | None = None,
    data: str | os.PathLike | dict,
    test_data: str | os.PathLike | dict | None = None,
    tokenizer: str | os.PathLike | None = None,
    max_length: int = 128,
    work: str | os.PathLike | None = None,
    resume: bool = False,
    time_models: bool = True,
    progress=None,
    **options,
):
    """Train a student — `student` (a torch.nn.Module, or "file.py:factory" as `graphopt export --module`
    takes), `student_onnx` (an ONNX model, such as `graphopt.compress`'s output, made trainable in
    PyTorch) or `drop_layers=K` (the teacher keeping every K-th layer) — to reproduce the ONNX `teacher` on `data` (an .npz, or {input name: array}, samples along
    axis 0, with optional `labels`), then export it to `output` (an ONNX student: its own graph with the
    trained weights), judge it against the teacher in ONNX Runtime
    on the held-out samples (and on `test_data`, never trained on), and write its report beside it. `options` are
    graphopt.train.DistillSettings' (epochs, batch_size, lr, temperature, alpha, loss, online …);
    `work` holds the checkpoint and the cached teacher outputs (default: OUTPUT's stem + .distill).
    Returns a graphopt.train.job.DistillReport."""
    from graphopt.options import settings_from
    from graphopt.train import job
    from graphopt.train.loop import DistillSettings

    return job.run(teacher, output, student=student, student_onnx=student_onnx, data=data, test_data=test_data,
                   tokenizer=tokenizer, max_length=max_length,
                   settings=settings_from(DistillSettings, options),
                   work=work, resume=resume, time_models=time_models, progress=progress)
