"""Activation statistics for the lossy passes: the model is run here, the passes only get numbers.

`collect` measures everything a pipeline step asks for (Wanted) in one pass over the data per
chunk of values; channel_stats, histograms and channel_means are its single-statistic forms.
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
    mean: np.ndarray | None = None  # mean x per channel, float64


def channel_stats(model: ir.Model, names: Sequence[str], input_sets: Iterable[dict[str, np.ndarray]],
                  config: SessionConfig = SessionConfig(opt_level="disable"), *,
                  gram: bool = False) -> dict[str, ChannelStats]:
    """{value name: its statistics over every input set and position, per channel of the last axis};
    `gram` adds each value's Gram matrix (channels² floats per value). `input_sets` is read once
    per chunk of values (one session per chunk), so it must be re-iterable (a list, CalibrationData)."""
    return collect(model, Wanted(channels=set(names), gram=gram), input_sets, config).channels


def channel_means(model: ir.Model, axes: dict[str, int], input_sets: Iterable[dict[str, np.ndarray]],
                  config: SessionConfig = SessionConfig(opt_level="disable")) -> dict[str, np.ndarray]:
    """{value name: its mean per channel of axis `axes[name]` (a Conv input's 1, a MatMul's -1),
    float64, over every input set and position}: what bias correction multiplies the weights'
    rounding error by."""
    return collect(model, Wanted(means=dict(axes)), input_sets, config).means


def histograms(model: ir.Model, names: Sequence[str], input_sets: Iterable[dict[str, np.ndarray]],
               config: SessionConfig = SessionConfig(opt_level="disable"), *, bins: int = DEFAULT_BINS,
               progress: Callable[[int, int], None] | None = None) -> dict[str, Histogram]:
    """{value name: its histogram over every input set}, float values that held a finite value
    only; each run's arrays are added and dropped (memory: `bins` counts per value), and
    `progress(runs done, runs in all)` is called after each run."""
    return collect(model, Wanted(histograms=set(names), bins=bins), input_sets, config,
                   progress=progress).histograms


@dataclasses.dataclass
class Wanted:
    """What collect measures, by value name: channel statistics (with Gram matrices when `gram`),
    histograms, means per channel of an axis, and largest magnitudes."""

    channels: set[str] = dataclasses.field(default_factory=set)
    gram: bool = False
    axes: dict[str, int] = dataclasses.field(default_factory=dict)  # a channel axis other than the last (a Conv input's 1)
    histograms: set[str] = dataclasses.field(default_factory=set)
    means: dict[str, int] = dataclasses.field(default_factory=dict)
    largest: set[str] = dataclasses.field(default_factory=set)
    bins: int = DEFAULT_BINS

    def names(self) -> list[str]:
        return sorted(self.channels | self.histograms | set(self.means) | self.largest)


@dataclasses.dataclass
class Measured:
    channels: dict[str, ChannelStats] = dataclasses.field(default_factory=dict)
    histograms: dict[str, Histogram] = dataclasses.field(default_factory=dict)
    means: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    largest: dict[str, float] = dataclasses.field(default_factory=dict)


def collect(model: ir.Model, wanted: Wanted, input_sets: Iterable[dict[str, np.ndarray]],
            config: SessionConfig = SessionConfig(opt_level="disable"), *,
            progress: Callable[[int, int], None] | None = None) -> Measured:
    """Every statistic `wanted` asks for, in one pass over the data per chunk of values: each run's
    arrays go to every measurement that wants them (`input_sets` must be re-iterable: a list,
    CalibrationData). `progress(runs done, runs in all)` is called after each run."""
    measured = Measured()
    sums: dict[str, tuple[np.ndarray, int]] = {}
    for done, total, chunk, arrays in _runs(model, wanted.names(), input_sets, config):
        for value, array in zip(chunk, arrays):
            if value.name in wanted.channels:
                _add_channels(measured.channels, value.name, array, wanted.gram, wanted.axes.get(value.name, -1))
            if value.name in wanted.histograms and np.issubdtype(np.asarray(array).dtype, np.floating):
                measured.histograms.setdefault(value.name, Histogram.empty(wanted.bins)).add(array)
            if value.name in wanted.means:
                _add_means(sums, value.name, array, wanted.means[value.name])
            if value.name in wanted.largest and isinstance(array, np.ndarray) and array.dtype.kind == "f" and array.size:
                seen = measured.largest.get(value.name, 0.0)
                measured.largest[value.name] = float(np.maximum(_largest(array), seen))  # a NaN stays
        if progress is not None:
            progress(done, total)
    measured.histograms = {name: item for name, item in measured.histograms.items() if item.high >= item.low}
    measured.means = {name: total / count for name, (total, count) in sums.items()}
    return measured


def _add_channels(stats: dict[str, ChannelStats], name: str, array, gram: bool, axis: int = -1) -> None:
    array = np.asarray(array, dtype=np.float32)
    if array.ndim == 0 or array.size == 0:
        return
    rows = np.moveaxis(array, axis, -1).reshape(-1, array.shape[axis])
    peak, square = np.abs(rows).max(axis=0), np.square(rows, dtype=np.float64).sum(axis=0)
    total = rows.sum(axis=0, dtype=np.float64)
    products = rows.T.astype(np.float64) @ rows if gram else None
    seen = stats.get(name)
    if seen is None:
        stats[name] = ChannelStats(peak, square / len(rows), len(rows), None if products is None else products / len(rows),
                                   total / len(rows))
        return
    count = seen.count + len(rows)
    stats[name] = ChannelStats(np.maximum(seen.peak, peak), (seen.mean_square * seen.count + square) / count, count,
                               None if products is None else (seen.gram * seen.count + products) / count,
                               (seen.mean * seen.count + total) / count)


def _largest(array: np.ndarray) -> float:
    """The largest magnitude, float32's extremes and infinities aside (what exporters write for "minus
    infinity" in an attention mask: a format with a smaller range has its own extremes for it); NaN
    where there is a NaN."""
    magnitude = np.abs(array)
    if np.isnan(magnitude).any():
        return float("nan")
    ordinary = magnitude[magnitude < np.finfo(np.float32).max]
    return float(ordinary.max()) if ordinary.size else 0.0


def _add_means(sums: dict[str, tuple[np.ndarray, int]], name: str, array, axis: int) -> None:
    array = np.asarray(array, dtype=np.float64)
    if array.ndim == 0 or array.size == 0:
        return
    rows = np.moveaxis(array, axis, -1).reshape(-1, array.shape[axis])
    total, count = sums.get(name, (0.0, 0))
    sums[name] = (total + rows.sum(axis=0), count + len(rows))


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
