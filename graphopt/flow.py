"""The one-command flow: export -> optimize -> validate -> bench -> report, into one folder.

Files in the output folder: model.onnx (the export, plus <name>.<dataset>.npz for zoo models
that ship data), model.<preset>.onnx (only when validation passes), report.md, report.json and
latency.png. Everything is staged and moved into place at the end, so a failure leaves
no half-written files.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from graphopt import api
from graphopt import model as model_io
from graphopt.errors import InputError, ValidationFailed
from graphopt.runtime import bench as bench_module
from graphopt.runtime.bench import BenchResult
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

    @property
    def passed(self) -> bool:
        return self.validation is not None and self.validation.passed


def _accuracy(model_path: Path, dataset: Path, runtime: api.RuntimeOptions) -> float | None:
    """Top-1 accuracy on a dataset with a `labels` array (the digits test set)."""
    with np.load(dataset) as arrays:
        data = {name: arrays[name] for name in arrays.files}
    labels = data.pop("labels", None)
    if labels is None:
        return None
    session = create_session(model_path, runtime.session_config())
    logits = session.run({value.name: data[value.name] for value in session.inner.get_inputs()})[0]
    return float(np.mean(np.argmax(logits, axis=-1) == labels))


def run(
    *,
    zoo: str | None = None,
    module: str | None = None,
    out: str | os.PathLike,
    preset: str = "O1",
    target: str = "portable",
    tolerance: str = "fp32",
    exporter: str = "dynamo",
    opset: int | None = None,
    shapes: dict[str, tuple[int, ...]] | None = None,
    runs: int = 100,
    warmup: int = 10,
    runtime: api.RuntimeOptions | None = None,
    progress=None,
) -> RunResult:
    """Export a zoo model (or a --module factory), optimize, validate, bench, and write a report."""
    from graphopt import export

    if (zoo is None) == (module is None):
        raise InputError("give exactly one of --zoo NAME and --module path/to/file.py:factory")
    runtime = runtime or api.RuntimeOptions()
    name = zoo or Path(module.rpartition(":")[0]).stem
    spec = export.zoo_entry(zoo).build() if zoo else export.load_factory(module)
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder}: exists and is not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".graphopt-run-", dir=folder))
    try:
        return _run_staged(name, spec, folder, staging, preset, target, tolerance, exporter, opset,
                           shapes, runs, warmup, runtime, progress)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _run_staged(name, spec, folder, staging, preset, target, tolerance, exporter, opset, shapes, runs,
                warmup, runtime, progress) -> RunResult:
    from graphopt import export

    exported_path = staging / "model.onnx"
    exported = export.export_spec(spec, exported_path, exporter=exporter, opset=opset)
    optimized_path = staging / f"model.{preset}.onnx"
    try:
        optimized = api.optimize(exported_path, optimized_path, preset=preset, target=target,
                                 validate=True, shapes=shapes, tolerance=tolerance, runtime=runtime)
        validation = optimized.validation
    except ValidationFailed as failure:
        optimized, validation = None, failure.result
    timing = None
    accuracy: dict[str, float] = {}
    if optimized is not None:
        timing = api.bench([exported_path, optimized_path], shapes=shapes, warmup=warmup, runs=runs,
                           runtime=runtime, progress=progress)
        for entry in timing.models:
            entry.model = Path(entry.model).name
        bench_module.plot(timing, staging / "latency.png")
        test_set = export.dataset_paths(exported_path, spec.datasets).get("test")
        if test_set is not None:
            for label, path in (("exported", exported_path), (preset, optimized_path)):
                value = _accuracy(path, test_set, runtime)
                if value is not None:
                    accuracy[label] = value
    result = RunResult(name, folder, exported, optimized, validation, timing, accuracy, [])
    model_io.write_text_atomic(staging / "report.json", json.dumps(_report_dict(result, preset), indent=2) + "\n")
    model_io.write_text_atomic(staging / "report.md", _report_markdown(result, preset))
    for staged in sorted(staging.iterdir()):
        target_path = folder / staged.name
        os.replace(staged, target_path)
        result.files.append(target_path)
    return result


def _report_dict(result: RunResult, preset: str) -> dict[str, Any]:
    return {
        "model": result.name,
        "export": result.export.to_dict(),
        "preset": preset,
        "passes": result.optimize.report.to_dict() if result.optimize else None,
        "validation": result.validation.to_dict() if result.validation else None,
        "bench": result.bench.to_dict() if result.bench else None,
        "accuracy": result.accuracy,
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
            lines.append(f"| {entry.iteration} | {entry.name} | {entry.nodes_before} → {entry.nodes_after} | "
                         f"{entry.initializers_before} → {entry.initializers_after} | "
                         f"{entry.parameter_bytes_before:,} → {entry.parameter_bytes_after:,} | "
                         f"{entry.seconds * 1000:.1f} | {'yes' if entry.modified else ''} |")
        skipped = [f"{e.name}: {reason}" for e in report.passes for reason in e.skipped]
        lines.extend(f"- skipped {reason}" for reason in dict.fromkeys(skipped))
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
    if result.bench is not None:
        lines.append("## Latency (exported vs optimized, interleaved)")
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
