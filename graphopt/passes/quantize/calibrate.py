"""Calibration: the range static int8 gives each activation, chosen from its histogram.

The histograms arrive from graphopt.runtime.histograms (the model runs there, and a histogram
streamed over many samples is exactly the one over all of them at once); this module only turns
them into ranges for QuantizeLinear's scales and zero points.

Calibrators, each a range (low, high) that includes 0 (a zero point must be exact):
  minmax      the exact min and max
  percentile  the `percentile` and 100 − `percentile` quantiles of x (bin edges taken outward;
              99.999 by default, as onnxruntime's), never beyond min and max
  entropy     the threshold t minimizing KL(P ‖ Q) between the |x| histogram clipped at t (the
              tail folded into the last bin) and its quantization to `levels` bins (TensorRT's
              method, Migacz 2017): 128 levels for signed data, 256 for data that is never
              negative (u8 spends all its levels on [0, t]); the range is [max(min, −t), min(max, t)]
"""

from __future__ import annotations

import math

import numpy as np

from graphopt.errors import InputError
from graphopt.runtime.histograms import Histogram

DEFAULT_PERCENTILE = 99.999
SEARCH_BINS = 2048  # the entropy search's resolution, as TensorRT's
SAMPLES_PER_BIN = 16
CALIBRATORS = ("minmax", "percentile", "entropy")


def minmax_range(histogram: Histogram) -> tuple[float, float]:
    _check_seen(histogram)
    return min(histogram.low, 0.0), max(histogram.high, 0.0)


def percentile_range(histogram: Histogram, percentile: float = DEFAULT_PERCENTILE) -> tuple[float, float]:
    if not 50.0 < percentile <= 100.0:
        raise InputError(f"--percentile {percentile}: it must be above 50 and at most 100")
    _check_seen(histogram)
    if histogram.limit == 0:
        return 0.0, 0.0
    cumulative = np.cumsum(histogram.counts)
    total = cumulative[-1]
    edges = histogram.edges()
    # the bin holding the quantile: its lower edge below, its upper edge above
    below = int(np.searchsorted(cumulative, total * (100.0 - percentile) / 100.0, side="left"))
    above = int(np.searchsorted(cumulative, total * percentile / 100.0, side="left"))
    low = max(float(edges[min(below, edges.size - 1)]), histogram.low)
    high = min(float(edges[min(above + 1, edges.size - 1)]), histogram.high)
    return min(low, 0.0), max(high, 0.0)


def entropy_range(histogram: Histogram, levels: int | None = None) -> tuple[float, float]:
    _check_seen(histogram)
    if histogram.limit == 0:
        return 0.0, 0.0
    levels = levels or (256 if histogram.low >= 0 else 128)
    threshold = entropy_threshold(histogram.folded(), histogram.limit, levels)
    return min(max(histogram.low, -threshold), 0.0), max(min(histogram.high, threshold), 0.0)


def entropy_threshold(counts: np.ndarray, limit: float, levels: int) -> float:
    """The clipping threshold of |x| (counts over [0, limit)) that keeps most information at
    `levels` quantization bins: argmin over t of KL(P_t ‖ Q_t). The search runs on at most
    SEARCH_BINS bins up to the largest value, and on fewer when the samples are few (at least
    SAMPLES_PER_BIN per bin on average): a sparse histogram's divergence is mostly noise."""
    occupied = np.flatnonzero(counts)
    if not occupied.size:
        return 0.0
    last = int(occupied[-1]) + 1
    bins = int(np.clip(int(counts.sum()) // SAMPLES_PER_BIN, levels, SEARCH_BINS))
    factor = -(-last // bins)
    coarse = np.add.reduceat(counts[:last], np.arange(0, last, factor))
    width = limit / counts.size * factor
    if coarse.size <= levels:
        return last * limit / counts.size  # fewer bins than levels: keeping them all loses nothing
    stride = max(1, coarse.size // 512)
    candidates = list(range(levels, coarse.size, stride)) + [coarse.size]
    divergences = [_clipped_divergence(coarse, end, levels) for end in candidates]
    best = candidates[int(np.argmin(divergences))]
    return last * limit / counts.size if best == coarse.size else best * width


def _clipped_divergence(counts: np.ndarray, end: int, levels: int) -> float:
    """KL(P ‖ Q): P the first `end` bins with the tail added to the last, Q those `end` bins
    merged into `levels` groups and spread evenly back over each group's non-empty bins."""
    if not counts[:end].any():
        return math.inf  # everything in the tail: nothing left to quantize
    reference = counts[:end].astype(np.float64)
    reference[-1] += counts[end:].sum()
    starts = (np.arange(levels) * end) // levels  # group boundaries, as even as end allows
    kept = counts[:end].astype(np.float64)
    sums = np.add.reduceat(kept, starts)
    occupied = np.add.reduceat((kept > 0).astype(np.float64), starts)
    group = np.repeat(np.arange(levels), np.diff(np.append(starts, end)))
    spread = np.where(kept > 0, sums[group] / np.maximum(occupied[group], 1), 0.0)
    p = reference / reference.sum()
    q = spread / spread.sum()
    mask = p > 0
    if np.any(q[mask] == 0):  # the folded tail bin was empty before the fold
        q = np.where(mask & (q == 0), 1e-12, q)
        q /= q.sum()
    return float(np.sum(p[mask] * np.log(p[mask] / q[mask])))


def calibrated_range(histogram: Histogram, calibrator: str, percentile: float = DEFAULT_PERCENTILE) -> tuple[float, float]:
    if calibrator == "minmax":
        return minmax_range(histogram)
    if calibrator == "percentile":
        return percentile_range(histogram, percentile)
    if calibrator == "entropy":
        return entropy_range(histogram)
    raise InputError(f"--calibrator {calibrator!r}: choose from {', '.join(CALIBRATORS)}")


def _check_seen(histogram: Histogram) -> None:
    if histogram.high < histogram.low:
        raise ValueError("an empty histogram has no range (no finite value was seen)")
