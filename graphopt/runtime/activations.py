"""Activation statistics for the quantizers: the model is run here, the passes only get numbers.

channel_stats runs a float model on input sets with chosen intermediate values exposed as
outputs (a chunk at a time) and keeps, per value and channel of its last axis, the largest
magnitude (what SmoothQuant needs to move outliers into the weights) and the mean square
(how much each input channel of a linear layer matters to its output: the int4 scale search
weighs its error by it); on request also the channels' Gram matrix xᵀx / count, GPTQ's Hessian.
`histograms` keeps each value's whole distribution instead (static int8's calibration), merged
as the runs come (graphopt.runtime.histograms); `channel_means` the mean per channel of a chosen
axis (static int8's bias correction).
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

from graphopt import model as model_io
from graphopt.runtime.histograms import DEFAULT_BINS, Histogram
from graphopt.runtime.providers import SessionConfig, create_session
from graphopt.runtime.validate import exposed_runs, session_runs

VALUES_PER_RUN = 64
SAVE_ONCE_BYTES = 64 * 2**20  # models this big are written once for the statistics' sessions


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
    stats: dict[str, ChannelStats] = {}
    for _, _, chunk, arrays in _runs(model, names, input_sets, config):
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


def channel_means(model: ir.Model, axes: dict[str, int], input_sets: Iterable[dict[str, np.ndarray]],
                  config: SessionConfig = SessionConfig(opt_level="disable")) -> dict[str, np.ndarray]:
    """{value name: its mean per channel of axis `axes[name]` (a Conv input's 1, a MatMul's -1),
    float64, over every input set and position}: what bias correction multiplies the weights'
    rounding error by."""
    sums: dict[str, tuple[np.ndarray, int]] = {}
    for _, _, chunk, arrays in _runs(model, list(axes), input_sets, config):
        for value, array in zip(chunk, arrays):
            array = np.asarray(array, dtype=np.float64)
            if array.ndim == 0 or array.size == 0:
                continue
            rows = np.moveaxis(array, axes[value.name], -1).reshape(-1, array.shape[axes[value.name]])
            total, count = sums.get(value.name, (0.0, 0))
            sums[value.name] = (total + rows.sum(axis=0), count + len(rows))
    return {name: total / count for name, (total, count) in sums.items()}


def histograms(model: ir.Model, names: Sequence[str], input_sets: Iterable[dict[str, np.ndarray]],
               config: SessionConfig = SessionConfig(opt_level="disable"), *, bins: int = DEFAULT_BINS,
               progress: Callable[[int, int], None] | None = None) -> dict[str, Histogram]:
    """{value name: its histogram over every input set}, float values that held a finite value
    only; each run's arrays are added and dropped (memory: `bins` counts per value), and
    `progress(runs done, runs in all)` is called after each run."""
    result: dict[str, Histogram] = {}
    for done, total, chunk, arrays in _runs(model, names, input_sets, config):
        for value, array in zip(chunk, arrays):
            if np.issubdtype(np.asarray(array).dtype, np.floating):
                result.setdefault(value.name, Histogram.empty(bins)).add(array)
        if progress is not None:
            progress(done, total)
    return {name: histogram for name, histogram in result.items() if histogram.high >= histogram.low}


def _runs(model: ir.Model, names: Sequence[str], input_sets: Iterable[dict[str, np.ndarray]],
          config: SessionConfig) -> Iterator[tuple[int, int, list[ir.Value], list]]:
    """(runs done, runs in all, the values, their arrays) for each input set and chunk of at most
    VALUES_PER_RUN of the named values (one session per chunk: `input_sets` is read once per
    chunk, so it must be re-iterable; runs in all is 0 when it has no len())."""
    values = {value.name: value for node in model.graph for value in node.outputs}
    values.update((value.name, value) for value in model.graph.inputs)
    wanted = [values[name] for name in names if name in values]
    chunks = [wanted[start:start + VALUES_PER_RUN] for start in range(0, len(wanted), VALUES_PER_RUN)]
    samples = len(input_sets) if hasattr(input_sets, "__len__") else 0
    with _saved_once(model, len(chunks)) as path:
        for number, chunk in enumerate(chunks):
            runs = exposed_runs(model, chunk, input_sets, config) if path is None else \
                _file_runs(path, chunk, input_sets, config)
            for done, arrays in enumerate(runs, 1):
                yield number * samples + done, len(chunks) * samples, chunk, arrays


@contextlib.contextmanager
def _saved_once(model: ir.Model, chunks: int) -> Iterator[Path | None]:
    """A model of SAVE_ONCE_BYTES or more run in several chunks is written once, its tensors in
    external data, and each chunk's session loads that file: an in-memory model reaches ONNX
    Runtime serialized, its weights held three more times while the session starts (BERT-base's
    entropy calibration peaked at 2.3 GiB for a 0.41 GiB model)."""
    if chunks < 2 or model_io.parameter_bytes(model) < SAVE_ONCE_BYTES:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="graphopt-calibration-") as folder:
        path = Path(folder) / "model.onnx"
        model_io.save(model, path, external_data=True)
        yield path


def _file_runs(path: Path, values: Sequence[ir.Value], input_sets: Iterable[dict[str, np.ndarray]],
               config: SessionConfig) -> Iterator[list]:
    """exposed_runs on the saved model: its graph (not its tensors) rewritten with `values` as outputs."""
    proto = onnx.load(path, load_external_data=False)
    known = {output.name for output in proto.graph.output}
    proto.graph.output.extend(onnx.ValueInfoProto(name=value.name) if value.dtype is None else
                              onnx.helper.make_tensor_value_info(value.name, value.dtype.value, None)
                              for value in values if value.name not in known)
    exposed = path.with_name("exposed.onnx")
    onnx.save(proto, exposed)
    session = create_session(exposed, config, label="the model with intermediate values exposed")
    yield from session_runs(session, values, input_sets)
