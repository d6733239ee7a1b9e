"""The `graphopt` command: subcommands mirror the Python API; errors are one line and an exit code.

Exit codes: 0 ok, 1 validation failed (or a pass broke the model), 2 bad input or usage.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from graphopt import api
from graphopt import model as model_io
from graphopt.errors import GraphoptError
from graphopt.pipeline import PRESET_SUMMARIES, PipelineReport

_WIDE = 140
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


def _bind_consoles() -> None:
    """Consoles follow the current stdout/stderr; logs and pipes get wide tables."""
    global out, err
    width = None if sys.stdout.isatty() else max(_WIDE, shutil.get_terminal_size().columns)
    out = Console(highlight=False, width=width)
    err = Console(stderr=True, highlight=False)


@click.group(help="Optimize ONNX models and prove they still compute the same thing.",
             context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="graphopt")
def app() -> None:
    pass


def _human_bytes(count: int | None) -> str:
    if count is None:
        return "-"
    value = float(count)
    for unit in ("B", "KB", "MB", "GB"):
        if abs(value) < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"


def _change(before: int, after: int) -> str:
    if before == after:
        return f"{after}"
    return f"{before} → {after}"


def _bytes_change(before: int, after: int) -> str:
    delta = after - before
    return _human_bytes(after) + (f" ({delta:+,} B)" if delta else "")


def _report_table(report: PipelineReport) -> Table:
    table = Table(title=f"passes (target {report.target}, {report.iterations} iteration(s))")
    for column in ("iter", "pass", "nodes", "initializers", "parameters", "ms", "changed", "notes"):
        table.add_column(column, justify="right" if column in ("iter", "ms") else "left")
    for entry in report.passes:
        notes = "" if entry.ran else entry.skipped[0]
        if entry.ran and entry.skipped:
            notes = f"{len(entry.skipped)} skipped"
        table.add_row(
            str(entry.iteration),
            entry.name,
            _change(entry.nodes_before, entry.nodes_after),
            _change(entry.initializers_before, entry.initializers_after),
            _bytes_change(entry.parameter_bytes_before, entry.parameter_bytes_after),
            f"{entry.seconds * 1000:.1f}",
            "yes" if entry.modified else "",
            notes,
        )
    return table


def _print_skips(report: PipelineReport, limit: int = 8) -> None:
    reasons = list(dict.fromkeys(
        f"{entry.name}: {reason}" for entry in report.passes if entry.ran for reason in entry.skipped
    ))
    for reason in reasons[:limit]:
        out.print(f"  skipped {reason}", markup=False)
    if len(reasons) > limit:
        out.print(f"  … and {len(reasons) - limit} more (see --report)")


def _progress_observer(progress: Progress, task) -> api.PassObserver:
    def observe(iteration: int, index: int, pass_) -> None:
        progress.update(task, description=f"iteration {iteration}: {pass_.name}", advance=1)

    return observe


@app.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="Where to write the optimized model.")
@click.option("--preset", help="O0, O1, O2 or O3 (default O1).")
@click.option("--target", default="portable", show_default=True,
              help="portable (standard ONNX ops only) or ort (may use com.microsoft ops).")
@click.option("--passes", help="Comma-separated pass names, run once in this order.")
@click.option("--recipe", type=click.Path(path_type=Path), help="TOML or YAML recipe file.")
@click.option("--opset", type=int, help="Convert to this ONNX opset before the passes.")
@click.option("--fixed-point/--once", default=None,
              help="Repeat the passes until nothing changes (presets do by default).")
@click.option("--max-iterations", type=int, help="Cap on fixed-point iterations.")
@click.option("--external-data/--no-external-data", default=None,
              help="Tensors in OUTPUT.data (default: as the input, or when over 2 GB).")
@click.option("--report", type=click.Path(path_type=Path), help="Write the per-pass report as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
def optimize(model: Path, output: Path, preset: str | None, target: str, passes: str | None,
             recipe: Path | None, opset: int | None, fixed_point: bool | None,
             max_iterations: int | None, external_data: bool | None, report: Path | None,
             quiet: bool) -> None:
    """Run a preset, a pass list or a recipe over MODEL and write the result atomically."""
    api.check_output_differs(model, output)
    spec_args = dict(preset=preset, passes=passes, recipe=recipe)
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                  console=err, transient=True, disable=quiet or not err.is_terminal) as progress:
        task = progress.add_task("loading", total=None)
        result = api.optimize(
            model, output, target=target, opset=opset, fixed_point=fixed_point,
            max_iterations=max_iterations, external_data=external_data,
            observer=_progress_observer(progress, task), **spec_args,
        )
    if report is not None:
        model_io.write_text_atomic(report, result.report.to_json() + "\n")
    if quiet:
        return
    out.print(_report_table(result.report))
    _print_skips(result.report)
    info = model_io.inspect(result.model)
    size = sum(path.stat().st_size for path in result.written)
    out.print(
        f"nodes {result.report.nodes_before} → {info.nodes}, parameters {_human_bytes(info.parameter_bytes)}, "
        f"{result.report.seconds * 1000:.0f} ms; wrote {output} ({_human_bytes(size)})",
        markup=False,
    )


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
    out.print(f"[bold]{info.path}[/bold]  {_human_bytes(info.file_bytes)}"
              f"{' (+ external data)' if info.external_data else ''}")
    out.print(f"IR version {info.ir_version}; opsets: {opsets}; producer: {info.producer or '-'}",
              markup=False)
    out.print(f"{info.nodes} nodes, {info.initializers} initializers, {info.parameters:,} parameters "
              f"({_human_bytes(info.parameter_bytes)})", markup=False)
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
        dtypes.add_row(dtype, str(entry["tensors"]), f"{entry['parameters']:,}", _human_bytes(entry["bytes"]))
    out.print(dtypes)


@app.command("passes")
def list_passes() -> None:
    """List the registered passes and the presets."""
    table = Table(title="passes")
    for column in ("name", "what it does", "opset", "options"):
        table.add_column(column)
    for info in api.list_passes():
        options = ", ".join(f"{key}={value}" for key, value in info.options.items())
        table.add_row(info.name, info.summary, f">= {info.min_opset}", options)
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
        err.print(f"graphopt: error: {usage.format_message()}", markup=False)
        return 2
    except (click.exceptions.Abort, KeyboardInterrupt):
        err.print("graphopt: interrupted; nothing was written", markup=False)
        return 130
    except GraphoptError as error:
        err.print(f"graphopt: error: {error}", markup=False, soft_wrap=True)
        return error.exit_code
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
