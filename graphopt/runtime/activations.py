"""Activation statistics for the quantizers: the model is run here, the passes only get numbers.

channel_stats runs a float model on input sets with chosen intermediate values exposed as
outputs (a chunk at a time) and keeps, per value and channel of its last axis, the largest
magnitude (what SmoothQuant needs to move outliers into the weights) and the mean square
(how much each input channel of a linear layer matters to its output: the int4 scale search
weighs its error by it); on request also the channels' Gram matrix xᵀx / count, GPTQ's Hessian.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import numpy as np
import onnx_ir as ir

from graphopt.runtime.providers import SessionConfig
from graphopt.runtime.validate import exposed_runs

VALUES_PER_RUN = 64


@dataclasses.dataclass
class ChannelStats:
    peak: np.ndarray         # max |x| per channel
    mean_square: np.ndarray  # mean x² per channel
    count: int               # positions seen
    gram: np.ndarray | None = None  # mean xᵀx, [channels, channels] float64, when asked for


def channel_stats(model: ir.Model, names: Sequence[str], input_sets: Iterable[dict[str, np.ndarray]],
                  config: SessionConfig = SessionConfig(opt_level="disable"), *,
                  gram: bool = False) -> dict[str, ChannelStats]:
    """{value name: its statistics over every input set and position, per channel of the last axis};
    `gram` adds each value's Gram matrix (channels² floats per value). `input_sets` is read once
    per chunk of values (one session per chunk), so it must be re-iterable (a list, CalibrationData)."""
    values = {value.name: value for node in model.graph for value in node.outputs}
    values.update((value.name, value) for value in model.graph.inputs)
    wanted = [values[name] for name in names if name in values]
    stats: dict[str, ChannelStats] = {}
    for start in range(0, len(wanted), VALUES_PER_RUN):
        chunk = wanted[start:start + VALUES_PER_RUN]
        for arrays in exposed_runs(model, chunk, input_sets, config):
            for value, array in zip(chunk, arrays):
                array = np.asarray(array, dtype=np.float32)
                if array.ndim == 0 or array.size == 0:
                    continue
                rows = array.reshape(-1, array.shape[-1])
                peak, square = np.abs(rows).max(axis=0), np.square(rows, dtype=np.float64).sum(axis=0)
                products = rows.T.astype(np.float64) @ rows if gram else None
                seen = stats.get(value.name)
                if seen is None:
                    stats[value.name] = ChannelStats(peak, square / len(rows), len(rows),
                                                     None if products is None else products / len(rows))
                    continue
                count = seen.count + len(rows)
                stats[value.name] = ChannelStats(
                    np.maximum(seen.peak, peak), (seen.mean_square * seen.count + square) / count, count,
                    None if products is None else (seen.gram * seen.count + products) / count)
    return stats
