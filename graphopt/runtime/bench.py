"""Latency benchmarks: several models, interleaved in one process, so their ratios hold.

Each model gets a session (creation timed), the same inputs, and warm-up runs; then timed
rounds run the models in turn (A B A B …) until `runs` rounds or `seconds` have passed.
On CUDA, inputs and outputs are bound on the device (IO binding) so the timed region is the
model, not host copies. Reported per model: session creation, latency p50/p90/p99/mean/std,
throughput at the batch size, file size; for the process: peak resident memory.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from graphopt import model as model_io
from graphopt.errors import InputError
from graphopt.runtime import inputs as input_io
from graphopt.runtime.providers import Session, SessionConfig, create_session


@dataclasses.dataclass
class ModelBench:
    model: str
    file_bytes: int | None
    session_seconds: float
    latencies_ms: list[float]
    batch_size: int
    rss_after_session_bytes: int

    def _quantile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    @property
    def p50_ms(self) -> float:
        return self._quantile(50)

    @property
    def p90_ms(self) -> float:
        return self._quantile(90)

    @property
    def p99_ms(self) -> float:
        return self._quantile(99)

    @property
    def mean_ms(self) -> float:
        return statistics.fmean(self.latencies_ms) if self.latencies_ms else float("nan")

    @property
    def std_ms(self) -> float:
        return statistics.pstdev(self.latencies_ms) if len(self.latencies_ms) > 1 else 0.0

    @property
    def throughput(self) -> float:
        """Samples per second at the benchmarked batch size."""
        return self.batch_size * 1000.0 / self.mean_ms if self.latencies_ms else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "file_bytes": self.file_bytes, "session_seconds": self.session_seconds,
            "runs": len(self.latencies_ms), "batch_size": self.batch_size,
            "p50_ms": self.p50_ms, "p90_ms": self.p90_ms, "p99_ms": self.p99_ms,
            "mean_ms": self.mean_ms, "std_ms": self.std_ms, "throughput_per_s": self.throughput,
            "rss_after_session_bytes": self.rss_after_session_bytes,
            "latencies_ms": self.latencies_ms,
        }


@dataclasses.dataclass
class BenchResult:
    ep: str
    threads: int | None
    input_shapes: dict[str, list[int]]
    models: list[ModelBench]
    peak_rss_bytes: int

    def ratios(self) -> list[float]:
        """Each model's p50 latency divided by the first model's."""
        first = self.models[0].p50_ms
        return [entry.p50_ms / first if first else float("nan") for entry in self.models]

    def to_dict(self) -> dict[str, Any]:
        return {"ep": self.ep, "threads": self.threads, "input_shapes": self.input_shapes,
                "peak_rss_bytes": self.peak_rss_bytes, "p50_ratio_vs_first": self.ratios(),
                "models": [entry.to_dict() for entry in self.models]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_markdown(self) -> str:
        lines = [f"Execution provider: {self.ep}; threads: {self.threads or 'ORT default'}; inputs: "
                 + ", ".join(f"{name} {shape}" for name, shape in self.input_shapes.items()),
                 "",
                 "| model | size MiB | session ms | p50 ms | p90 ms | p99 ms | mean ms | std ms | "
                 "samples/s | p50 vs first |",
                 "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for entry, ratio in zip(self.models, self.ratios()):
            size = f"{entry.file_bytes / 2**20:.1f}" if entry.file_bytes else "-"
            lines.append(f"| {entry.model} | {size} | {entry.session_seconds * 1000:.0f} | "
                         f"{entry.p50_ms:.3f} | {entry.p90_ms:.3f} | {entry.p99_ms:.3f} | "
                         f"{entry.mean_ms:.3f} | {entry.std_ms:.3f} | {entry.throughput:.1f} | {ratio:.2f}x |")
        lines.append("")
        lines.append(f"Peak resident memory of the process: {self.peak_rss_bytes / 2**20:.0f} MiB")
        return "\n".join(lines) + "\n"


def peak_rss_bytes() -> int:
    """The process's peak resident set size so far."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def current_rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as stream:
            return int(stream.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return peak_rss_bytes()


class _Runner:
    """Runs one session on fixed inputs; on a GPU, with inputs and outputs bound on the device."""

    def __init__(self, session: Session, feeds: dict[str, np.ndarray], device_id: int) -> None:
        self.session = session
        self.feeds = feeds
        self._binding = None
        if session.ep != "cpu":
            import onnxruntime as ort

            binding = session.inner.io_binding()
            for name, array in feeds.items():
                binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array, "cuda", device_id))
            for output in session.inner.get_outputs():
                binding.bind_output(output.name, "cuda", device_id)
            self._binding = binding

    def __call__(self) -> float:
        """One run; milliseconds from start to outputs ready (device synchronized)."""
        if self._binding is None:
            start = time.perf_counter()
            self.session.inner.run(None, self.feeds)
            return (time.perf_counter() - start) * 1000.0
        self._binding.synchronize_inputs()
        start = time.perf_counter()
        self.session.inner.run_with_iobinding(self._binding)
        self._binding.synchronize_outputs()
        return (time.perf_counter() - start) * 1000.0


ProgressCallback = Callable[[int, int | None], None]


def bench(models: Sequence[str | os.PathLike], *, config: SessionConfig = SessionConfig(),
          inputs: str | os.PathLike | dict | None = None,
          shapes: dict[str, tuple[int, ...]] | None = None,
          ranges: dict[str, tuple[float, float]] | None = None,
          warmup: int = 10, runs: int | None = 100, seconds: float | None = None,
          progress: ProgressCallback | None = None, seed: int = 0) -> BenchResult:
    """Benchmark models interleaved on the same inputs (synthesized from the first model).

    Give `runs` (rounds, each running every model once) or `seconds` (wall-clock budget).
    """
    if not models:
        raise InputError("bench needs at least one model")
    if warmup < 0 or (runs is not None and runs < 1) or (seconds is not None and seconds <= 0):
        raise InputError("--warmup must be >= 0, --runs >= 1 and --seconds > 0")
    if seconds is not None:
        runs = None
    runners, entries = [], []
    feeds = None
    for path in models:
        loaded = model_io.load(path)
        if feeds is None:
            if isinstance(inputs, (str, os.PathLike)):
                feeds = input_io.load_npz(inputs, loaded)
            elif inputs is not None:
                feeds = dict(inputs)
            else:
                feeds = input_io.synthesize(loaded, shapes or {}, ranges or {}, seed=seed)
        size = model_io.file_bytes(loaded)
        del loaded
        session = create_session(path, config)
        model_inputs = {value.name for value in session.inner.get_inputs()}
        if model_inputs != set(feeds):
            raise InputError(f"{path}: inputs {sorted(model_inputs)} differ from the first model's "
                             f"{sorted(feeds)}; interleaved models must share a signature")
        runners.append(_Runner(session, feeds, config.device_id))
        entries.append(ModelBench(str(path), size, session.created_seconds, [],
                                  _batch_size(feeds), current_rss_bytes()))
    for runner in runners:
        for _ in range(warmup):
            runner()
    deadline = None if seconds is None else time.perf_counter() + seconds
    done = 0
    while (runs is not None and done < runs) or (deadline is not None and time.perf_counter() < deadline):
        for runner, entry in zip(runners, entries):
            entry.latencies_ms.append(runner())
        done += 1
        if progress is not None:
            progress(done, runs)
    return BenchResult(runners[0].session.ep, config.threads,
                       {name: list(array.shape) for name, array in feeds.items()}, entries,
                       peak_rss_bytes())


def _batch_size(feeds: dict[str, np.ndarray]) -> int:
    for array in feeds.values():
        if array.ndim:
            return int(array.shape[0])
    return 1


def plot(result: BenchResult, path: str | os.PathLike) -> None:
    """A PNG of each model's latency distribution (box plot with every run as a dot)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError("--plot needs matplotlib: pip install 'graphopt[bench]'") from None
    labels = [Path(entry.model).name for entry in result.models]
    if len(set(labels)) < len(labels):
        labels = [entry.model for entry in result.models]
    figure, axis = plt.subplots(figsize=(max(6, 1.8 * len(labels) + 2), 4.5))
    data = [entry.latencies_ms for entry in result.models]
    axis.boxplot(data, showfliers=False)
    axis.set_xticks(range(1, len(labels) + 1), labels)
    rng = np.random.default_rng(0)
    for index, latencies in enumerate(data, start=1):
        jitter = rng.uniform(-0.15, 0.15, size=len(latencies))
        axis.scatter(index + jitter, latencies, s=6, alpha=0.4)
    axis.set_ylabel("latency (ms)")
    axis.set_title(f"latency per run on {result.ep} "
                   + ", ".join(f"{n}{s}" for n, s in result.input_shapes.items()))
    for index, (entry, ratio) in enumerate(zip(result.models, result.ratios()), start=1):
        axis.annotate(f"p50 {entry.p50_ms:.2f} ms\n{ratio:.2f}x", (index, entry.p50_ms),
                      textcoords="offset points", xytext=(28, 0), fontsize=8)
    figure.tight_layout()
    model_io.write_bytes_atomic(path, _figure_png(figure))
    plt.close(figure)


def _figure_png(figure) -> bytes:
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    return buffer.getvalue()
