"""`graphopt validate` and `graphopt bench`: two models compared output by output; latency in turns."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from graphopt import api, render
from graphopt import model as model_io
from graphopt.cli import console, flags
from graphopt.cli.app import app
from graphopt.outputs import check_output_file
from graphopt.runtime import baseline, bench_report
from graphopt.runtime.bench import BenchResult
from graphopt.runtime.compare import Tolerance
from graphopt.runtime.inputs import parse_ranges, parse_shapes, parse_sweep
from graphopt.runtime.options import RuntimeOptions
from graphopt.units import human_bytes


def _fmt(value, spec: str = ".3g") -> str:
    return "-" if value is None else format(value, spec)


@app.command()
@click.argument("reference", type=click.Path(path_type=Path))
@click.argument("candidate", type=click.Path(path_type=Path))
@flags.tolerance
@click.option("--no-locate", is_flag=True, help="Do not search for the first diverging node.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@flags.inputs
@flags.runtime
@click.option("-v", "--verbose", is_flag=True, help="A table row per input set (default: the worst case per output "
                                                      "when there are more than three).")
@click.option("-q", "--quiet", is_flag=True, help="Print only the one-line verdict.")
def validate(reference: Path, candidate: Path, tolerance: Tolerance, no_locate: bool, as_json: bool,
             inputs_file, shape, input_range, runtime: RuntimeOptions, verbose: bool, quiet: bool) -> None:
    """Run REFERENCE and CANDIDATE on the same inputs and compare every output (exit 1 if they differ)."""
    result = api.validate(reference, candidate, inputs=inputs_file, shapes=parse_shapes(shape),
                          input_ranges=parse_ranges(input_range), tolerance=tolerance,
                          runtime=runtime, locate=not no_locate)
    if as_json:
        console.out.print_json(json.dumps(result.to_dict()))
    elif quiet:
        console.lines(render.validation_lines(result))
    else:
        console.validation(result, verbose=verbose)
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
@flags.inputs
@flags.runtime
def bench(models: tuple[Path, ...], warmup: int, runs: int | None, seconds: float | None, sweep, concurrency: int,
          json_file, markdown, plot, save_baseline, baseline_file, max_regression: str | None, inputs_file, shape,
          input_range, runtime: RuntimeOptions) -> None:
    """Latency of one or more models on the same inputs, each timed alone in turns."""
    for path, flag in ((json_file, "--json"), (markdown, "--markdown"), (plot, "--plot"),
                       (save_baseline, "--save-baseline")):
        check_output_file(path, flag, new_folders=False)
    if plot is not None:
        bench_report.pyplot()
    if max_regression is not None and baseline_file is None:
        raise click.UsageError("--max-regression applies to --compare FILE.json")
    threshold = baseline.parse_threshold(max_regression or "5%")
    saved = baseline.load(baseline_file) if baseline_file is not None else None
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                  console=console.err, transient=True, auto_refresh=False, disable=not console.err.is_terminal) as progress:
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
    console.lines(bench_report.settings_lines(result.metadata))
    console.out.print(f"peak resident memory {human_bytes(result.peak_rss_bytes)}; p50 vs first = the model's "
              "median latency against the first model's")


def _print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    console.table(render.Table(title, header, rows, tuple(column for column in header if column != "model")))


def _print_comparison(comparison: baseline.BaselineComparison) -> None:
    console.table(render.Table(
        f"against {comparison.baseline} (max regression {comparison.max_regression:.1%})",
        ["model", "inputs", "baseline p50 ms", "p50 ms", "change", "verdict"],
        [[row.model, row.shapes, _fmt(row.baseline_p50_ms, ".3f"), _fmt(row.current_p50_ms, ".3f"),
          _fmt(row.change, "+.1%"), row.status] for row in comparison.rows],
        ("baseline p50 ms", "p50 ms", "change")))
    console.lines([f"note: {difference}" for difference in comparison.setting_differences])
    console.lines([comparison.summary()], to_err=not comparison.passed)
