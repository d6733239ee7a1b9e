"""The one-command flow: export -> optimize -> validate -> bench -> report, into one folder.

Files in the output folder: model.onnx (the export, plus model.<dataset>.npz for zoo models
that ship data and model.calibration/ for the text models' calibration sentences),
model.<preset>.onnx (only when validation passes), with `quantize` also model.<mode>.onnx
(only when it validates at its mode's tolerance and beats the float model's latency; static int8
calibrates on graphopt.export.calibration_set), report.md, report.json and latency.png.
Everything is staged and moved into place at the end, so a failure leaves no half-written files.
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
from graphopt.errors import InputError, QuantizationRefused, ValidationFailed
from graphopt.outputs import check_output_folder, write_error
from graphopt.passes import TARGETS
from graphopt.pipeline import resolve_spec
from graphopt.runtime import bench_report
from graphopt.runtime.bench import BenchResult
from graphopt.runtime.compare import Tolerance, tolerance as make_tolerance
from graphopt.runtime.providers import create_session


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
    quantized: api.QuantizeResult | None = None
    quantize_refusal: str = ""

    @property
    def passed(self) -> bool:
        return self.validation is not None and self.validation.passed and not self.quantize_refusal


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


def run(
    *,
    zoo: str | None = None,
    module: str | None = None,
    out: str | os.PathLike,
    preset: str = "O1",
    target: str = "portable",
    tolerance: str | Tolerance = "fp32",
    exporter: str = "dynamo",
    opset: int | None = None,
    shapes: dict[str, tuple[int, ...]] | None = None,
    bench_shapes: dict[str, tuple[int, ...]] | None = None,
    runs: int = 100,
    warmup: int = 10,
    runtime: api.RuntimeOptions | None = None,
    progress=None,
    stage: Callable[[str], None] | None = None,
    quantize: str | None = None,
) -> RunResult:
    """Export a zoo model (or a --module factory), optimize, validate, bench, and write a report.

    `shapes` fix inputs for validation and the benchmark; `bench_shapes`, when given, replace
    them for the benchmark (e.g. a deployment's 1x128 while validation covers two shapes). Every option is
    checked before the export starts. `stage(description)` is told when each step begins;
    `progress(done, total)` counts timed benchmark runs. `quantize` ("dynamic", "weight-only" or
    "static") also quantizes the export after the preset's passes (graphopt.quantize, its latency guard
    included; the most sensitive layers stay float until its mode's tolerance's cosine is met;
    static calibrates on export.calibration_set) and benchmarks it beside the other two.
    """
    from graphopt import export

    if (zoo is None) == (module is None):
        raise InputError("give exactly one of --zoo NAME and --module path/to/file.py:factory")
    resolve_spec(preset)
    if quantize is not None and quantize not in api.QUANTIZE_MODES:
        raise InputError(f"--quantize {quantize!r}: choose from {', '.join(api.QUANTIZE_MODES)}")
    if target not in TARGETS:
        raise InputError(f"unknown target {target!r} (choose from {', '.join(TARGETS)})")
    tol = tolerance if isinstance(tolerance, Tolerance) else make_tolerance(tolerance)
    if runs < 1 or warmup < 0:
        raise InputError("--runs must be >= 1 and --warmup >= 0")
    runtime = runtime or api.RuntimeOptions()
    runtime.for_bench()  # the settings are checked here, before any work
    folder = Path(out)
    check_output_folder(folder)
    bench_report.pyplot()  # the report's plot needs matplotlib: say so before the export
    stage = stage or (lambda description: None)
    name = zoo or Path(module.rpartition(":")[0]).stem
    stage("building the model")
    spec = export.zoo_entry(zoo).build() if zoo else export.load_factory(module)
    _check_shape_names({**(shapes or {}), **(bench_shapes or {})}, spec.input_names)
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".graphopt-run-", dir=folder))
    try:
        return _run_staged(name, spec, folder, staging, preset, target, tol, exporter, opset,
                           shapes, bench_shapes or shapes, runs, warmup, runtime, progress, stage, quantize)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _check_shape_names(shapes: dict[str, tuple[int, ...]], input_names: list[str]) -> None:
    unknown = sorted(set(shapes) - set(input_names)) if input_names else []
    if unknown:
        raise InputError(f"--shape names unknown input {unknown[0]!r} (inputs: {', '.join(input_names)})")


def _run_staged(name, spec, folder, staging, preset, target, tolerance, exporter, opset, shapes, bench_shapes,
                runs, warmup, runtime, progress, stage, quantize) -> RunResult:
    from graphopt import export

    stage("exporting")
    exported_path = staging / "model.onnx"
    exported = export.export_spec(spec, exported_path, exporter=exporter, opset=opset)
    optimized_path = staging / f"model.{preset}.onnx"
    stage(f"optimizing ({preset}) and validating")
    try:
        optimized = api.optimize(exported_path, optimized_path, preset=preset, target=target,
                                 validate=True, shapes=shapes, tolerance=tolerance, runtime=runtime)
        validation = optimized.validation
    except ValidationFailed as failure:
        optimized, validation = None, failure.result
    quantized, refusal = None, ""
    quantized_path = staging / f"model.{quantize}.onnx"
    timed = [("exported", exported_path), (preset, optimized_path)]
    if optimized is not None and quantize is not None:
        stage(f"quantizing ({quantize}) and validating")
        calibration = export.calibration_set(spec, exported_path, shapes) if quantize == "static" else None
        try:
            # the speed is judged on the benchmark below (one timing, and a slower model's test
            # accuracy is still reported); the kernel guard stays the quantizer's
            quantized = api.quantize(exported_path, quantized_path, mode=quantize, preset=preset, target=target,
                                     shapes=shapes, runtime=runtime, calibration=calibration, check_speed=False,
                                     min_cosine=make_tolerance(api.MODE_TOLERANCES[quantize]).min_cosine)
            timed.append((quantize, quantized_path))
        except (ValidationFailed, QuantizationRefused) as failure:
            refusal = str(failure)
    timing = None
    accuracy: dict[str, float] = {}
    if optimized is not None:
        stage("benchmarking")
        timing = api.bench([path for _, path in timed], shapes=bench_shapes, warmup=warmup, runs=runs,
                           runtime=runtime, progress=progress, labels=[path.name for _, path in timed])
        bench_report.plot(timing, staging / "latency.png")
        test_set = export.dataset_paths(exported_path, spec.datasets).get("test")
        if test_set is not None:
            for label, path in timed:
                value = _accuracy(path, test_set, runtime)
                if value is not None:
                    accuracy[label] = value
        if quantized is not None:
            refusal = _speed_refusal(timing, quantized_path)
    if refusal and quantized_path.exists():
        quantized_path.unlink()  # a slower model is reported, not written
    result = RunResult(name, folder, exported, optimized, validation, timing, accuracy, [], quantized, refusal)
    exported.path = folder / exported_path.name
    model_io.write_text_atomic(staging / "report.json", json.dumps(_report_dict(result, preset), indent=2) + "\n")
    model_io.write_text_atomic(staging / "report.md", _report_markdown(result, preset))
    for staged in sorted(staging.iterdir()):
        target_path = folder / staged.name
        try:
            if staged.is_dir():
                model_io.replace_folder(staged, target_path)
            else:
                os.replace(staged, target_path)
        except OSError as error:
            raise write_error(target_path, error) from None
        result.files.append(target_path)
    for done in (optimized, quantized):
        if done is not None:
            done.written = [folder / path.name for path in done.written if (folder / path.name) in result.files]
    return result


def _speed_refusal(timing: BenchResult, quantized_path: Path) -> str:
    """Why the quantized model is not written when the benchmark timed it slower than the float
    preset's (the model it was quantized from), else ""."""
    by_name = {model.model: model for model in timing.models}
    float_model, quantized = timing.models[1], by_name[quantized_path.name]
    if quantized.p50_ms <= float_model.p50_ms:
        return ""
    return (f"the quantized model is slower than the float one: {float_model.model} p50 {float_model.p50_ms:.3f} ms, "
            f"{quantized.model} p50 {quantized.p50_ms:.3f} ms ({float_model.p50_ms / quantized.p50_ms:.2f}x)")


def _quantization_dict(quantized: api.QuantizeResult | None) -> dict[str, Any] | None:
    """The quantizer's summary with its own validation against the export (the report's top-level
    validation is the float preset's)."""
    if quantized is None:
        return None
    validation = quantized.validation.to_dict() if quantized.validation else None
    return {**quantized.to_dict(), "validation": validation}


def _report_dict(result: RunResult, preset: str) -> dict[str, Any]:
    return {
        "model": result.name,
        "export": result.export.to_dict(),
        "preset": preset,
        "passes": result.optimize.report.to_dict() if result.optimize else None,
        "warnings": result.optimize.warnings if result.optimize else [],
        "validation": result.validation.to_dict() if result.validation else None,
        "bench": result.bench.to_dict() if result.bench else None,
        "accuracy": result.accuracy,
        "quantization": _quantization_dict(result.quantized),
        "quantization_refused": result.quantize_refusal or None,
    }


def _report_markdown(result: RunResult, preset: str) -> str:
    export = result.export
    lines = [f"# graphopt run: {result.name}", ""]
    lines.append(f"Exported with the {export.exporter} exporter at opset {export.opset}; "
                 f"parity with torch: max abs error {export.max_abs_error:.3g} over "
                 f"{len(export.parity)} input shape set(s).")
    lines.extend(f"- note: {note}" for note in export.notes)
    lines.append("")
    if result.optimize is not None:
        report = result.optimize.report
        lines.append(f"## Passes ({preset}, target {report.target}, {report.iterations} iteration(s), "
                     f"{report.seconds * 1000:.0f} ms)")
        lines.append("")
        lines.append("| iter | pass | nodes | initializers | parameter bytes | ms | changed |")
        lines.append("|---:|---|---|---|---|---:|---|")
        for entry in report.passes:
            changed = "; ".join(entry.changes) or ("yes" if entry.modified else "")
            lines.append(f"| {entry.iteration} | {entry.name} | {entry.nodes_before} → {entry.nodes_after} | "
                         f"{entry.initializers_before} → {entry.initializers_after} | "
                         f"{entry.parameter_bytes_before:,} → {entry.parameter_bytes_after:,} | "
                         f"{entry.seconds * 1000:.1f} | {changed} |")
        skipped = [f"{e.name}: {reason}" for e in report.passes for reason in e.skipped]
        lines.extend(f"- skipped {reason}" for reason in dict.fromkeys(skipped))
        lines.extend(f"- warning: {warning}" for warning in result.optimize.warnings)
        lines.append("")
    lines.append("## Validation")
    lines.append("")
    validation = result.validation
    lines.append(f"**{validation.summary()}**" if validation else "not run")
    if validation is not None:
        lines.append("")
        lines.append("| input shapes | output | max abs | max rel | cosine | mismatch | top-1 | verdict |")
        lines.append("|---|---|---:|---:|---:|---:|---:|---|")
        for run in validation.input_sets:
            shapes = "; ".join(f"{k} {v}" for k, v in run.shapes.items())
            for output in run.outputs:
                top1 = "-" if output.top1_agreement is None else f"{output.top1_agreement:.1%}"
                lines.append(f"| {shapes} | {output.name} | {output.max_abs_error:.3g} | "
                             f"{output.max_rel_error:.3g} | {output.cosine:.6f} | "
                             f"{output.mismatch_fraction:.2%} | {top1} | "
                             f"{'ok' if output.passed else 'FAIL ' + output.reason} |")
        if validation.divergence is not None:
            lines.append("")
            lines.append(validation.divergence.describe())
    lines.append("")
    if result.quantized is not None or result.quantize_refusal:
        lines.append("## Quantization")
        lines.append("")
        if result.quantized is not None:
            quantized = result.quantized
            lines.extend(f"- {line}" for line in quantized.summary_lines())
            lines.append(f"- validation against the export: **{quantized.validation.summary()}**")
            cosines = [output.cosine for run in quantized.validation.input_sets for output in run.outputs]
            lines.append(f"- worst output cosine {min(cosines):.4f}")
        if result.quantize_refusal:
            lines.append(f"**not written: {result.quantize_refusal}**")
        lines.append("")
    if result.bench is not None:
        models = result.bench.models
        names = " vs ".join(model.model for model in models)
        lines.append(f"## Latency ({names})")
        lines.append("")
        p50s = " → ".join(f"{model.p50_ms:.3f} ms" for model in models)
        ratios = ", ".join(f"{model.model} {ratio:.2f}x" for model, ratio in zip(models[1:], result.bench.ratios()[1:]))
        lines.append(f"p50 {p50s} at {result.bench.cases[0].shapes_text()}: median time per run against the "
                     f"exported model's: {ratios} (below 1.00x is faster). All ran in this process in turns, "
                     "each alone on the machine while timed, with the session settings below.")
        lines.append("")
        lines.append(result.bench.to_markdown())
        lines.append("![latency](latency.png)")
        lines.append("")
    if result.accuracy:
        lines.append("## Accuracy on the held-out test set")
        lines.append("")
        lines.extend(f"- {label}: {value:.2%}" for label, value in result.accuracy.items())
        lines.append("")
    return "\n".join(lines)
