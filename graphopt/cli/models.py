"""The commands about models: `export`, `zoo`, `run` (the whole flow), `inspect` and `passes`."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from graphopt import api, render
from graphopt import model as model_io
from graphopt.cli import console, flags
from graphopt.cli.app import app
from graphopt.errors import GraphoptError
from graphopt.outputs import check_output_file
from graphopt.passes import TARGETS
from graphopt.passes.precision import FORMATS
from graphopt.pipeline import PRESET_SUMMARIES
from graphopt.quantization import MODES
from graphopt.runtime import bench_report
from graphopt.runtime.compare import Tolerance
from graphopt.runtime.inputs import parse_shapes
from graphopt.runtime.options import RuntimeOptions
from graphopt.units import human_bytes, time_ratio_text


def _export_module():
    try:
        from graphopt import export
    except ImportError as error:
        raise GraphoptError(f"exporting needs torch: pip install 'graphopt[export]' ({error})") from None
    return export


@app.command("export")
@flags.model_source
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="The .onnx to write.")
@click.option("--no-fallback", is_flag=True, help="Fail instead of trying the other exporter.")
@click.option("--no-parity", is_flag=True, help="Skip the torch vs ONNX Runtime comparison.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def export_command(zoo, module_spec, exporter, opset, output: Path, no_fallback: bool, no_parity: bool,
                   as_json: bool) -> None:
    """Export a zoo model or your torch module to ONNX and check parity with torch."""
    export = _export_module()
    if (zoo is None) == (module_spec is None):
        raise GraphoptError("give exactly one of --zoo NAME and --module path/to/file.py:factory")
    check_output_file(output, "-o", new_folders=False)
    spec = export.zoo_entry(zoo).build() if zoo else export.load_factory(module_spec)
    result = export.export_spec(spec, output, exporter=exporter, opset=opset, fallback=not no_fallback,
                                parity=not no_parity)
    if as_json:
        console.out.print_json(json.dumps(result.to_dict()))
        return
    for note in result.notes:
        console.out.print(f"note: {note}")
    console.out.print(f"exported {output} with the {result.exporter} exporter, opset {result.opset}; "
              f"inputs {result.input_names}, outputs {result.output_names}")
    for check in result.parity:
        shapes = ", ".join(f"{name} {shape}" for name, shape in check.shapes.items())
        console.out.print(f"  parity at {shapes}: max abs error {check.max_abs_error:.3g}")
    for data in export.written_data(output, spec):
        console.out.print(f"  wrote {data}" + ("/ (calibration input sets for --calib)" if data.is_dir() else ""))


@app.command("zoo")
def zoo_command() -> None:
    """List the built-in models (nothing is downloaded: weights ship in packages or are random)."""
    from graphopt.export.zoo import ZOO

    table = Table(title="model zoo")
    for column in ("name", "weights", "what it is"):
        table.add_column(column)
    for entry in ZOO.values():
        table.add_row(entry.name, entry.weights, entry.summary)
    console.out.print(table)


@app.command("run")
@flags.model_source
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True, help="Output folder.")
@click.option("--preset", default="O1", show_default=True,
              help="The float passes (O0-O3; `graphopt passes` lists them); the optimized model is "
                   "model.<preset>.onnx.")
@click.option("--target", type=click.Choice(TARGETS), default="portable", show_default=True, help=flags.TARGET_HELP)
@flags.tolerance
@click.option("--runs", type=int, default=100, show_default=True, help="Timed benchmark runs per model.")
@click.option("--warmup", type=int, default=10, show_default=True, help="Untimed benchmark runs per model first.")
@click.option("--shape", "shape", multiple=True, metavar="NAME=1x128",
              help="Input shape for validation and the benchmark (repeatable).")
@click.option("--bench-shape", "bench_shape", multiple=True, metavar="NAME=1x128",
              help="Input shape for the benchmark instead of --shape (repeatable), e.g. a deployment's.")
@click.option("--quantize", type=click.Choice(MODES),
              help="Also quantize (after the preset's passes), validate at the mode's tolerance, check the speed, "
                   "bench it; static calibrates on the zoo model's calibration set (text: real sentences; "
                   "random-weight models: 16 seeded random inputs).")
@click.option("--precision", type=click.Choice(sorted(FORMATS)),
              help="Also convert to float16 or bfloat16 (after the preset's passes; value ranges measured on the "
                   "calibration set, as --quantize static), validate at the format's tolerance, check the speed, "
                   "bench it. On the CPU EP the weights are what halve: it has no half MatMul/Conv kernels.")
@click.option("--check-speed/--no-check-speed", default=True, show_default=True,
              help="Refuse to write the preset's model when the benchmark finds it slower than the export by more "
                   "than 3% and the median of 5 more timings agrees (exit 1).")
@click.option("-q", "--quiet", is_flag=True, help="Print only errors and the one-line result.")
@flags.runtime
def run_command(zoo, module_spec, exporter, opset, out_dir: Path, preset: str, target: str, tolerance: Tolerance,
                runs: int, warmup: int, shape, bench_shape, quantize: str | None, precision: str | None, check_speed: bool,
                quiet: bool, runtime: RuntimeOptions) -> None:
    """Export, optimize, validate and benchmark in one go (quantize or convert precision too); write
    report.md/json and latency.png."""
    _export_module()
    from graphopt import flow

    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                  console=console.err, transient=True, auto_refresh=False, disable=not console.err.is_terminal) as progress:
        task = progress.add_task("starting", total=None)

        def stage(description: str) -> None:
            progress.update(task, description=description)
            progress.refresh()

        def report(done: int, total: int | None) -> None:
            progress.update(task, completed=done, total=total)
            progress.refresh()

        settings = flow.RunSettings(preset, target, tolerance, exporter, opset, parse_shapes(shape),
                                    parse_shapes(bench_shape), runs, warmup, runtime, quantize, check_speed,
                                    precision)
        result = flow.run(zoo=zoo, module=module_spec, out=out_dir, settings=settings, progress=report, stage=stage)
    if not quiet:
        _print_run(result)
    for what, refusal in (("optimized", result.speed_refusal), ("quantized", result.quantize_refusal),
                          (precision, result.precision_refusal)):
        if refusal:
            console.err.print(f"graphopt: the {what} model was not written: {refusal}", soft_wrap=True)
    console.out.print(_run_line(result), soft_wrap=True)
    if not result.passed:
        raise click.exceptions.Exit(1)


def _print_run(result) -> None:
    export = result.export
    console.out.print(Text.assemble((result.name, "bold"), f": exported with {export.exporter} (opset {export.opset}), "
                            f"parity max abs error {export.max_abs_error:.3g}"))
    if result.optimize is not None:
        console.warnings(result.optimize.warnings)
        console.table(render.passes_table(result.optimize.report))
    if result.validation is not None:
        console.validation(result.validation)
    for _, done, _ in result.lossy():
        if done is not None:
            console.lines(render.lossy_lines(done))
    if result.bench is not None:
        models = result.bench.models
        p50s = " → ".join(f"{model.p50_ms:.3f} ms" for model in models)
        console.out.print(f"latency p50 {p50s} at {result.bench.cases[0].shapes_text()}", soft_wrap=True)
        for line in bench_report.settings_lines(result.bench.metadata)[:3]:
            console.out.print(f"  {line}", soft_wrap=True)
    for label, value in result.accuracy.items():
        console.out.print(f"test accuracy ({label}): {value:.2%}")


def _run_line(result) -> str:
    """The one line `run -q` keeps: the verdict, each model's speed against the export, the files."""
    verdict = "PASS" if result.passed else "FAIL"
    parts = [f"{result.name}: {verdict}"]
    if result.bench is not None:
        models = result.bench.models
        parts.append("against the export: " + ", ".join(
            f"{model.model} {time_ratio_text(ratio)}" for model, ratio in zip(models[1:], result.bench.ratios()[1:])))
    return "; ".join(parts) + f"; wrote {len(result.files)} file(s) to {result.folder}"


@app.command("passes")
def list_passes() -> None:
    """List the registered passes and the presets."""
    table = Table(title="passes")
    for column in ("name", "what it does", "opset", "targets", "options"):
        table.add_column(column)
    for info in api.list_passes():
        options = ", ".join(f"{key}={value}" for key, value in info.options.items())
        targets = " ".join(info.targets) + (" (emits per target)" if info.target_aware else "")
        table.add_row(info.name, info.summary, f">= {info.min_opset}", targets, options)
    console.out.print(table)
    presets = Table(title="presets")
    presets.add_column("preset")
    presets.add_column("what it runs")
    for name, summary in PRESET_SUMMARIES.items():
        presets.add_row(name, summary)
    console.out.print(presets)


@app.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
def inspect(model: Path, as_json: bool) -> None:
    """Show opsets, IR version, signature, op histogram, parameters by dtype and file size."""
    info = model_io.inspect(model)
    if as_json:
        console.out.print_json(json.dumps(info.to_dict()))
        return
    opsets = ", ".join(f"{domain or 'ai.onnx'} {version}" for domain, version in info.opsets.items())
    console.out.print(Text.assemble((str(info.path), "bold"), f"  {human_bytes(info.file_bytes)}"
                            f"{' (+ external data)' if info.external_data else ''}"))
    console.out.print(f"IR version {info.ir_version}; opsets: {opsets}; producer: {info.producer or '-'}")
    console.out.print(f"{info.nodes} nodes, {info.initializers} initializers, {info.parameters:,} parameters "
              f"({human_bytes(info.parameter_bytes)})")
    signature = Table(title="signature")
    for column in ("", "name", "dtype", "shape"):
        signature.add_column(column)
    for kind, tensors in (("input", info.inputs), ("output", info.outputs)):
        for tensor in tensors:
            shape = "?" if tensor.shape is None else "[" + ", ".join(
                "?" if dim is None else str(dim) for dim in tensor.shape) + "]"
            signature.add_row(kind, tensor.name, tensor.dtype, shape)
    console.out.print(signature)
    ops = Table(title="ops")
    ops.add_column("op")
    ops.add_column("count", justify="right")
    for op, count in info.op_counts.items():
        ops.add_row(op, str(count))
    console.out.print(ops)
    dtypes = Table(title="parameters by dtype")
    for column in ("dtype", "tensors", "parameters", "bytes"):
        dtypes.add_column(column, justify="left" if column == "dtype" else "right")
    for dtype, entry in info.parameters_by_dtype.items():
        dtypes.add_row(dtype, str(entry["tensors"]), f"{entry['parameters']:,}", human_bytes(entry["bytes"]))
    console.out.print(dtypes)
