"""The guards a lossy result must pass before it is written, whoever asked for it.

kernels: the result must load on the execution provider, and every op the lossy passes brought
in must have a kernel there (else it would run on the CPU with copies both ways; ops the float
model already had are not blamed). latency: the result is timed against the float model in
turns on the EP and refused when it is not `min_speedup` times faster; when the fallback held
layers back, the points of its path are timed in the same run and reported as a small Pareto
table. size: a technique that buys size must shrink the weights' bytes (clustering, reduced
precision) or, for one that zeroes weights (sparsity), the weights as a compressed file stores them.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable, Sequence

import numpy as np
import onnx_ir as ir

from graphopt import model as model_io
from graphopt.errors import GuardRefused, InputError
from graphopt.lossy.fallback import Fallback, Trial
from graphopt.runtime import guard
from graphopt.runtime.providers import SessionConfig, create_session
from graphopt.units import human_bytes

# A result is "not slower" within this fraction of the reference's time (or guard.FLOOR_MS): lone
# timings of one file on a shared 2-core machine move by 1.3x for seconds at a time.
MARGIN = 0.03
RETIMINGS = 5  # a result found slower is timed this many times more, and the median judges
LOAD_CHECK_BYTES = 2**30  # results are loaded in ONNX Runtime up to this size (a session holds a copy)
MAX_ALTERNATIVES = 6  # points of the fallback's path timed for the report


@dataclasses.dataclass
class Alternative:
    """A point of the fallback's path (nothing backed off, then the most sensitive layers one by
    one), timed against float in the latency guard's bench run."""

    backed_off: dict[str, str]
    score: float
    within_tolerance: bool
    latency: guard.LatencyCheck
    chosen: bool
    pareto: bool = False  # no other point scores at least as well and runs at least as fast

    def to_dict(self) -> dict:
        return {"backed_off": self.backed_off, "score": self.score, "within_tolerance": self.within_tolerance,
                "p50_ms": self.latency.result_ms, "speedup": self.latency.speedup, "chosen": self.chosen,
                "pareto": self.pareto}


@dataclasses.dataclass
class SizeCheck:
    """The weights' bytes of the float model and the result, and as zlib compresses them where that
    is what judges (None otherwise)."""

    float_bytes: int
    result_bytes: int
    float_compressed: int | None = None
    result_compressed: int | None = None

    @property
    def ratio(self) -> float:
        if self.float_compressed is None or self.result_compressed is None:
            return self.result_bytes / max(self.float_bytes, 1)
        return self.result_compressed / max(self.float_compressed, 1)

    def describe(self) -> str:
        weights = f"weights {human_bytes(self.float_bytes)} → {human_bytes(self.result_bytes)}"
        if self.float_compressed is None or self.result_compressed is None:
            return f"{weights} ({self.ratio:.3f}x)"
        return (f"{weights}, compressed {human_bytes(self.float_compressed)} → "
                f"{human_bytes(self.result_compressed)} ({self.ratio:.3f}x)")

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "ratio": self.ratio}


def check_kernels(float_model: ir.Model, model: ir.Model, config: SessionConfig, force: bool,
                  label: str = "the result") -> None:
    """Refuse a result ONNX Runtime cannot load on the EP (a kernel missing for the model's opset:
    QuantizeLinear-28) — loaded only up to LOAD_CHECK_BYTES of parameters (a bigger one is loaded by
    validation) — or with ops the float model lacked and the EP has no kernel for."""
    ep = config.resolved_ep()
    try:
        if model_io.parameter_bytes(model) <= LOAD_CHECK_BYTES:
            create_session(model, config, label=label)
    except InputError as error:
        if not force:
            raise GuardRefused(f"{error}; nothing was written (--force writes it)") from None
    missing = sorted(set(guard.missing_kernels(model, ep)) - set(guard.missing_kernels(float_model, ep)))
    if missing and not force:
        raise GuardRefused(f"{ep} has no kernel for {', '.join(missing)}: those nodes would run on the "
                           "CPU with copies both ways; nothing was written (--force writes it)")


def refuse_slower(measure: Callable[[int], guard.LatencyCheck], min_speedup: float, force: bool,
                  first: guard.LatencyCheck | None = None, remedy: str = " (--force writes it)"
                  ) -> guard.LatencyCheck:
    """The latency guard: GuardRefused (both p50s in the message) for a result under `min_speedup`
    times the reference's speed, unless `force`. `measure(runs)` times reference and result in turns
    (`first`, when given, is a timing already taken). "Not slower" (1.0) allows MARGIN or FLOOR_MS,
    whichever is more. A result found short is timed RETIMINGS more times and refused only when their
    median agrees: lone timings of one file on a shared machine move by 1.3x for seconds, and one
    longer retiming still found YOLOv8's O3, which changed no node, slower than itself."""
    def short(check: guard.LatencyCheck) -> bool:
        if min_speedup != 1.0:
            return check.speedup < min_speedup
        return check.speedup < 1 - MARGIN and check.result_ms - check.float_ms >= guard.FLOOR_MS

    check = first or measure(guard.GUARD_RUNS)
    if short(check):
        again = sorted((measure(guard.GUARD_RUNS) for _ in range(RETIMINGS)), key=lambda item: item.speedup)
        check = again[len(again) // 2]
    if not short(check):
        check.within_noise = check.speedup < 1.0
        return check
    if force:
        check.forced = True
        return check
    wanted = f"slower than the {check.baseline} one (by more than {MARGIN:.0%} and {guard.FLOOR_MS * 1000:.0f} µs " \
        f"in the median of {RETIMINGS} timings)" if min_speedup == 1.0 else \
        f"under {min_speedup:.2f}x the {check.baseline}'s speed (the median of {RETIMINGS} timings)"
    raise GuardRefused(f"the {check.label} model is {wanted}: {check.describe()}; nothing was written{remedy}")


def time_path(float_model: ir.Model, chosen: ir.Model, fallback: Fallback | None,
              build: Callable[[dict[str, str]], ir.Model], config: SessionConfig, feeds, label: str
              ) -> tuple[guard.LatencyCheck, list[Alternative]]:
    """The chosen result timed against float; with a fallback path, every timed point of it in the
    same bench run (the chosen one among them), marked chosen and Pareto."""
    path = _path_to_time(fallback)
    if len(path) < 2:
        return guard.compare_latency(float_model, chosen, config, feeds, label=label), []
    builders = [(lambda: chosen) if trial.backed_off == fallback.backed_off else
                (lambda backed_off=trial.backed_off: build(backed_off)) for trial in path]
    checks = guard.compare_latencies(float_model, builders, config, feeds, label=label)
    alternatives = pareto([Alternative(trial.backed_off, trial.score, trial.within_tolerance, check,
                                       trial.backed_off == fallback.backed_off) for trial, check in zip(path, checks)])
    return next(item.latency for item in alternatives if item.chosen), alternatives


def _path_to_time(fallback: Fallback | None) -> list[Trial]:
    """The fallback path's points to time: all of them up to MAX_ALTERNATIVES, else evenly spaced
    ones, the first and the chosen among them."""
    if fallback is None or len(fallback.path) < 2:
        return []
    path = fallback.path
    chosen = next((index for index, trial in enumerate(path) if trial.backed_off == fallback.backed_off), 0)
    picked = {round(index * (len(path) - 1) / (MAX_ALTERNATIVES - 2)) for index in range(MAX_ALTERNATIVES - 1)} \
        if len(path) > MAX_ALTERNATIVES else set(range(len(path)))
    return [path[index] for index in sorted(picked | {0, chosen})]


def pareto(alternatives: Sequence[Alternative]) -> list[Alternative]:
    """Mark the points no other point beats on both score and latency."""
    for item in alternatives:
        item.pareto = not any(other.score >= item.score and other.latency.result_ms <= item.latency.result_ms
                              and (other.score > item.score or other.latency.result_ms < item.latency.result_ms)
                              for other in alternatives)
    return list(alternatives)


def check_size(float_model: ir.Model, model: ir.Model, max_size: float, force: bool,
               compressed: bool = True) -> SizeCheck:
    """The weights' bytes compared, as a compressed file stores them (zlib, fast level) with
    `compressed`; refused unless the result's are at most `max_size` times float's."""
    check = SizeCheck(model_io.parameter_bytes(float_model), model_io.parameter_bytes(model))
    if compressed:
        check.float_compressed, check.result_compressed = _compressed_bytes(float_model), _compressed_bytes(model)
    if check.ratio > max_size and not force:
        raise GuardRefused(f"the result is not smaller than the float model: {check.describe()}; nothing was "
                           "written (--force writes it)")
    return check


def _compressed_bytes(model: ir.Model) -> int:
    total = 0
    for graph in model.graphs():
        for value in graph.initializers.values():
            if value.const_value is not None:
                total += len(zlib.compress(np.ascontiguousarray(value.const_value.numpy()).tobytes(), 1))
    return total
