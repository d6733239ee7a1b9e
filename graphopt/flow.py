"""`graphopt run`: a list of stages — export, optimize, quantize, precision, bench, report — into one folder.

Files in the output folder: model.onnx (the export, plus model.<dataset>.npz for zoo models
that ship data, model.calibration/ for the text models' calibration sentences and minilm's
tokenizer and distillation sentences),
model.<preset>.onnx (only when validation passes and, with check_speed, the benchmark does not
find it slower than the export: timed again before it is refused), with `quantize` also model.<mode>.onnx
(graphopt.quantize's result, only when it validates and the benchmark finds it faster than the
float model: the latency guard judges on the run's own timing; static int8 calibrates on
graphopt.export.calibration_set), with `precision` also model.<format>.onnx (graphopt.compress's
reduced-precision model, its ranges measured on the same calibration set, judged the same way),
report.md, report.json and latency.png. Everything is staged
and moved into place at the end, so a failure leaves no half-written files. A stage reads and
fills the RunState; a new stage (compress, distill, tune) slots into STAGES.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from graphopt import api
from graphopt import model as model_io
from graphopt.errors import GuardRefused, InputError, ValidationFailed
from graphopt.lossy import LossyResult, guards
from graphopt.outputs import check_output_folder, write_error
from graphopt.passes import TARGETS
from graphopt.passes.precision import FORMATS
from graphopt.pipeline import resolve_spec
from graphopt.quantization import MODES, mode_tolerance
from graphopt.runtime import bench_report
from graphopt.runtime.bench import BenchResult
from graphopt.runtime.compare import Tolerance
from graphopt.runtime.compare import tolerance as make_tolerance
from graphopt.runtime import guard
from graphopt.runtime.guard import LatencyCheck
from graphopt.runtime.providers import create_session


@dataclasses.dataclass
class RunSettings:
    """What `graphopt run` was asked for (checked before any work)."""

    preset: str = "O1"
    target: str = "portable"
    tolerance: Tolerance = dataclasses.field(default_factory=lambda: make_tolerance("fp32"))
    exporter: str = "dynamo"
    opset: int | None = None
    shapes: dict[str, tuple[int, ...]] | None = None
    bench_shapes: dict[str, tuple[int, ...]] | None = None
    runs: int = 100
    warmup: int = 10
    runtime: api.RuntimeOptions = dataclasses.field(default_factory=api.RuntimeOptions)
    quantize: str | None = None
    check_speed: bool = True  # the preset's model must not be slower than the export (judged on the benchmark)
    precision: str | None = None  # fp16 or bf16: graphopt.compress --precision on the export


@dataclasses.dataclass
class RunState:
    """What the stages share: the settings, the staging folder, and what each stage made."""

    name: str
    spec: Any  # the built model (graphopt.export.ZooModel)
    staging: Path
    settings: RunSettings
    progress: Callable[[int, int | None], None] | None = None
    export: Any = None
    optimize: api.OptimizeResult | None = None
    validation: Any = None
    quantized: LossyResult | None = None
    refusal: str = ""
    converted: LossyResult | None = None  # the reduced-precision model
    precision_refusal: str = ""
    speed_refusal: str = ""  # the preset's model, slower than the export
    timed: list[tuple[str, Path]] = dataclasses.field(default_factory=list)
    bench: BenchResult | None = None
    accuracy: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def exported_path(self) -> Path:
        return self.staging / "model.onnx"


@dataclasses.dataclass
class RunResult:
    name: str
    folder: Path
    export: Any
    optimize: api.OptimizeResult | None
    validation: Any
    bench: BenchResult | None
    accuracy: dict[str, float]
    files: list[Path]
    quantized: LossyResult | None = None
    quantize_refusal: str = ""
    speed_refusal: str = ""
    converted: LossyResult | None = None
    precision_refusal: str = ""

    @property
    def passed(self) -> bool:
        return self.validation is not None and self.validation.passed and not self.quantize_refusal and \
            not self.speed_refusal and not self.precision_refusal

    def lossy(self) -> list[tuple[str, LossyResult | None, str]]:
        """(section, result, refusal) for each lossy model the run was asked for."""
        return [(title, result, refusal) for title, result, refusal, asked in
                (("Quantization", self.quantized, self.quantize_refusal, self.quantized or self.quantize_refusal),
                 ("Reduced precision", self.converted, self.precision_refusal, self.converted or self.precision_refusal))
                if asked]


def export_stage(state: RunState) -> None:
    from graphopt import export

    state.export = export.export_spec(state.spec, state.exported_path, exporter=state.settings.exporter,
                                      opset=state.settings.opset)
    state.timed.append(("exported", state.exported_path))


def optimize_stage(state: RunState) -> None:
    settings = state.settings
    path = state.staging / f"model.{settings.preset}.onnx"
    try:
        state.optimize = api.optimize(state.exported_path, path, preset=settings.preset, target=settings.target,
                                      validate=True, shapes=settings.shapes, tolerance=settings.tolerance,
                                      runtime=settings.runtime)
        state.validation = state.optimize.validation
        state.timed.append((settings.preset, path))
    except ValidationFailed as failure:
        state.validation = failure.result


def quantize_stage(state: RunState) -> None:
    """graphopt.quantize on the export, its budget the mode's tolerance's cosine; its speed is judged
    after the benchmark (one timing, and a slower model's accuracy is still reported)."""
    from graphopt import export

    mode, settings = state.settings.quantize, state.settings
    if mode is None or state.optimize is None:
        return
    path = state.staging / f"model.{mode}.onnx"
    calibration = export.calibration_set(state.spec, state.exported_path, settings.shapes) if mode == "static" else None
    try:
        state.quantized = api.quantize(state.exported_path, path, mode=mode, preset=settings.preset,
                                       target=settings.target, shapes=settings.shapes, runtime=settings.runtime,
                                       calibration=calibration, check_speed=False,
                                       min_cosine=make_tolerance(mode_tolerance(mode)).min_cosine)
        state.timed.append((mode, path))
    except (ValidationFailed, GuardRefused) as failure:
        state.refusal = str(failure)


def precision_stage(state: RunState) -> None:
    """graphopt.compress --precision on the export at the format's tolerance, its value ranges measured on
    the calibration set (real sentences for the text models); its speed is judged after the benchmark,
    against the preset's float model: on the CPU EP it computes in float32 (compute=auto), the file is
    what halves."""
    from graphopt import export

    precision, settings = state.settings.precision, state.settings
    if precision is None or state.optimize is None:
        return
    path = state.staging / f"model.{precision}.onnx"
    try:
        state.converted = api.compress(state.exported_path, path, precision=precision, preset=settings.preset,
                                       target=settings.target, shapes=settings.shapes, runtime=settings.runtime,
                                       calibration=export.calibration_set(state.spec, state.exported_path,
                                                                          settings.shapes),
                                       check_speed=False)
        state.timed.append((precision, path))
    except (ValidationFailed, GuardRefused) as failure:
        state.precision_refusal = str(failure)


def bench_stage(state: RunState) -> None:
    if state.optimize is None:
        return
    settings = state.settings
    state.bench = api.bench([path for _, path in state.timed], shapes=settings.bench_shapes or settings.shapes,
                            warmup=settings.warmup, runs=settings.runs, runtime=settings.runtime,
                            progress=state.progress, labels=[path.name for _, path in state.timed])
    bench_report.plot(state.bench, state.staging / "latency.png")


def speed_stage(state: RunState) -> None:
    """The latency guard, judged on the benchmark: the quantized model against the preset's float
    model, then (with check_speed) the preset's model against the export. One found slower is timed
    again (graphopt.lossy.guards.refuse_slower) before it is refused: reported, with its benchmark
    row, and not written."""
    settings, preset = state.settings, state.staging / f"model.{state.settings.preset}.onnx"
    if state.quantized is not None and state.bench is not None:
        quantized = state.staging / f"model.{settings.quantize}.onnx"
        state.refusal, state.quantized.latency = _judge_speed(state, preset, quantized, "quantized", "float", "")
        if state.refusal:
            quantized.unlink()
    if state.converted is not None and state.bench is not None:
        converted = state.staging / f"model.{settings.precision}.onnx"
        state.precision_refusal, state.converted.latency = _judge_speed(state, preset, converted,
                                                                        settings.precision, "float", "")
        if state.precision_refusal:
            converted.unlink()
    if settings.check_speed and state.optimize is not None and state.bench is not None:
        state.speed_refusal, state.optimize.latency = _judge_speed(state, state.exported_path, preset, "optimized",
                                                                   "export", " (--no-check-speed writes it)")
        if state.speed_refusal:
            preset.unlink()


def _judge_speed(state: RunState, reference: Path, result: Path, label: str, baseline: str,
                 remedy: str) -> tuple[str, LatencyCheck | None]:
    """(refusal or "", the check) for `result` against `reference`, first on the run's benchmark."""
    by_name = {model.model: model for model in state.bench.models}
    first = LatencyCheck(by_name[reference.name].p50_ms, by_name[result.name].p50_ms, state.bench.ep,
                         state.bench.cases[0].input_shapes, label=label, baseline=baseline)
    settings = state.settings

    def measure(runs: int) -> LatencyCheck:
        reference_model, result_model = model_io.load(reference), model_io.load(result)
        feeds = guard.guard_feeds(reference_model, shapes=settings.bench_shapes or settings.shapes)
        check = guard.compare_latency(reference_model, result_model, settings.runtime.for_bench(), feeds, runs=runs,
                                label=label)
        return dataclasses.replace(check, baseline=baseline)

    try:
        return "", guards.refuse_slower(measure, 1.0, force=False, first=first, remedy=remedy)
    except GuardRefused as refused:
        return str(refused), None


def accuracy_stage(state: RunState) -> None:
    from graphopt import export

    test_set = export.dataset_paths(state.exported_path, state.spec.datasets).get("test")
    if test_set is None or state.bench is None:
        return
    for label, path in state.timed:
        value = _accuracy(path, test_set, state.settings.runtime)
        if value is not None:
            state.accuracy[label] = value


def report_stage(state: RunState) -> None:
    from graphopt.report import run_markdown

    result = _result(state, state.staging.parent, [])
    data = {"preset": state.settings.preset, **_report_dict(result)}
    model_io.write_text_atomic(state.staging / "report.json", json.dumps(data, indent=2) + "\n")
    model_io.write_text_atomic(state.staging / "report.md", run_markdown(result, state.settings.preset))


STAGES: tuple[tuple[str, Callable[[RunState], None]], ...] = (
    ("exporting", export_stage),
    ("optimizing and validating", optimize_stage),
    ("quantizing and validating", quantize_stage),
    ("converting precision and validating", precision_stage),
    ("benchmarking", bench_stage),
    ("scoring the test set", accuracy_stage),
    ("judging the models' speed", speed_stage),
    ("writing the report", report_stage),
)


def run(*, zoo: str | None = None, module: str | None = None, out: str | os.PathLike,
        settings: RunSettings | None = None, progress=None, stage: Callable[[str], None] | None = None) -> RunResult:
    """Export a zoo model (or a --module factory), run STAGES, and move the files into `out`.

    Every option is checked before the export starts. `stage(description)` is told when each
    stage begins; `progress(done, total)` counts timed benchmark runs.
    """
    from graphopt import export

    settings = settings or RunSettings()
    _check(zoo, module, settings)
    folder = Path(out)
    check_output_folder(folder)
    bench_report.pyplot()  # the report's plot needs matplotlib: say so before the export
    stage = stage or (lambda description: None)
    stage("building the model")
    spec = export.zoo_entry(zoo).build() if zoo else export.load_factory(module)
    _check_shapes(spec, settings)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".graphopt-run-", dir=folder))
    try:
        state = RunState(zoo or Path(module.rpartition(":")[0]).stem, spec, staging, settings, progress)
        for description, step in STAGES:
            stage(description)
            step(state)
        return _result(state, folder, _move_into(staging, folder))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if created and not any(folder.iterdir()):
            folder.rmdir()  # a failed run leaves no empty folder behind


def _check_shapes(spec, settings: RunSettings) -> None:
    """--shape and --bench-shape name inputs the model has, at its ranks (before the export)."""
    names = list(spec.input_names or ())
    ranks = {name: len(getattr(example, "shape", ())) for name, example in zip(names, spec.example_inputs)}
    for flag, shapes in (("--shape", settings.shapes), ("--bench-shape", settings.bench_shapes)):
        for name, shape in (shapes or {}).items():
            if names and name not in ranks:
                raise InputError(f"{flag} names unknown input {name!r} (inputs: {', '.join(names)})")
            if name in ranks and len(shape) != ranks[name]:
                raise InputError(f"{flag} {name}={'x'.join(map(str, shape))}: rank {len(shape)}, but the model's "
                                 f"{name} has rank {ranks[name]}")


def _check(zoo: str | None, module: str | None, settings: RunSettings) -> None:
    if (zoo is None) == (module is None):
        raise InputError("give exactly one of --zoo NAME and --module path/to/file.py:factory")
    resolve_spec(settings.preset)
    if settings.quantize is not None and settings.quantize not in MODES:
        raise InputError(f"--quantize {settings.quantize!r}: choose from {', '.join(MODES)}")
    if settings.precision is not None and settings.precision not in FORMATS:
        raise InputError(f"--precision {settings.precision!r}: choose from {', '.join(FORMATS)}")
    if settings.target not in TARGETS:
        raise InputError(f"unknown target {settings.target!r} (choose from {', '.join(TARGETS)})")
    if settings.runs < 1 or settings.warmup < 0:
        raise InputError("--runs must be >= 1 and --warmup >= 0")
    settings.runtime.for_bench()  # the session settings are checked here, before any work


def _move_into(staging: Path, folder: Path) -> list[Path]:
    moved = []
    for staged in sorted(staging.iterdir()):
        target = folder / staged.name
        try:
            if staged.is_dir():
                model_io.replace_folder(staged, target)
            else:
                os.replace(staged, target)
        except OSError as error:
            raise write_error(target, error) from None
        moved.append(target)
    return moved


def _result(state: RunState, folder: Path, files: list[Path]) -> RunResult:
    if state.export is not None:
        state.export.path = folder / state.exported_path.name
    for done in (state.optimize, state.quantized, state.converted):
        if done is not None and files:
            done.written = [folder / path.name for path in done.written if (folder / path.name) in files]
    return RunResult(state.name, folder, state.export, state.optimize, state.validation, state.bench,
                     state.accuracy, files, state.quantized, state.refusal, state.speed_refusal, state.converted,
                     state.precision_refusal)


def _accuracy(model_path: Path, dataset: Path, runtime: api.RuntimeOptions) -> float | None:
    """Top-1 accuracy on a dataset with a `labels` array (the digits test set)."""
    with np.load(dataset) as arrays:
        data = {name: arrays[name] for name in arrays.files}
    labels = data.pop("labels", None)
    if labels is None:
        return None
    session = create_session(model_path, runtime.for_bench(), label=model_path.name)
    logits = session.run({value.name: data[value.name] for value in session.inner.get_inputs()})[0]
    return float(np.mean(np.argmax(logits, axis=-1) == labels))


def _lossy_dict(result: LossyResult | None) -> dict[str, Any] | None:
    if result is None:
        return None
    return {**result.to_dict(), "validation": result.validation.to_dict() if result.validation else None}


def _report_dict(result: RunResult) -> dict[str, Any]:
    return {
        "model": result.name,
        "export": result.export.to_dict(),
        "passes": result.optimize.report.to_dict() if result.optimize else None,
        "warnings": result.optimize.warnings if result.optimize else [],
        "validation": result.validation.to_dict() if result.validation else None,
        "bench": result.bench.to_dict() if result.bench else None,
        "accuracy": result.accuracy,
        "quantization": _lossy_dict(result.quantized),
        "quantization_refused": result.quantize_refusal or None,
        "precision": _lossy_dict(result.converted),
        "precision_refused": result.precision_refusal or None,
        "optimized_refused": result.speed_refusal or None,
    }
