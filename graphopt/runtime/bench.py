"""Latency of several models on the same inputs, each timed while it owns the machine.

Models take turns in time slices, each after an untimed lead-in that outlasts the previous
session's spinning threads; progress is reported between slices only; on CUDA, IO binding
keeps host copies out of the timed region.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import resource
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from graphopt import model as model_io
from graphopt.errors import InputError
from graphopt.memory import gc_paused
from graphopt.runtime import inputs as input_io
from graphopt.runtime import machine
from graphopt.runtime.providers import Session, SessionConfig, create_session, run_failure

LEAD_IN_SECONDS = 0.1
SLICE_SECONDS = 0.3
MAX_CONCURRENCY = 256
TIMING_METHOD = (f"time slices: models take turns, each running alone for {SLICE_SECONDS:g} s slices "
                 f"after an untimed {LEAD_IN_SECONDS:g} s lead-in (the previous model's threads stop "
                 "spinning, this one's are hot); latency is per run, as one session serving "
                 "back-to-back requests sees it")

SweepPoint = dict[str, tuple[int, ...]]


@dataclasses.dataclass
class ModelBench:
    model: str
    file_bytes: int | None
    session_seconds: float
    latencies_ms: list[float]
    batch_size: int
    rss_after_session_bytes: int
    concurrency: int = 1
    timed_seconds: float = 0.0

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
        """Samples per second: from the median latency for one request at a time; with several
        in flight, completed samples over the timed wall-clock time."""
        if not self.latencies_ms:
            return 0.0
        if self.concurrency == 1:
            return self.batch_size * 1000.0 / self.p50_ms
        return self.wall_throughput

    @property
    def wall_throughput(self) -> float:
        """Completed samples over the timed wall-clock time (outliers included)."""
        return self.batch_size * len(self.latencies_ms) / self.timed_seconds if self.timed_seconds else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "file_bytes": self.file_bytes, "session_seconds": self.session_seconds,
            "runs": len(self.latencies_ms), "batch_size": self.batch_size, "concurrency": self.concurrency,
            "p50_ms": self.p50_ms, "p90_ms": self.p90_ms, "p99_ms": self.p99_ms,
            "mean_ms": self.mean_ms, "std_ms": self.std_ms, "throughput_per_s": self.throughput,
            "wall_throughput_per_s": self.wall_throughput, "timed_seconds": self.timed_seconds,
            "rss_after_session_bytes": self.rss_after_session_bytes,
            "latencies_ms": self.latencies_ms,
        }


@dataclasses.dataclass
class ShapeCase:
    """Every model timed at one set of input shapes."""

    input_shapes: dict[str, list[int]]
    models: list[ModelBench]

    def ratios(self) -> list[float]:
        """Each model's p50 latency divided by the first model's."""
        first = self.models[0].p50_ms
        return [entry.p50_ms / first if first else float("nan") for entry in self.models]

    def shapes_text(self) -> str:
        return ", ".join(f"{name} {shape}" for name, shape in self.input_shapes.items())

    def to_dict(self) -> dict[str, Any]:
        return {"input_shapes": self.input_shapes, "p50_ratio_vs_first": self.ratios(),
                "models": [entry.to_dict() for entry in self.models]}


@dataclasses.dataclass
class BenchResult:
    cases: list[ShapeCase]
    peak_rss_bytes: int
    metadata: dict[str, Any]

    @property
    def ep(self) -> str:
        return self.metadata["ep"]

    @property
    def threads(self) -> int | None:
        return self.metadata["threads"]

    @property
    def models(self) -> list[ModelBench]:
        """The models at the first (without --sweep, the only) shape set."""
        return self.cases[0].models

    @property
    def input_shapes(self) -> dict[str, list[int]]:
        return self.cases[0].input_shapes

    def ratios(self) -> list[float]:
        """p50 ratios against the first model at the first (or only) shape set."""
        return self.cases[0].ratios()

    def to_dict(self) -> dict[str, Any]:
        return {"format": "graphopt-bench/1", "metadata": self.metadata,
                "peak_rss_bytes": self.peak_rss_bytes, "cases": [case.to_dict() for case in self.cases]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_markdown(self) -> str:
        from graphopt.runtime import bench_report

        return bench_report.markdown(self)


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
        try:
            if self._binding is None:
                start = time.perf_counter()
                self.session.inner.run(None, self.feeds)
                return (time.perf_counter() - start) * 1000.0
            self._binding.synchronize_inputs()
            start = time.perf_counter()
            self.session.inner.run_with_iobinding(self._binding)
            self._binding.synchronize_outputs()
            return (time.perf_counter() - start) * 1000.0
        except Exception as error:
            raise run_failure(self.session.label, self.feeds, error) from None


class _Driver:
    """Times one model: `concurrency` requests in flight, each from its own thread and runner."""

    def __init__(self, session: Session, feeds: dict[str, np.ndarray], device_id: int, concurrency: int):
        self.runners = [_Runner(session, feeds, device_id) for _ in range(concurrency)]

    def warm(self, runs: int) -> None:
        """`runs` untimed runs; every other runner (a thread's IO binding) runs once too."""
        for _ in range(runs):
            self.runners[0]()
        if runs:
            for runner in self.runners[1:]:
                runner()

    def run_for(self, seconds: float, max_runs: int | None = None, min_runs: int = 1) -> tuple[list[float], float]:
        """Run for about `seconds` (at least `min_runs`, at most `max_runs` requests in all);
        return each request's latency and the wall-clock time from first start to last finish."""
        if len(self.runners) == 1:
            return self._run_alone(seconds, max_runs, min_runs)
        return self._run_concurrently(seconds, max_runs, min_runs)

    def _run_alone(self, seconds, max_runs, min_runs) -> tuple[list[float], float]:
        runner, latencies = self.runners[0], []
        start = time.perf_counter()
        deadline = start + seconds
        while (len(latencies) < min_runs or time.perf_counter() < deadline) and (
                max_runs is None or len(latencies) < max_runs):
            latencies.append(runner())
        return latencies, time.perf_counter() - start

    def _run_concurrently(self, seconds, max_runs, min_runs) -> tuple[list[float], float]:
        latencies: list[float] = []
        failures: list[BaseException] = []
        lock = threading.Lock()
        claimed = itertools.count()
        ready = threading.Barrier(len(self.runners) + 1)

        def claim() -> bool:
            index = next(claimed)
            if max_runs is not None and index >= max_runs:
                return False
            return index < min_runs or time.perf_counter() < deadline

        def loop(runner: _Runner) -> None:
            ready.wait()
            try:
                while claim():
                    elapsed = runner()
                    with lock:
                        latencies.append(elapsed)
            except BaseException as error:  # re-raised in the calling thread
                failures.append(error)

        threads = [threading.Thread(target=loop, args=(runner,), daemon=True) for runner in self.runners]
        for thread in threads:
            thread.start()
        deadline = time.perf_counter() + seconds
        start = time.perf_counter()
        ready.wait()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - start
        if failures:
            raise failures[0]
        return latencies, wall


ProgressCallback = Callable[[int, int | None], None]


def bench(models: Sequence[str | os.PathLike], *, config: SessionConfig = SessionConfig(),
          inputs: str | os.PathLike | dict | None = None,
          shapes: dict[str, tuple[int, ...]] | None = None,
          ranges: dict[str, tuple[float, float]] | None = None,
          sweep: Sequence[SweepPoint] | None = None,
          warmup: int = 10, runs: int | None = None, seconds: float | None = None,
          concurrency: int = 1, progress: ProgressCallback | None = None, seed: int = 0,
          labels: Sequence[str] | None = None) -> BenchResult:
    """Benchmark models on the same inputs (synthesized from the first model unless given).

    Give `runs` (timed runs per model and shape set, default 100) or `seconds` (a wall-clock
    budget per shape set), not both. `sweep` lists shape sets to time one after another,
    each a mapping of input name -> shape or dimension name -> (size,) (see
    inputs.parse_sweep). `concurrency` keeps that many requests in flight on each model's
    session (one thread each).
    """
    _check_arguments(models, inputs, sweep, warmup, runs, seconds, concurrency, labels)
    if runs is None and seconds is None:
        runs = 100
    first = model_io.load(models[0])
    points = list(sweep) if sweep else [{}]
    case_feeds = [_feeds(first, inputs, shapes or {}, ranges or {}, point, seed) for point in points]
    sessions, entries = [], []
    for index, path in enumerate(models):
        loaded = first if index == 0 else model_io.load(path)
        input_io.same_inputs(first, loaded, (str(models[0]), str(path)))
        size = model_io.file_bytes(loaded)
        del loaded
        sessions.append(create_session(path, config, label=labels[index] if labels else None))
        entries.append((labels[index] if labels else str(path), size, sessions[-1].created_seconds,
                        current_rss_bytes()))
    del first
    total = None if runs is None else runs * len(models) * len(points)
    counter = _Progress(progress, total)
    cases = []
    with gc_paused():
        for feeds in case_feeds:
            drivers = [_Driver(session, feeds, config.device_id, concurrency) for session in sessions]
            timed = _time_case(drivers, warmup, runs, seconds, counter)
            batch = _batch_size(feeds)
            cases.append(ShapeCase(
                {name: list(array.shape) for name, array in feeds.items()},
                [ModelBench(label, size, created, latencies, batch, rss, concurrency, wall)
                 for (label, size, created, rss), (latencies, wall) in zip(entries, timed)]))
    metadata = machine.describe(config, sessions[0].ep)
    metadata.update(timing=TIMING_METHOD, warmup=warmup, runs=runs, seconds=seconds, concurrency=concurrency)
    return BenchResult(cases, peak_rss_bytes(), metadata)


def _check_arguments(models, inputs, sweep, warmup, runs, seconds, concurrency, labels) -> None:
    if not models:
        raise InputError("bench needs at least one model")
    if runs is not None and seconds is not None:
        raise InputError("give --runs or --seconds, not both")
    if warmup < 0 or (runs is not None and runs < 1) or (
            seconds is not None and not (0 < seconds < math.inf)):
        raise InputError("--warmup must be >= 0, --runs >= 1 and --seconds a finite number > 0")
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise InputError(f"--concurrency must be between 1 and {MAX_CONCURRENCY}")
    if sweep and inputs is not None:
        raise InputError("--sweep synthesizes inputs at each shape; it cannot be combined with --inputs")
    if labels is not None and len(labels) != len(models):
        raise InputError("give one label per model")


def _feeds(model, inputs, shapes, ranges, point: SweepPoint, seed: int) -> dict[str, np.ndarray]:
    if inputs is not None:
        return input_io.user_feeds(model, inputs)
    input_names = {info.name for info in input_io.signature(model)}
    point_shapes = {name: value for name, value in point.items() if name in input_names}
    overlap = set(point_shapes) & set(shapes)
    if overlap:
        raise InputError(f"{sorted(overlap)[0]!r} is given by both --shape and --sweep")
    symbols = {}
    for name, value in point.items():
        if name not in input_names:
            if len(value) != 1:
                raise InputError(f"--sweep {name}: {name!r} is not an input, so it names a dimension "
                                 f"and takes single sizes, got {'x'.join(map(str, value))}")
            symbols[name] = value[0]
    return input_io.synthesize(model, {**shapes, **point_shapes}, ranges, seed=seed, symbols=symbols)


class _Progress:
    """Counts timed runs and reports them, between slices only."""

    def __init__(self, callback: ProgressCallback | None, total: int | None) -> None:
        self.callback, self.total, self.done = callback, total, 0

    def add(self, count: int) -> bool:
        """Count `count` more timed runs; return whether anything was reported."""
        self.done += count
        if self.callback is None:
            return False
        self.callback(self.done, self.total)
        return True


def _time_case(drivers: list[_Driver], warmup: int, runs: int | None, seconds: float | None,
               progress: _Progress) -> list[tuple[list[float], float]]:
    """Warm every model, then rotate time slices until each has `runs` timed runs (or the
    `seconds` budget is spent at the end of a whole rotation)."""
    for driver in drivers:
        driver.warm(warmup)
    latencies: list[list[float]] = [[] for _ in drivers]
    walls = [0.0] * len(drivers)
    previous = len(drivers) - 1
    deadline = None if seconds is None else time.perf_counter() + seconds
    while True:
        pending = [index for index in range(len(drivers)) if runs is None or len(latencies[index]) < runs]
        if not pending:
            break
        for index in pending:
            driver = drivers[index]
            if previous != index:
                driver.run_for(LEAD_IN_SECONDS)
            budget = None if runs is None else runs - len(latencies[index])
            timed, wall = driver.run_for(SLICE_SECONDS, max_runs=budget)
            latencies[index].extend(timed)
            walls[index] += wall
            # A redrawn progress display keeps the terminal busy: the next slice gets a lead-in.
            previous = None if progress.add(len(timed)) else index
        if deadline is not None and time.perf_counter() >= deadline:
            break
    return list(zip(latencies, walls))


def _batch_size(feeds: dict[str, np.ndarray]) -> int:
    for array in feeds.values():
        if array.ndim:
            return int(array.shape[0])
    return 1
