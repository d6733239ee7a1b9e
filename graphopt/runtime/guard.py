"""What the lossy guards measure (graphopt.lossy.guards judges): latency against float, kernels.

compare_latency times the float model and a result in turns (graphopt's bench: time slices,
each model owning the cores while timed) on the target execution provider, at the user's inputs
or at batch 1, sequence 128. missing_kernels lists the ops ONNX Runtime has no kernel for on a
provider (they would fall back to the CPU, with copies both ways).
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx_ir as ir

from graphopt import model as model_io
from graphopt.runtime import bench as bench_module
from graphopt.runtime import inputs as input_io
from graphopt.runtime.kernels import provider_ops
from graphopt.runtime.providers import EP_NAMES, SessionConfig
from graphopt.units import speed_text

GUARD_DIMS = {"batch": 1, "sequence": 128, "other": 64, "spatial": 224}
GUARD_RUNS = 40
# Slower by less than this is not refused (see graphopt.lossy.guards.refuse_slower): the p50 of a
# 20 µs model moves that much between timings, and int8 cannot win anything on a 15 µs model while
# making it 4x smaller (the zoo's MLP, digits CNN).
FLOOR_MS = 0.005


@dataclasses.dataclass
class LatencyCheck:
    """p50 latencies of the float model and a result made from it, timed in turns on one EP."""

    float_ms: float
    result_ms: float
    ep: str
    shapes: dict[str, list[int]]
    label: str = "quantized"  # what the result is, for the reader
    baseline: str = "float"  # what it is timed against ("input" for float passes)
    forced: bool = False  # the guard refused it and --force wrote it anyway
    within_noise: bool = False  # slower, but within the guard's allowance: let through

    @property
    def speedup(self) -> float:
        return self.float_ms / self.result_ms if self.result_ms else float("inf")

    @property
    def slower(self) -> bool:
        return self.result_ms > self.float_ms

    def describe(self) -> str:
        shapes = ", ".join(f"{name} {list(shape)}" for name, shape in self.shapes.items())
        return (f"{self.baseline} p50 {self.float_ms:.3f} ms, {self.label} p50 {self.result_ms:.3f} ms "
                f"({speed_text(self.speedup)}) on {self.ep} at {shapes}" +
                ("; within what the guard allows for timing noise (3%, or 5 µs)" if self.within_noise else ""))

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "speedup": self.speedup}


def guard_feeds(model: ir.Model, inputs=None, shapes=None, ranges=None) -> dict[str, np.ndarray]:
    """What the guard times: the user's inputs (an .npz path or {name: array}), else inputs
    synthesized at the user's shapes and, where none is given, the guard's (GUARD_DIMS)."""
    if inputs is not None:
        return input_io.user_feeds(model, inputs)
    return input_io.synthesize(model, shapes, ranges, defaults=GUARD_DIMS)


def compare_latency(float_model: ir.Model, result: ir.Model, config: SessionConfig,
                    feeds: dict[str, np.ndarray] | None = None, runs: int = GUARD_RUNS,
                    label: str = "quantized") -> LatencyCheck:
    """Time both models in turns (ONNX Runtime's graph optimizations on, as deployed)."""
    return compare_latencies(float_model, [lambda: result], config, feeds, runs, label)[0]


def compare_latencies(float_model: ir.Model, builders: Sequence[Callable[[], ir.Model]], config: SessionConfig,
                      feeds: dict[str, np.ndarray] | None = None, runs: int = GUARD_RUNS,
                      label: str = "quantized") -> list[LatencyCheck]:
    """The float model against each model the builders make (built and saved one at a time), all
    timed in turns in one bench run: one LatencyCheck per builder."""
    if feeds is None:
        feeds = input_io.synthesize(float_model, defaults=GUARD_DIMS)
    with tempfile.TemporaryDirectory(prefix="graphopt-guard-") as folder:
        paths = [Path(folder) / "float.onnx"]
        model_io.save(float_model, paths[0])
        for index, build in enumerate(builders):
            paths.append(Path(folder) / f"{label}_{index}.onnx")
            model_io.save(build(), paths[-1])
        labels = ["float"] + ([label] if len(builders) == 1 else [f"{label} {index}" for index in range(len(builders))])
        result = bench_module.bench(paths, config=config, inputs=feeds, warmup=5, runs=runs, labels=labels)
    first, *others = result.models
    shapes = {name: list(array.shape) for name, array in feeds.items()}
    return [LatencyCheck(first.p50_ms, other.p50_ms, config.resolved_ep(), shapes, label) for other in others]


def missing_kernels(model: ir.Model, ep: str) -> list[str]:
    """'domain::Op' for each op of the model without a kernel on `ep` (empty when ONNX Runtime
    does not list that provider's kernels: nothing can be checked then). Constant needs none:
    ONNX Runtime turns it into an initializer at load."""
    kernels = provider_ops(EP_NAMES.get(ep, ep))
    if not kernels:
        return []
    missing = set()
    for graph in model.graphs():
        for node in graph:
            if ("" if node.domain == "ai.onnx" else node.domain, node.op_type) not in kernels and node.op_type != "Constant":
                missing.add(f"{node.domain + '::' if node.domain else ''}{node.op_type}")
    return sorted(missing)
