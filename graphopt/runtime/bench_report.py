"""Bench results for people: Markdown tables with the run's metadata, and PNG plots.

One shape set gives a latency distribution per model (box plot, every run a dot); a sweep
gives latency against shape, one line per model. Axes stay readable under outliers: limits
come from percentiles, and a wide range of latencies switches to a log scale.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from graphopt import model as model_io
from graphopt.errors import InputError
from graphopt.runtime.bench import BenchResult, ShapeCase
from graphopt.units import human_bytes, time_ratio_text

_LOG_SCALE_RANGE = 20.0


def settings_lines(metadata: dict[str, Any]) -> list[str]:
    """The metadata as short `key: value` lines, most important first."""
    threads = metadata.get("threads") or metadata.get("threads_note") or "ORT default"
    gpu = f" ({metadata['gpu']})" if metadata.get("gpu") else ""
    runs = (f"{metadata['runs']} timed runs per model" if metadata.get("runs")
            else f"{metadata.get('seconds')} s per shape set")
    config = ", ".join(f"{k}={v}" for k, v in (metadata.get("session_config") or {}).items()) or "none"
    return [
        f"execution provider: {metadata['ep']}{gpu}; ONNX Runtime {metadata['onnxruntime_version']}; "
        f"graphopt {metadata['graphopt_version']}",
        f"machine: {metadata['cpu_model']}, {metadata['logical_cpus']} logical CPUs "
        f"({metadata.get('physical_cores') or '?'} physical cores, {metadata.get('usable_cpus')} usable); "
        f"{metadata['platform']}",
        f"session: intra-op threads {threads}, inter-op threads {metadata.get('inter_op_threads') or 'default'}, "
        f"execution mode {metadata['execution_mode']}, spinning {'on' if metadata['spinning'] else 'off'}, "
        f"graph optimizations {metadata['graph_optimization_level']}; session config: {config}",
        f"runs: {metadata['warmup']} warm-up, {runs}, {metadata['concurrency']} request(s) in flight; "
        f"date {metadata['date']}",
        f"timing: {metadata['timing']}",
    ]


def case_table(case: ShapeCase) -> tuple[list[str], list[list[str]]]:
    """The column names and one row of cells per model, for Markdown and the terminal alike."""
    concurrent = case.models[0].concurrency > 1
    header = ["model", "size", "session ms", "p50 ms", "p90 ms", "p99 ms", "mean ms", "std ms", "runs",
              "samples/s (wall)" if concurrent else "samples/s (p50)", "p50 vs first"]
    rows = [[entry.model, human_bytes(entry.file_bytes), f"{entry.session_seconds * 1000:.0f}",
             f"{entry.p50_ms:.3f}", f"{entry.p90_ms:.3f}", f"{entry.p99_ms:.3f}", f"{entry.mean_ms:.3f}",
             f"{entry.std_ms:.3f}", str(len(entry.latencies_ms)), f"{entry.throughput:.1f}", "-" if index == 0 else time_ratio_text(ratio)]
            for index, (entry, ratio) in enumerate(zip(case.models, case.ratios()))]
    return header, rows


def _markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1),
            *("| " + " | ".join(row) + " |" for row in rows)]


def markdown(result: BenchResult) -> str:
    """Settings, one table per shape set, and for sweeps a p50-by-shape summary."""
    lines = [f"- {line}" for line in settings_lines(result.metadata)]
    for case in result.cases:
        lines += ["", f"Inputs: {case.shapes_text()}", "", *_markdown_table(*case_table(case))]
    if len(result.cases) > 1:
        lines += ["", f"p50 ms by {sweep_axis_name(result)}:", "", *_markdown_table(*sweep_table(result))]
    lines += ["", f"Peak resident memory of the process: {human_bytes(result.peak_rss_bytes)}"]
    return "\n".join(lines) + "\n"


def swept_inputs(result: BenchResult) -> list[str]:
    """The inputs whose shape changes across the shape sets (all of them if none does)."""
    names = list(result.cases[0].input_shapes)
    changing = [name for name in names if len({tuple(case.input_shapes[name]) for case in result.cases}) > 1]
    return changing or names


def sweep_labels(result: BenchResult) -> list[str]:
    """A short name per shape set: the distinct shapes of the swept inputs, e.g. `1x128`."""
    names = swept_inputs(result)
    labels = []
    for case in result.cases:
        shapes = dict.fromkeys("x".join(map(str, case.input_shapes[name])) or "scalar" for name in names)
        labels.append(", ".join(shapes))
    return labels


def sweep_table(result: BenchResult) -> tuple[list[str], list[list[str]]]:
    """p50 by shape set: a column per shape set, a row per model."""
    header = ["model", *sweep_labels(result)]
    rows = [[entry.model, *(f"{case.models[index].p50_ms:.3f}" for case in result.cases)]
            for index, entry in enumerate(result.models)]
    return header, rows


def sweep_axis_name(result: BenchResult) -> str:
    return " / ".join(swept_inputs(result)) + " shape"


def model_labels(result: BenchResult) -> list[str]:
    labels = [Path(entry.model).name for entry in result.models]
    return labels if len(set(labels)) == len(labels) else [entry.model for entry in result.models]


def pyplot():
    """matplotlib's pyplot on a file-only backend; without matplotlib, one clear error."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError("plots need matplotlib: pip install 'graphopt[bench]'") from None
    return plt


def plot(result: BenchResult, path: str | os.PathLike) -> None:
    """A PNG: latency distributions for one shape set, latency against shape for a sweep."""
    plt = pyplot()
    figure = (_sweep_figure(plt, result) if len(result.cases) > 1 else _distribution_figure(plt, result))
    figure.tight_layout()
    model_io.write_bytes_atomic(path, _figure_png(figure))
    plt.close(figure)


def _distribution_figure(plt, result: BenchResult):
    labels = model_labels(result)
    data = [entry.latencies_ms for entry in result.models]
    figure, axis = plt.subplots(figsize=(max(6, 1.8 * len(labels) + 2), 4.5))
    axis.boxplot(data, showfliers=False)
    axis.set_xticks(range(1, len(labels) + 1), labels)
    low = min(float(np.percentile(values, 1)) for values in data)
    high = max(float(np.percentile(values, 99)) for values in data)
    if high / max(low, 1e-9) > _LOG_SCALE_RANGE:
        axis.set_yscale("log")
        bottom, top = low / 1.3, high * 1.1
    else:
        bottom, top = max(0.0, low - (high - low) * 0.5), high * 1.1
    axis.set_ylim(bottom, top)
    hidden = sum(int(np.sum((np.asarray(values) > top) | (np.asarray(values) < bottom))) for values in data)
    rng = np.random.default_rng(0)
    for index, latencies in enumerate(data, start=1):
        jitter = rng.uniform(-0.15, 0.15, size=len(latencies))
        axis.scatter(index + jitter, latencies, s=6, alpha=0.4)
    axis.set_ylabel("latency per run (ms)")
    title = f"latency on {result.ep}, {result.cases[0].shapes_text()}"
    if hidden:
        title += f"\n({hidden} run(s) outside {bottom:.3g}-{top:.3g} ms not shown)"
    axis.set_title(title, fontsize=9)
    for index, (entry, ratio) in enumerate(zip(result.models, result.ratios()), start=1):
        versus = "" if index == 1 else f"\n{time_ratio_text(ratio)}"
        axis.annotate(f"p50 {entry.p50_ms:.3g} ms{versus}", (index, entry.p50_ms),
                      textcoords="offset points", xytext=(28, 0), fontsize=8)
    return figure


def _sweep_figure(plt, result: BenchResult):
    shapes = sweep_labels(result)
    figure, axis = plt.subplots(figsize=(max(6, 1.2 * len(shapes) + 3), 4.5))
    positions = np.arange(len(shapes))
    everything = []
    for index, label in enumerate(model_labels(result)):
        entries = [case.models[index] for case in result.cases]
        p50 = np.array([entry.p50_ms for entry in entries])
        p10 = np.array([np.percentile(entry.latencies_ms, 10) for entry in entries])
        p90 = np.array([entry.p90_ms for entry in entries])
        axis.plot(positions, p50, marker="o", label=label)
        axis.fill_between(positions, p10, p90, alpha=0.2)
        everything.extend([*p10, *p90])
    if max(everything) / max(min(everything), 1e-9) > _LOG_SCALE_RANGE:
        axis.set_yscale("log")
    axis.set_xticks(positions, shapes)
    axis.set_xlabel(sweep_axis_name(result))
    axis.set_ylabel("latency p50 (ms), band p10-p90")
    axis.set_title(f"latency against input shape on {result.ep}", fontsize=9)
    axis.legend(fontsize=8)
    return figure


def _figure_png(figure) -> bytes:
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    return buffer.getvalue()
