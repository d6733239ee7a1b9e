"""The `graphopt` command: subcommands mirror the Python API; errors are one line and an exit code.

Exit codes: 0 ok, 1 validation failed (or a pass broke the model), 2 bad input or usage.
"""

from __future__ import annotations

import functools
import json
import logging
import shutil
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from graphopt import api
from graphopt import model as model_io
from graphopt.errors import GraphoptError, ValidationFailed
from graphopt.outputs import check_output_file
from graphopt.passes import TARGETS
from graphopt.passes.plugins import load_plugin
from graphopt.pipeline import PRESET_SUMMARIES, PipelineReport
from graphopt.runtime import baseline, bench_report
from graphopt.runtime.bench import BenchResult
from graphopt.runtime.compare import TOLERANCES, Tolerance, tolerance as make_tolerance
from graphopt.runtime.inputs import parse_ranges, parse_shapes, parse_sweep
from graphopt.runtime.providers import EP_CHOICES, EXECUTION_MODES, OPT_LEVELS, parse_key_values
from graphopt.runtime.validate import ValidationResult
from graphopt.units import human_bytes

_WIDE = 140
_TARGET_HELP = "portable: standard ONNX ops only (any runtime); ort: may use ONNX Runtime's com.microsoft ops."
# Markup is off: model, input, dim and pass names are user data ("[batch, seq]" is not a style).
out = Console(highlight=False, markup=False)
err = Console(stderr=True, highlight=False, markup=False)


def _bind_consoles() -> None:
    """Consoles follow the current stdout/stderr; logs and pipes get wide tables."""
    global out, err
    width = None if sys.stdout.isatty() else max(_WIDE, shutil.get_terminal_size().columns)
    out = Console(highlight=False, markup=False, width=width)
    err = Console(stderr=True, highlight=False, markup=False)


@click.group(help="Optimize ONNX models and prove they still compute the same thing.",
             context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="graphopt")
@click.option("--plugin", "plugin_specs", multiple=True, metavar="MODULE_OR_FILE",
              help="Import a module or a .py file that registers passes (repeatable).")
def app(plugin_specs: tuple[str, ...]) -> None:
    for spec in plugin_specs:
        load_plugin(spec)


def _change(before: int, after: int) -> str:
    if before == after:
        return f"{after}"
    return f"{before} → {after}"


def _bytes_change(before: int, after: int) -> str:
    delta = after - before
    return human_bytes(after) + (f" ({delta:+,} B)" if delta else "")


def _report_table(report: PipelineReport) -> Table:
    table = Table(title=f"passes (target {report.target}, {report.iterations} iteration(s))")
    for column in ("iter", "pass", "nodes", "initializers", "parameters", "ms", "changed", "notes"):
        table.add_column(column, justify="right" if column in ("iter", "ms") else "left")
    for entry in report.passes:
        notes = list(entry.changes) if entry.ran else entry.skipped[:1]
        if entry.ran and entry.skipped:
            notes.append(f"{len(entry.skipped)} skipped")
        table.add_row(
            str(entry.iteration),
            entry.name,
            _change(entry.nodes_before, entry.nodes_after),
            _change(entry.initializers_before, entry.initializers_after),
            _bytes_change(entry.parameter_bytes_before, entry.parameter_bytes_after),
            f"{entry.seconds * 1000:.1f}",
            "yes" if entry.modified else "",
            "; ".join(notes),
        )
    return table


def _print_skips(report: PipelineReport, limit: int = 8) -> None:
    reasons = list(dict.fromkeys(
        f"{entry.name}: {reason}" for entry in report.passes if entry.ran for reason in entry.skipped
    ))
    for reason in reasons[:limit]:
        out.print(f"  skipped {reason}")
    if len(reasons) > limit:
        out.print(f"  … and {len(reasons) - limit} more (see --report)")


def _progress_observer(progress: Progress, task) -> api.PassObserver:
    """Pass by pass; its `calibration(done, total)` adds a bar over static int8's calibration runs
    (one run per sample and chunk of values)."""
    def observe(iteration: int, index: int, pass_) -> None:
        progress.update(task, description=f"iteration {iteration}: {pass_.name}", advance=1)

    calibration = []

    def calibrate(done: int, total: int) -> None:
        if not calibration:
            calibration.append(progress.add_task("calibrating: model runs over the data", total=total or None))
        progress.update(calibration[0], completed=done)

    observe.calibration = calibrate
    return observe


_RUNTIME_FLAGS = ("ep", "device_id", "threads", "opt_level", "provider_option", "inter_op",
                  "execution_mode", "spinning", "session_config")


def _runtime_options(command):
    """The runtime flags, handed to the command as one `runtime=RuntimeOptions(...)`."""

    @functools.wraps(command)
    def with_runtime(*args, **kwargs):
        flags = {name: kwargs.pop(name) for name in _RUNTIME_FLAGS}
        kwargs["runtime"] = api.RuntimeOptions(
            flags["ep"], flags["device_id"], flags["threads"], flags["opt_level"],
            dict(parse_key_values(flags["provider_option"])), flags["inter_op"], flags["execution_mode"],
            flags["spinning"] == "on", dict(parse_key_values(flags["session_config"], "--session-config")))
        kwargs["runtime"].for_bench()  # check the combination now, before any work
        return command(*args, **kwargs)

    for option in reversed([
        click.option("--ep", type=click.Choice(EP_CHOICES), default="cpu", show_default=True,
                     help="Execution provider; auto = cuda when available, else cpu."),
        click.option("--device-id", type=int, default=0, show_default=True, help="GPU index."),
        click.option("--threads", type=int, help="Intra-op threads (ORT default: one per physical core)."),
        click.option("--inter-op", type=int, help="Inter-op threads (for --execution-mode parallel)."),
        click.option("--execution-mode", type=click.Choice(list(EXECUTION_MODES)), default="sequential",
                     show_default=True, help="Run independent nodes one at a time or in parallel."),
        click.option("--spinning", type=click.Choice(["on", "off"]), default="on", show_default=True,
                     help="Whether idle ONNX Runtime threads spin waiting for work (ORT's default: on)."),
        click.option("--opt-level", type=click.Choice(list(OPT_LEVELS)),
                     help="ONNX Runtime's own graph optimizations (default: disable when validating, "
                          "so the graphs are compared as written; all when benchmarking)."),
        click.option("--session-config", "session_config", multiple=True, metavar="KEY=VALUE",
                     help="Any ONNX Runtime session config entry (repeatable)."),
        click.option("--provider-option", "provider_option", multiple=True, metavar="KEY=VALUE",
                     help="GPU execution provider option (repeatable)."),
    ]):
        with_runtime = option(with_runtime)
    return with_runtime


def _tolerance_options(command=None, *, default: str | None = "fp32", cosine: bool = True,
                       default_help: str = "", base=lambda kwargs: "fp32"):
    """--tolerance and its overrides, handed to the command as one `tolerance=Tolerance(...)`, or None
    when neither is given and `default` is None: the command's own default (`default_help` says which).
    Overrides without --tolerance apply to `base(kwargs)`, the tolerance the command would pick.
    cosine=False leaves --min-cosine to the command (quantize: a budget the tolerance follows)."""
    if command is None:
        return functools.partial(_tolerance_options, default=default, cosine=cosine, default_help=default_help,
                                 base=base)

    @functools.wraps(command)
    def with_tolerance(*args, **kwargs):
        names = ("tolerance", "rtol", "atol", "max_mismatch") + (("min_cosine",) if cosine else ())
        flags = {name: kwargs.pop(name) for name in names}
        name = flags.pop("tolerance")
        overridden = any(value is not None for value in flags.values())
        kwargs["tolerance"] = None if name is None and not overridden else make_tolerance(name or base(kwargs), **flags)
        return command(*args, **kwargs)

    for option in reversed([
        click.option("--tolerance", type=click.Choice([*TOLERANCES, "custom"]), default=default,
                     show_default=default is not None,
                     help="fp32 tight; fp16 and int8 looser, judged by cosine and top-1 agreement; custom: fp32 "
                          "with the overrides below." + (f" Default: {default_help}." if default_help else "")),
        click.option("--rtol", type=float, help="Relative tolerance (custom, or override a preset)."),
        click.option("--atol", type=float, help="Absolute tolerance (custom, or override a preset)."),
        click.option("--max-mismatch", type=float, help="Allowed fraction of elements outside tolerance."),
        *([click.option("--min-cosine", type=float, help="Lowest acceptable cosine similarity.")] if cosine else []),
    ]):
        with_tolerance = option(with_tolerance)
    return with_tolerance


def _input_options(command):
    """--inputs, --shape, --input-range."""
    for option in reversed([
        click.option("--inputs", "inputs_file", type=click.Path(path_type=Path),
                     help=".npz with one array per input name (otherwise inputs are synthesized)."),
        click.option("--shape", "shape", multiple=True, metavar="NAME=1x128",
                     help="Shape of one input (repeatable); dynamic dims default to batch 2, sequence 16."),
        click.option("--input-range", "input_range", multiple=True, metavar="NAME=LO:HI",
                     help="Value range of one synthesized input (repeatable)."),
    ]):
        command = option(command)
    return command


def _fmt(value, spec: str = ".3g") -> str:
    return "-" if value is None else format(value, spec)


def _print_validation(result: ValidationResult) -> None:
    for index, run in enumerate(result.input_sets, start=1):
        shapes = ", ".join(f"{name} {shape}" for name, shape in run.shapes.items())
        table = Table(title=f"input set {index}: {shapes}")
        for column in ("output", "shape", "max abs", "max rel", "cosine", "mismatch", "top-1", "top-5", ""):
            table.add_column(column, justify="left" if column in ("output", "") else "right")
        for output in run.outputs:
            table.add_row(output.name, str(output.shape), _fmt(output.max_abs_error),
                          _fmt(output.max_rel_error), f"{output.cosine:.6f}",
                          f"{output.mismatch_fraction:.2%}", _fmt(output.top1_agreement, ".1%"),
                          _fmt(output.top5_agreement, ".1%"),
                          "ok" if output.passed else f"FAIL {output.reason}")
        out.print(table)
    out.print(result.summary())
    if result.divergence is not None:
        out.print(f"  {result.divergence.describe()}")
        out.print(f"  {result.divergence.inputs_summary()}")


def _print_warnings(warnings: list[str]) -> None:
    for warning in warnings:
        err.print(f"graphopt: warning: {warning}", soft_wrap=True)


@app.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("output_arg", metavar="[OUTPUT]", required=False, type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="Where to write the optimized model (or give it as the second argument).")
@click.option("--preset", help="O0, O1, O2, O3 (default O1), int8-dynamic, int4-weight-only or int8-static "
                                "(with --calib); `graphopt passes` lists them.")
@click.option("--target", type=click.Choice(TARGETS), default="portable", show_default=True, help=_TARGET_HELP)
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
@click.option("--check-speed/--no-check-speed", default=True, show_default=True,
              help="With --validate and a quantizing preset: time the input against the result on the EP; "
                   "a slower model is not written.")
@click.option("--force", is_flag=True, help="Write the model even when validation or the speed check fails (exit 1).")
@click.option("--calib", type=click.Path(path_type=Path),
              help="int8-static preset (quantize_static): calibration data, an .npz (samples along axis 0) or a "
                   "folder of .npz; validation then runs on a held-out eighth of it.")
@_tolerance_options(default=None, default_help="fp32, or the loosest a quantizing pass asks for (int8, int8-static, "
                                                "int4)")
@_input_options
@_runtime_options
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
def optimize(model: Path, output_arg: Path | None, output: Path | None, preset: str | None, target: str,
             passes: str | None, recipe: Path | None, opset: int | None, fixed_point: bool | None,
             max_iterations: int | None, external_data: bool | None, report: Path | None,
             fix_shape: tuple[str, ...], keep_metadata: bool,
             validate: bool, validate_each: bool, check_speed: bool, force: bool, calib: Path | None,
             tolerance: Tolerance, inputs_file: Path | None, shape: tuple[str, ...], input_range: tuple[str, ...],
             runtime: api.RuntimeOptions, quiet: bool) -> None:
    """Run a preset, a pass list or a recipe over MODEL and write the result atomically."""
    output = _output_path("optimize", model, output_arg, output, report)
    result = _with_progress(quiet, lambda observer: api.optimize(
        model, output, preset=preset, passes=passes, recipe=recipe, target=target, opset=opset,
        fixed_point=fixed_point, max_iterations=max_iterations, external_data=external_data,
        validate=validate, validate_each=validate_each, check_speed=check_speed, force=force,
        inputs=inputs_file, shapes=parse_shapes(shape), input_ranges=parse_ranges(input_range),
        tolerance=tolerance, runtime=runtime, observer=observer,
        fix_shapes=parse_shapes(fix_shape, "--fix-shape"), keep_metadata=keep_metadata, calibration=calib,
    ))
    _finish(result, output, report, quiet)


def _output_path(command: str, model: Path, output_arg: Path | None, output: Path | None,
                 report: Path | None) -> Path:
    """The output given once (argument or -o), checked with --report before any work."""
    if (output is None) == (output_arg is None):
        raise click.UsageError(f"give the output once: graphopt {command} MODEL OUTPUT, or -o OUTPUT")
    output = output or output_arg
    api.check_output_differs(model, output)
    check_output_file(output, "output")
    check_output_file(report, "--report")
    return output


def _with_progress(quiet: bool, call):
    """Run `call(observer)` under a transient progress bar; a failed validation's table is printed."""
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                  console=err, transient=True, disable=quiet or not err.is_terminal) as progress:
        task = progress.add_task("loading", total=None)
        try:
            return call(_progress_observer(progress, task))
        except ValidationFailed as failure:
            progress.stop()
            if failure.result is not None and not quiet:
                _print_validation(failure.result)
            raise


def _finish(result: api.OptimizeResult, output: Path, report: Path | None, quiet: bool) -> None:
    """The report file, the tables, the validation verdict and the one-line summary."""
    if report is not None:
        data = result.report.to_dict()
        data["warnings"] = result.warnings
        if result.validation is not None:
            data["validation"] = result.validation.to_dict()
        if isinstance(result, api.QuantizeResult):
            data["quantization"] = result.to_dict()
        elif result.latency is not None:
            data["latency"] = result.latency.to_dict()
        model_io.write_text_atomic(report, json.dumps(data, indent=2) + "\n")
    _print_warnings(result.warnings)
    if not quiet:
        out.print(_report_table(result.report))
        _print_skips(result.report)
        if result.validation is not None:
            _print_validation(result.validation)
        if isinstance(result, api.QuantizeResult):
            for line in result.summary_lines():
                out.print(line, highlight=False)
        elif result.latency is not None:
            out.print(f"latency: {result.latency.describe()}", highlight=False)
    if result.validation is not None and not result.validation.passed:
        err.print("graphopt: validation failed; the model was written because of --force")
        raise click.exceptions.Exit(1)
    if result.latency is not None and result.latency.slower:
        err.print(f"graphopt: the quantized model is slower than the float one ({result.latency.describe()}); "
                  "it was written because of --force", soft_wrap=True)
        raise click.exceptions.Exit(1)
    if quiet:
        return
    size = sum(path.stat().st_size for path in result.written)
    after = model_io.parameter_bytes(result.model)
    before = result.report.passes[0].parameter_bytes_before if result.report.passes else after
    parameters = human_bytes(after) if before == after else f"{human_bytes(before)} → {human_bytes(after)}"
    out.print(f"nodes {result.report.nodes_before} → {result.report.nodes_after}, parameters {parameters}, "
              f"{result.report.seconds * 1000:.0f} ms; wrote {output} ({human_bytes(size)})")


@app.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("output_arg", metavar="[OUTPUT]", required=False, type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Where to write the quantized model.")
@click.option("--mode", type=click.Choice(api.QUANTIZE_MODES), default="dynamic", show_default=True,
              help="dynamic: int8 weights, activations quantized at run time; weight-only: int4 weight blocks; "
                   "static: int8 activations at ranges calibrated on --calib (see --scheme).")
@click.option("--bits", type=int, help="Weight bits: 8 for dynamic (default), 4 for weight-only (default).")
@click.option("--block-size", type=int, default=32, show_default=True,
              help="weight-only: weights per scale, along the reduction axis (a power of two, at least 16).")
@click.option("--embedding-block-size", type=int, default=128, show_default=True,
              help="weight-only, --target ort: values per scale along an int4 embedding table's rows "
                   "(a power of two, at least 16).")
@click.option("--algorithm", type=click.Choice(["rtn", "mse", "gptq"]), default="rtn", show_default=True,
              help="weight-only: rtn rounds to nearest; mse searches each block's clipping, weighing the "
                   "error by the activations; gptq moves each channel's rounding error onto the channels not "
                   "yet rounded (GPTQ, with the inputs' Gram matrix). Both measure on --calib when given.")
@click.option("--zero-points/--symmetric", default=None,
              help="weight-only: a zero point per int4 block, spanning its [min, max] (the default: about 40% "
                   "less error for +0.5 bit per 32 weights), or symmetric blocks; static: symmetric int8 "
                   "activations (with --activation-type s8).")
@click.option("--calibrator", type=click.Choice(["minmax", "percentile", "entropy"]), default="minmax",
              show_default=True, help="static: an activation's range from its histogram: min/max, the 99.999th "
                                      "percentiles, or the KL-optimal clipping (TensorRT's entropy method).")
@click.option("--activation-type", type=click.Choice(["u8", "s8"]), default="u8", show_default=True,
              help="static: uint8 activations with a zero point (what ONNX Runtime's CPU kernels fuse best) or int8.")
@click.option("--scheme", type=click.Choice(["auto", "qdq", "linear"]), default="auto", show_default=True,
              help="static: qdq puts Q/DQ pairs around every op with an int8 kernel (CNNs); linear quantizes only "
                   "the linear layers and attention projections, the rest float (transformers); auto takes linear "
                   "for a model with attention, qdq otherwise.")
@click.option("--bias-correction/--no-bias-correction", default=True, show_default=True,
              help="static qdq: take the mean error the int8 weights add (mean input times the weight error) "
                   "out of each Conv/Gemm bias.")
@click.option("--calib", type=click.Path(path_type=Path),
              help="Calibration data for the measured statistics (mse, gptq, --outlier-ratio, --smooth; static "
                   "needs it): an .npz with the samples along axis 0, or a folder of .npz (one input set each). "
                   "Default: the validation inputs.")
@click.option("--accuracy-level", type=click.IntRange(0, 4), default=0, show_default=True,
              help="weight-only --target ort: MatMulNBits' compute type; 0 float32, 4 int8 activations "
                   "(faster for one-row decoding, slower at 128 rows on CPU).")
@click.option("--outlier-ratio", type=float, default=0.0, show_default=True,
              help="int8: input channels peaking above this many times the median channel (e.g. 6) stay in a "
                   "small float MatMul beside the int8 one: more accurate, somewhat slower; 0 is off (static: "
                   "with --outlier-mode carve, carved before calibrating).")
@click.option("--outlier-mode", type=click.Choice(["all", "carve"]), default="all", show_default=True,
              help="Where --outlier-ratio acts. carve: only activations a Gelu/Relu of a linear layer makes (their "
                   "outlier channels are carved out of that layer: cheap); all: every linear layer's input (the "
                   "others masked: a full-size Mul and a Gather more each).")
@click.option("--per-channel/--per-tensor", default=True, show_default=True,
              help="One weight scale per output channel, or one per tensor.")
@click.option("--exclude", multiple=True, metavar="NODE_OR_OP", help="A node name or op type to keep float (repeatable).")
@click.option("--int8", "int8_layers", multiple=True, metavar="NODE_OR_OP",
              help="weight-only: a node name or op type to quantize to 8 bits instead of 4 (repeatable).")
@click.option("--embeddings/--no-embeddings", default=True, show_default=True,
              help="Quantize embedding tables (Gather of a constant table) too.")
@click.option("--smooth", type=float, metavar="ALPHA",
              help="SmoothQuant first: move activation outliers into the weights (alpha 0-1, e.g. 0.5); "
                   "static: before calibrating, the dividing Muls kept float.")
@click.option("--min-cosine", type=float,
              help="Budget: the worst output cosine; the most sensitive layers stay float (weight-only: go to "
                   "8 bits) until it is met.")
@click.option("--max-drop", type=float,
              help="Budget: top-1 agreement lost at most (0.01 = 1 point); layers stay float (weight-only: go to "
                   "8 bits) until it is met.")
@click.option("--preset", default="O3", show_default=True, help="The float passes to run first (O0 for none).")
@click.option("--target", type=click.Choice(TARGETS), default="portable", show_default=True, help=_TARGET_HELP)
@click.option("--opset", type=int, help="Convert to this opset first (portable int4 needs 21).")
@click.option("--validate/--no-validate", default=True, show_default=True,
              help="Compare with the input in ONNX Runtime; nothing is written if it fails.")
@click.option("--check-speed/--no-check-speed", default=True, show_default=True,
              help="Time float against quantized on the EP; a slower quantized model is not written.")
@click.option("--force", is_flag=True, help="Write the model even when validation or a guard fails (exit 1).")
@click.option("--external-data/--no-external-data", default=None,
              help="Store weights in a side file (default: only when the model needs it).")
@click.option("--report", type=click.Path(path_type=Path), help="Write the per-pass report as JSON.")
@_tolerance_options(default=None, cosine=False, base=lambda kwargs: api.MODE_TOLERANCES[kwargs["mode"]],
                    default_help="the mode's: int8 for dynamic, int4 for weight-only, int8-static for static")
@_input_options
@_runtime_options
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
def quantize(model: Path, output_arg: Path | None, output: Path | None, mode: str, bits: int | None,
             block_size: int, embedding_block_size: int, algorithm: str, zero_points: bool | None,
             calibrator: str, activation_type: str, scheme: str, bias_correction: bool, calib: Path | None,
             accuracy_level: int,
             outlier_ratio: float, outlier_mode: str, per_channel: bool,
             exclude: tuple[str, ...], int8_layers: tuple[str, ...], embeddings: bool,
             smooth: float | None, min_cosine: float | None, max_drop: float | None, preset: str, target: str,
             opset: int | None, validate: bool, check_speed: bool, force: bool, external_data: bool | None, report: Path | None,
             tolerance: Tolerance, inputs_file: Path | None, shape: tuple[str, ...], input_range: tuple[str, ...],
             runtime: api.RuntimeOptions, quiet: bool) -> None:
    """Quantize MODEL (after the preset's float passes), validate it (int8 tolerance; int8-static for
    static, int4 for weight-only), check it is faster than float, and write it atomically."""
    output = _output_path("quantize", model, output_arg, output, report)
    result = _with_progress(quiet, lambda observer: api.quantize(
        model, output, mode=mode, bits=bits, block_size=block_size, embedding_block_size=embedding_block_size,
        algorithm=algorithm, zero_points=zero_points,
        accuracy_level=accuracy_level,
        outlier_ratio=outlier_ratio, outlier_mode=outlier_mode, per_channel=per_channel, exclude=exclude, int8_layers=int8_layers,
        embeddings=embeddings, smooth=smooth, calibrator=calibrator, activation_type=activation_type, scheme=scheme,
        bias_correction=bias_correction, min_cosine=min_cosine, max_drop=max_drop, preset=preset, target=target, opset=opset, validate=validate, check_speed=check_speed, force=force,
        inputs=inputs_file, calibration=calib, shapes=parse_shapes(shape), input_ranges=parse_ranges(input_range),
        tolerance=tolerance, runtime=runtime, observer=observer, external_data=external_data,
    ))
    _finish(result, output, report, quiet)


@app.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
def inspect(model: Path, as_json: bool) -> None:
    """Show opsets, IR version, signature, op histogram, parameters by dtype and file size."""
    info = model_io.inspect(model)
    if as_json:
        out.print_json(json.dumps(info.to_dict()))
        return
    opsets = ", ".join(f"{domain or 'ai.onnx'} {version}" for domain, version in info.opsets.items())
    out.print(Text.assemble((str(info.path), "bold"), f"  {human_bytes(info.file_bytes)}"
                            f"{' (+ external data)' if info.external_data else ''}"))
    out.print(f"IR version {info.ir_version}; opsets: {opsets}; producer: {info.producer or '-'}")
    out.print(f"{info.nodes} nodes, {info.initializers} initializers, {info.parameters:,} parameters "
              f"({human_bytes(info.parameter_bytes)})")
    signature = Table(title="signature")
    for column in ("", "name", "dtype", "shape"):
        signature.add_column(column)
    for kind, tensors in (("input", info.inputs), ("output", info.outputs)):
        for tensor in tensors:
            shape = "?" if tensor.shape is None else "[" + ", ".join(
                "?" if dim is None else str(dim) for dim in tensor.shape) + "]"
            signature.add_row(kind, tensor.name, tensor.dtype, shape)
    out.print(signature)
    ops = Table(title="ops")
    ops.add_column("op")
    ops.add_column("count", justify="right")
    for op, count in info.op_counts.items():
        ops.add_row(op, str(count))
    out.print(ops)
    dtypes = Table(title="parameters by dtype")
    for column in ("dtype", "tensors", "parameters", "bytes"):
        dtypes.add_column(column, justify="left" if column == "dtype" else "right")
    for dtype, entry in info.parameters_by_dtype.items():
        dtypes.add_row(dtype, str(entry["tensors"]), f"{entry['parameters']:,}", human_bytes(entry["bytes"]))
    out.print(dtypes)


@app.command()
@click.argument("reference", type=click.Path(path_type=Path))
@click.argument("candidate", type=click.Path(path_type=Path))
@_tolerance_options
@click.option("--no-locate", is_flag=True, help="Do not search for the first diverging node.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@_input_options
@_runtime_options
def validate(reference: Path, candidate: Path, tolerance: Tolerance, no_locate: bool, as_json: bool,
             inputs_file, shape, input_range, runtime: api.RuntimeOptions) -> None:
    """Run REFERENCE and CANDIDATE on the same inputs and compare every output (exit 1 if they differ)."""
    result = api.validate(reference, candidate, inputs=inputs_file, shapes=parse_shapes(shape),
                          input_ranges=parse_ranges(input_range), tolerance=tolerance,
                          runtime=runtime, locate=not no_locate)
    if as_json:
        out.print_json(json.dumps(result.to_dict()))
    else:
        _print_validation(result)
    if not result.passed:
        raise click.exceptions.Exit(1)


@app.command()
@click.argument("models", type=click.Path(path_type=Path), nargs=-1, required=True)
@click.option("--warmup", type=int, default=10, show_default=True,
              help="Untimed runs per model before timing (each shape set).")
@click.option("--runs", type=int, help="Timed runs per model and shape set (default 100).")
@click.option("--seconds", type=float, help="A wall-clock budget per shape set instead of --runs.")
@click.option("--sweep", multiple=True, metavar="NAME=A,B,…",
              help="Time each shape in turn: input_ids=1x32,1x128 (an input) or seq=32,128,512 "
                   "(a named dimension, for every input that has it); several --sweep multiply.")
@click.option("--concurrency", type=int, default=1, show_default=True,
              help="Requests in flight on each model's session, one thread each.")
@click.option("--json", "json_file", type=click.Path(path_type=Path), help="Write results as JSON.")
@click.option("--markdown", type=click.Path(path_type=Path), help="Write results as Markdown.")
@click.option("--plot", type=click.Path(path_type=Path),
              help="Write a PNG: latency distributions, or latency against shape with --sweep.")
@click.option("--save-baseline", type=click.Path(path_type=Path), help="Save this run as a baseline (JSON).")
@click.option("--compare", "baseline_file", type=click.Path(path_type=Path),
              help="Compare p50s with a saved baseline; exit 1 on a regression.")
@click.option("--max-regression", metavar="PERCENT",
              help="Largest p50 increase --compare accepts, per model and shape (default 5%).")
@_input_options
@_runtime_options
def bench(models: tuple[Path, ...], warmup: int, runs: int | None, seconds: float | None, sweep, concurrency: int,
          json_file, markdown, plot, save_baseline, baseline_file, max_regression: str | None, inputs_file, shape,
          input_range, runtime: api.RuntimeOptions) -> None:
    """Latency of one or more models on the same inputs, each timed alone in turns."""
    for path, flag in ((json_file, "--json"), (markdown, "--markdown"), (plot, "--plot"),
                       (save_baseline, "--save-baseline")):
        check_output_file(path, flag)
    if plot is not None:
        bench_report.pyplot()
    if max_regression is not None and baseline_file is None:
        raise click.UsageError("--max-regression applies to --compare FILE.json")
    threshold = baseline.parse_threshold(max_regression or "5%")
    saved = baseline.load(baseline_file) if baseline_file is not None else None
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                  console=err, transient=True, auto_refresh=False, disable=not err.is_terminal) as progress:
        task = progress.add_task("benchmarking", total=None)

        def report(done: int, total: int | None) -> None:
            progress.update(task, completed=done, total=total)
            progress.refresh()

        result = api.bench(list(models), inputs=inputs_file, shapes=parse_shapes(shape),
                           input_ranges=parse_ranges(input_range), sweep=parse_sweep(sweep), warmup=warmup,
                           runs=runs, seconds=seconds, concurrency=concurrency, runtime=runtime,
                           progress=report)
    _print_bench(result)
    for path, text in ((json_file, result.to_json() + "\n"), (save_baseline, result.to_json() + "\n"),
                       (markdown, result.to_markdown())):
        if path is not None:
            model_io.write_text_atomic(path, text)
    if plot is not None:
        bench_report.plot(result, plot)
    if saved is not None:
        comparison = baseline.compare(result, saved, threshold, str(baseline_file))
        _print_comparison(comparison)
        if not comparison.passed:
            raise click.exceptions.Exit(1)


def _print_bench(result: BenchResult) -> None:
    for case in result.cases:
        _print_table(f"latency on {result.ep}, inputs: {case.shapes_text()}", *bench_report.case_table(case))
    if len(result.cases) > 1:
        _print_table(f"p50 ms by {bench_report.sweep_axis_name(result)}", *bench_report.sweep_table(result))
    for line in bench_report.settings_lines(result.metadata):
        out.print(line, soft_wrap=True)
    out.print(f"peak resident memory {human_bytes(result.peak_rss_bytes)}; p50 vs first = the model's median "
              "latency over the first model's (below 1.00x is faster)")


def _print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    table = Table(title=title)
    for column in header:
        table.add_column(column, justify="left" if column == "model" else "right")
    for row in rows:
        table.add_row(*row)
    out.print(table)


def _print_comparison(comparison: baseline.BaselineComparison) -> None:
    table = Table(title=f"against {comparison.baseline} (max regression {comparison.max_regression:.1%})")
    for column in ("model", "inputs", "baseline p50 ms", "p50 ms", "change", "verdict"):
        table.add_column(column, justify="right" if "ms" in column or column == "change" else "left")
    for row in comparison.rows:
        table.add_row(row.model, row.shapes, _fmt(row.baseline_p50_ms, ".3f"), _fmt(row.current_p50_ms, ".3f"),
                      _fmt(row.change, "+.1%"), row.status)
    out.print(table)
    for difference in comparison.setting_differences:
        out.print(f"note: {difference}", soft_wrap=True)
    (out if comparison.passed else err).print(comparison.summary(), soft_wrap=True)


def _model_source_options(command):
    """--zoo NAME | --module file.py:factory, --exporter, --opset."""
    for option in reversed([
        click.option("--zoo", help="A built-in model (`graphopt zoo` lists them)."),
        click.option("--module", "module_spec", metavar="FILE.py:FACTORY",
                     help="Your model: a function returning (module, example_inputs) or a dict."),
        click.option("--exporter", type=click.Choice(["dynamo", "torchscript"]), default="dynamo",
                     show_default=True, help="torch.onnx exporter (the other is a stated fallback)."),
        click.option("--opset", type=int, help="ONNX opset to export to (exporter default otherwise)."),
    ]):
        command = option(command)
    return command


def _export_module():
    try:
        from graphopt import export
    except ImportError as error:
        raise GraphoptError(f"exporting needs torch: pip install 'graphopt[export]' ({error})") from None
    return export


@app.command("export")
@_model_source_options
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
    check_output_file(output, "-o")
    spec = export.zoo_entry(zoo).build() if zoo else export.load_factory(module_spec)
    result = export.export_spec(spec, output, exporter=exporter, opset=opset, fallback=not no_fallback,
                                parity=not no_parity)
    if as_json:
        out.print_json(json.dumps(result.to_dict()))
        return
    for note in result.notes:
        out.print(f"note: {note}")
    out.print(f"exported {output} with the {result.exporter} exporter, opset {result.opset}; "
              f"inputs {result.input_names}, outputs {result.output_names}")
    for check in result.parity:
        shapes = ", ".join(f"{name} {shape}" for name, shape in check.shapes.items())
        out.print(f"  parity at {shapes}: max abs error {check.max_abs_error:.3g}")
    for data in export.written_data(output, spec):
        out.print(f"  wrote {data}" + ("/ (calibration input sets for --calib)" if data.is_dir() else ""))


@app.command("zoo")
def zoo_command() -> None:
    """List the built-in models (nothing is downloaded: weights ship in packages or are random)."""
    from graphopt.export.zoo import ZOO

    table = Table(title="model zoo")
    for column in ("name", "weights", "what it is"):
        table.add_column(column)
    for entry in ZOO.values():
        table.add_row(entry.name, entry.weights, entry.summary)
    out.print(table)


@app.command("run")
@_model_source_options
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True, help="Output folder.")
@click.option("--preset", default="O1", show_default=True,
              help="The float passes (O0-O3; `graphopt passes` lists them); the optimized model is "
                   "model.<preset>.onnx.")
@click.option("--target", type=click.Choice(TARGETS), default="portable", show_default=True, help=_TARGET_HELP)
@_tolerance_options
@click.option("--runs", type=int, default=100, show_default=True, help="Timed benchmark runs per model.")
@click.option("--warmup", type=int, default=10, show_default=True, help="Untimed benchmark runs per model first.")
@click.option("--shape", "shape", multiple=True, metavar="NAME=1x128",
              help="Input shape for validation and the benchmark (repeatable).")
@click.option("--bench-shape", "bench_shape", multiple=True, metavar="NAME=1x128",
              help="Input shape for the benchmark instead of --shape (repeatable), e.g. a deployment's.")
@click.option("--quantize", type=click.Choice(api.QUANTIZE_MODES),
              help="Also quantize (after the preset's passes), validate at the mode's tolerance, check the speed, "
                   "bench it; static calibrates on the zoo model's calibration set (text: real sentences; "
                   "random-weight models: 16 seeded random inputs).")
@_runtime_options
def run_command(zoo, module_spec, exporter, opset, out_dir: Path, preset: str, target: str, tolerance: Tolerance,
                runs: int, warmup: int, shape, bench_shape, quantize: str | None, runtime: api.RuntimeOptions) -> None:
    """Export, optimize, validate and benchmark in one go; write report.md/json and latency.png."""
    _export_module()
    from graphopt import flow

    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                  console=err, transient=True, auto_refresh=False, disable=not err.is_terminal) as progress:
        task = progress.add_task("starting", total=None)

        def stage(description: str) -> None:
            progress.update(task, description=description)
            progress.refresh()

        def report(done: int, total: int | None) -> None:
            progress.update(task, completed=done, total=total)
            progress.refresh()

        result = flow.run(zoo=zoo, module=module_spec, out=out_dir, preset=preset, target=target,
                          tolerance=tolerance, exporter=exporter, opset=opset, shapes=parse_shapes(shape),
                          bench_shapes=parse_shapes(bench_shape), runs=runs, warmup=warmup, runtime=runtime,
                          progress=report, stage=stage, quantize=quantize)
    export = result.export
    out.print(Text.assemble((result.name, "bold"), f": exported with {export.exporter} (opset {export.opset}), "
                            f"parity max abs error {export.max_abs_error:.3g}"))
    if result.optimize is not None:
        _print_warnings(result.optimize.warnings)
        out.print(_report_table(result.optimize.report))
    if result.validation is not None:
        _print_validation(result.validation)
    if result.quantized is not None:
        for line in result.quantized.summary_lines():
            out.print(line, highlight=False, soft_wrap=True)
    if result.quantize_refusal:
        err.print(f"graphopt: the quantized model was not written: {result.quantize_refusal}", soft_wrap=True)
    if result.bench is not None:
        models = result.bench.models
        p50s = " → ".join(f"{model.p50_ms:.3f} ms" for model in models)
        ratios = ", ".join(f"{ratio:.2f}x" for ratio in result.bench.ratios()[1:])
        out.print(f"latency p50 {p50s} ({ratios} the export's median time per run; below 1.00x is faster) "
                  f"at {result.bench.cases[0].shapes_text()}", soft_wrap=True)
        for line in bench_report.settings_lines(result.bench.metadata)[:3]:
            out.print(f"  {line}", soft_wrap=True)
    for label, value in result.accuracy.items():
        out.print(f"test accuracy ({label}): {value:.2%}")
    out.print(f"wrote {', '.join(str(path) for path in result.files)}")
    if not result.passed:
        raise click.exceptions.Exit(1)


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
    out.print(table)
    presets = Table(title="presets")
    presets.add_column("preset")
    presets.add_column("what it runs")
    for name, summary in PRESET_SUMMARIES.items():
        presets.add_row(name, summary)
    out.print(presets)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, turning every expected failure into one line and an exit code."""
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    _bind_consoles()
    try:
        result = app.main(args=argv, prog_name="graphopt", standalone_mode=False)
    except click.exceptions.Exit as done:
        return done.exit_code
    except click.exceptions.UsageError as usage:
        err.print(f"graphopt: error: {usage.format_message()}", soft_wrap=True)
        return 2
    except (click.exceptions.Abort, KeyboardInterrupt):
        err.print("graphopt: interrupted; nothing was written")
        return 130
    except GraphoptError as error:
        err.print(f"graphopt: error: {error}", soft_wrap=True)
        return error.exit_code
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
