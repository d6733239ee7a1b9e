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
    `levels` quantization bins: argmin over t of KL(P_t ‖ Q_t)."""
    bins = counts.size
    width = limit / bins
    last = int(np.flatnonzero(counts)[-1]) + 1 if counts.any() else 0
    if last <= levels:
        return last * width  # fewer occupied bins than levels: nothing is lost keeping them all
    stride = max(1, bins // 512)
    candidates = list(range(levels, last, stride)) + [last]
    best, best_divergence = last, math.inf
    for end in candidates:
        divergence = _clipped_divergence(counts, end, levels)
        if divergence < best_divergence:
            best, best_divergence = end, divergence
    return best * width


def _clipped_divergence(counts: np.ndarray, end: int, levels: int) -> float:
    """KL(P ‖ Q): P the first `end` bins with the tail added to the last, Q those `end` bins
    merged into `levels` groups and spread evenly back over each group's non-empty bins."""
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
