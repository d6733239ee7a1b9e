"""`graphopt optimize`, `quantize` and `compress`: passes over a model, then the report and the write."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import click
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from graphopt import api, render
from graphopt import model as model_io
from graphopt.cli import console, flags
from graphopt.cli.app import app
from graphopt.errors import ValidationFailed
from graphopt.compression import CompressSettings
from graphopt.lossy import Budget, LossyResult
from graphopt.outputs import check_output_differs, check_output_file
from graphopt.passes import TARGETS
from graphopt.quantization import QuantizeSettings, mode_tolerance
from graphopt.runtime.inputs import parse_ranges, parse_shapes
from graphopt.units import human_bytes

VERBOSE_HELP = "A validation row per input set (default: the worst case per output when there are more than three)."


def _output_options(command):
    return flags.apply(command, [
        click.argument("model", type=click.Path(path_type=Path)),
        click.argument("output_arg", metavar="[OUTPUT]", required=False, type=click.Path(path_type=Path)),
        click.option("-o", "--output", type=click.Path(path_type=Path),
                     help="Where to write the result (or give it as the second argument)."),
    ])


@app.command()
@_output_options
@click.option("--preset", help="O0, O1, O2, O3 (default O1), int8-dynamic, int4-weight-only or int8-static "
                                "(with --calib); `graphopt passes` lists them.")
@click.option("--target", type=click.Choice(TARGETS), default="portable", show_default=True, help=flags.TARGET_HELP)
@click.option("--passes", help="Comma-separated pass names (name:key=value for options), run once in order.")
@click.option("--recipe", type=click.Path(path_type=Path), help="TOML or YAML recipe file.")
@click.option("--opset", type=int, help="Convert to this ONNX opset before the passes.")
@click.option("--fixed-point/--once", default=None,
              help="Repeat the passes until nothing changes (presets do by default).")
@click.option("--max-iterations", type=int, help="Cap on fixed-point iterations.")
@click.option("--external-data/--no-external-data", default=None,
              help="Tensors in OUTPUT.data (default: as the input, or when over 2 GB).")
@click.option("--report", type=click.Path(path_type=Path), help="Write the per-pass report as JSON.")
@click.option("--fix-shape", "fix_shape", multiple=True, metavar="NAME=1x128",
              help="Make an input's shape static (repeatable); dims sharing its symbols follow, "
                   "and the shape arithmetic folds away.")
@click.option("--keep-metadata", is_flag=True,
              help="Keep the exporter's debug info (stack traces, FX metadata) that O2/O3 strip.")
@click.option("--validate", is_flag=True,
              help="Compare with the input in ONNX Runtime; refuse to write a model that differs.")
@click.option("--validate-each", is_flag=True,
              help="Compare after every pass that changed the model; name the first that broke it.")
@click.option("--check-speed/--no-check-speed", default=None,
              help="Time the input against the result on the EP and refuse a slower one (exit 1; --force writes "
                   "it); float passes' results are refused when slower by more than 3% in the median of 5 more "
                   "timings. Default: on for a lossy pass with --validate (the float passes' output against it), "
                   "off for float passes.")
@click.option("--force", is_flag=True, help="Write the model even when validation or a guard fails (exit 1).")
@click.option("--calib", type=click.Path(path_type=Path),
              help="Calibration data for the statistics of a lossy pass (the int8-static preset needs it): an .npz "
                   "(samples along each input's batch axis) or a folder of .npz; a budget is then judged on a "
                   "held-out part of it (a quarter up to 8 samples, an eighth beyond).")
@flags.tolerance(cosine=False, default=None,
                 default_help="fp32, or the loosest a lossy pass declares (int8, int8-static, int4)")
@flags.declared(Budget)
@flags.inputs
@flags.runtime
@click.option("-q", "--quiet", is_flag=True, help="Print only errors and the one-line result.")
@click.option("-v", "--verbose", is_flag=True, help=VERBOSE_HELP)
def optimize(model: Path, output_arg: Path | None, output: Path | None, report: Path | None, quiet: bool,
             verbose: bool, calib: Path | None, shape, input_range, inputs_file, fix_shape, **kwargs) -> None:
    """Run a preset, a pass list or a recipe over MODEL and write the result atomically."""
    output = _output_path("optimize", model, output_arg, output, report)
    result = _with_progress(quiet, lambda observer: api.optimize(
        model, output, inputs=inputs_file, shapes=parse_shapes(shape), input_ranges=parse_ranges(input_range),
        fix_shapes=parse_shapes(fix_shape, "--fix-shape"), calibration=calib, observer=observer, **kwargs))
    _finish(result, output, report, quiet, verbose)


def _lossy_options(calib_help: str, opset_help: str, speed_help: str, tolerance: Callable) -> Callable:
    """The options graphopt quantize and compress share, after their own: the calibration data, the
    budget, the float passes and target, the checks, the report, the inputs and the runtime."""
    options = [
        click.option("--calib", type=click.Path(path_type=Path), help=calib_help),
        flags.declared(Budget),
        click.option("--preset", default="O3", show_default=True, help="The float passes to run first (O0 for none)."),
        click.option("--target", default="portable", show_default=True, type=click.Choice(TARGETS),
                     help=flags.TARGET_HELP),
        click.option("--opset", type=int, help=opset_help),
        click.option("--validate/--no-validate", default=True, show_default=True,
                     help="Compare with the input in ONNX Runtime; nothing is written if it fails."),
        click.option("--check-speed/--no-check-speed", default=True, show_default=True, help=speed_help),
        click.option("--force", is_flag=True, help="Write the model even when validation or a guard fails (exit 1)."),
        click.option("--external-data/--no-external-data", default=None,
                     help="Store weights in a side file (default: only when the model needs it)."),
        click.option("--report", type=click.Path(path_type=Path),
                     help="Write the report (passes, outcomes, checks) as JSON."),
        tolerance,
        flags.inputs,
        flags.runtime,
        click.option("-q", "--quiet", is_flag=True, help="Print only errors and the one-line result."),
        click.option("-v", "--verbose", is_flag=True, help=VERBOSE_HELP),
    ]

    def decorate(command: Callable) -> Callable:
        for option in reversed(options):  # listed in --help in this order
            command = option(command)
        return command
    return decorate


def _lossy(name: str, call: Callable, model: Path, output_arg: Path | None, output: Path | None, report: Path | None,
           quiet: bool, verbose: bool, calib: Path | None, shape, input_range, inputs_file, **kwargs) -> None:
    output = _output_path(name, model, output_arg, output, report)
    result = _with_progress(quiet, lambda observer: call(
        model, output, inputs=inputs_file, calibration=calib, shapes=parse_shapes(shape),
        input_ranges=parse_ranges(input_range), observer=observer, **kwargs))
    _finish(result, output, report, quiet, verbose)


@app.command()
@_output_options
@flags.declared(QuantizeSettings)
@_lossy_options(
    calib_help="Calibration data for the measured statistics (static needs it; mse, gptq, --outlier-ratio, --smooth "
               "use it): an .npz with the samples along each input's batch axis, or a folder of .npz (one input set "
               "each). A budget is judged on a held-out part of it (a quarter up to 8 samples, an eighth beyond). "
               "Default: the validation inputs.",
    opset_help="Convert to this opset first (portable int4 needs 21).",
    speed_help="Time float against quantized on the EP; a slower quantized model is not written.",
    tolerance=flags.tolerance(default=None, cosine=False, base=lambda kwargs: mode_tolerance(kwargs["mode"]),
                              default_help="the mode's: int8 for dynamic, int4 for weight-only, int8-static for static"))
def quantize(**kwargs) -> None:
    """Quantize MODEL after the preset's float passes, validate it at the mode's tolerance (or a budget),
    check it runs on the EP and is faster than float, and write it atomically."""
    _lossy("quantize", api.quantize, **kwargs)


@app.command()
@_output_options
@flags.declared(CompressSettings)
@_lossy_options(
    calib_help="Calibration data for the measured statistics (pruning's importance and refit, low-rank's whitening, "
               "weight sharing's error feedback, static int8's ranges): an .npz with the samples along each input's "
               "batch axis, or a folder of .npz. A budget is judged on a held-out part of it. Default: the "
               "validation inputs.",
    opset_help="Convert to this opset first.",
    speed_help="Time float against compressed on the EP; a slower result is not written.",
    tolerance=flags.tolerance(default=None, cosine=False, default_help="the loosest the stages declare (pruned, "
                                                                       "low-rank: cosine and top-1 agreement)"))
def compress(**kwargs) -> None:
    """Compress MODEL after the preset's float passes: prune channels, factor, share weights, zero,
    quantize (in that order, as asked), validate under one budget, guard and write atomically."""
    _lossy("compress", api.compress, **kwargs)


def _output_path(command: str, model: Path, output_arg: Path | None, output: Path | None,
                 report: Path | None) -> Path:
    """The output given once (argument or -o), checked with --report before any work."""
    if output is not None and output_arg is not None:
        raise click.UsageError(f"give the output once: graphopt {command} MODEL OUTPUT, or -o OUTPUT, not both")
    if output is None and output_arg is None:
        raise click.UsageError(f"no output given: graphopt {command} MODEL OUTPUT, or -o OUTPUT")
    output = output or output_arg
    check_output_differs(model, output)
    check_output_file(output, "output", new_folders=False)
    check_output_file(report, "--report", new_folders=False)
    return output


def _progress_observer(progress: Progress, task) -> api.PassObserver:
    """Pass by pass; its `calibration(done, total)` adds a bar over the statistics' runs over the data."""
    def observe(iteration: int, index: int, pass_) -> None:
        progress.update(task, description=f"iteration {iteration}: {pass_.name}", advance=1)

    calibration = []

    def calibrate(done: int, total: int) -> None:
        if not calibration:
            calibration.append(progress.add_task("measuring: model runs over the data", total=total or None))
        progress.update(calibration[0], completed=done)

    observe.calibration = calibrate
    return observe


def _with_progress(quiet: bool, call):
    """Run `call(observer)` under a transient progress bar; a failed validation's table is printed."""
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                  console=console.err, transient=True, disable=quiet or not console.err.is_terminal) as progress:
        task = progress.add_task("loading", total=None)
        try:
            return call(_progress_observer(progress, task))
        except ValidationFailed as failure:
            progress.stop()
            if failure.result is not None and not quiet:
                console.validation(failure.result)
            raise


def _finish(result: api.OptimizeResult | LossyResult, output: Path, report: Path | None, quiet: bool,
            verbose: bool = False) -> None:
    """The report file, the tables, the validation verdict and the one-line summary."""
    if report is not None:
        data = {**result.report.to_dict(), "warnings": result.warnings}
        if result.validation is not None:
            data["validation"] = result.validation.to_dict()
        if isinstance(result, LossyResult):
            data["lossy"] = result.to_dict()
        model_io.write_text_atomic(report, json.dumps(data, indent=2) + "\n")
    console.warnings(result.warnings)
    if not quiet:
        console.table(render.passes_table(result.report))
        console.lines([f"  {line}" for line in render.skip_lines(result.report)])
        if result.validation is not None:
            console.validation(result.validation, verbose=verbose)
        if isinstance(result, LossyResult):
            console.lines(render.lossy_lines(result))
        elif result.latency is not None:
            console.lines([f"latency: {result.latency.describe()}"])
    if result.validation is not None and not result.validation.passed:
        console.err.print("graphopt: validation failed; the model was written because of --force")
        raise click.exceptions.Exit(1)
    if result.latency is not None and result.latency.forced:
        console.err.print(f"graphopt: the {result.latency.label} model did not pass the latency guard "
                          f"({result.latency.describe()}); it was written because of --force", soft_wrap=True)
        raise click.exceptions.Exit(1)
    size = sum(path.stat().st_size for path in result.written)
    after = model_io.parameter_bytes(result.model)
    before = result.report.passes[0].parameter_bytes_before if result.report.passes else after
    parameters = human_bytes(after) if before == after else f"{human_bytes(before)} → {human_bytes(after)}"
    console.out.print(f"nodes {result.report.nodes_before} → {result.report.nodes_after}, parameters {parameters}, "
                      f"{result.report.seconds * 1000:.0f} ms; wrote {output} ({human_bytes(size)})", soft_wrap=True)
