"""Activation histograms for static int8 calibration, merged exactly as samples stream in.

`bins` equal bins over [-limit, limit), limit the smallest power of two above every |x| seen so
far, plus the exact min and max. A value lands in bin floor(x / width) + bins / 2 — exact, since
the width is a power of two. When a sample exceeds the limit, the limit doubles and adjacent
pairs of bins merge (the old bins sit in the middle half of the new ones), so a histogram
streamed over many samples is the one computed over all of them at once, bin for bin, and its
memory is `bins` counts however many samples there are. graphopt.runtime.activations.histograms
collects them for a model's values; graphopt.passes.quantize.calibrate turns them into ranges.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from graphopt.errors import InputError

DEFAULT_BINS = 16384  # 128 KiB of counts per tensor: entropy needs the bulk to span many bins


@dataclasses.dataclass
class Histogram:
    """Counts of x in `counts.size` equal bins over [-limit, limit), and the exact extremes."""

    counts: np.ndarray  # int64 [bins]
    limit: float = 0.0  # a power of two above every |x|; 0 while nothing non-zero was seen
    low: float = math.inf
    high: float = -math.inf

    @classmethod
    def empty(cls, bins: int = DEFAULT_BINS) -> Histogram:
        if bins < 8 or bins % 4:
            raise InputError(f"calibration histograms need a multiple of 4 bins, at least 8, got {bins}")
        return cls(np.zeros(bins, np.int64))

    @classmethod
    def of(cls, array: np.ndarray, bins: int = DEFAULT_BINS) -> Histogram:
        histogram = cls.empty(bins)
        histogram.add(array)
        return histogram

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    @property
    def width(self) -> float:
        return 2 * self.limit / self.counts.size

    def edges(self) -> np.ndarray:
        """The bins' bounds, counts.size + 1 of them."""
        return np.linspace(-self.limit, self.limit, self.counts.size + 1)

    def add(self, array: np.ndarray) -> None:
        values = np.asarray(array, dtype=np.float64).reshape(-1)
        values = values[np.isfinite(values)]
        if not values.size:
            return
        low, high = float(values.min()), float(values.max())
        self.low, self.high = min(self.low, low), max(self.high, high)
        peak = max(abs(low), abs(high))
        if peak > 0 and peak >= self.limit:
            self._grow(_power_of_two_above(peak))
        if self.limit == 0:  # only zeros so far: they sit in the middle bin at any limit
            self.counts[self.counts.size // 2] += values.size
            return
        index = np.floor(values / self.width).astype(np.int64) + self.counts.size // 2
        self.counts += np.bincount(index, minlength=self.counts.size)

    def merge(self, other: Histogram) -> None:
        """Add another histogram of the same bin count (another worker's samples)."""
        if other.counts.size != self.counts.size:
            raise ValueError(f"histograms of {self.counts.size} and {other.counts.size} bins do not merge")
        other = dataclasses.replace(other, counts=other.counts.copy())
        limit = max(self.limit, other.limit)
        self._grow(limit)
        other._grow(limit)
        self.counts += other.counts
        self.low, self.high = min(self.low, other.low), max(self.high, other.high)

    def folded(self) -> np.ndarray:
        """Counts of |x| in counts.size / 2 bins over [0, limit) (exact: the bins are symmetric)."""
        half = self.counts.size // 2
        return self.counts[half:] + self.counts[:half][::-1]

    def _grow(self, limit: float) -> None:
        """Double the limit until it reaches `limit`, merging pairs of bins."""
        if self.limit == 0:
            self.limit = limit
            return
        bins = self.counts.size
        while self.limit < limit:
            merged = self.counts.reshape(-1, 2).sum(axis=1)  # bins/2 counts, each two old bins
            self.counts = np.zeros(bins, np.int64)
            self.counts[bins // 4: bins // 4 + bins // 2] = merged
            self.limit *= 2


def _power_of_two_above(value: float) -> float:
    return math.ldexp(1.0, math.frexp(value)[1])  # frexp: value = m·2^e, 0.5 <= m < 1, so 2^e > value
