"""Codebooks for weight sharing: 1-D k-means, and each weight's codebook entry chosen with error feedback.

`kmeans` finds a codebook (k-means++ seeding, Lloyd's iterations, a weighted squared error).
`assign_with_feedback` picks every weight's entry of a linear layer x·W so that the layer's output
changes least on the calibration inputs, not the weight itself: the input dimensions are taken one at
a time, the most energetic first, and the rounding error of each is spread over the dimensions not yet
taken through the inverse of their Gram matrix (Frantar et al. 2023, GPTQ, "act-order", with a fixed
codebook instead of a uniform grid; the loop is quantize.blocks.round_with_feedback, weight-only
int4's gptq's too). MiniLM at 4 bits, one codebook per tensor (2026-12-05, the lowest
cosine of the 256 evaluation sentences of benchmarks/compression_vs_peers.py): each weight's nearest
entry 0.943, with feedback 0.949. The layers' output error on the calibration sentences falls 3 to 10
times, but less of that carries to sentences the Gram matrix never saw: damped by 1% of its mean
diagonal (GPTQ's default) feedback is worse than none (0.89), damped by its whole mean diagonal it
holds on unseen sentences too.
"""

from __future__ import annotations

import numpy as np

from graphopt.passes.quantize.blocks import round_with_feedback

ITERATIONS = 25
SAMPLE = 1 << 20  # Lloyd's iterations on a sample of this many values; every value is assigned at the end
DAMPING = 1.0  # × the Gram matrix's mean diagonal, added to it before it is inverted


def kmeans(values: np.ndarray, clusters: int, seed: int = 0,
           weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """1-D k-means: (sorted centroids [≤ clusters] float32, each value's index). k-means++ seeding on a
    sample, Lloyd's iterations on it, then every value to its nearest centroid. `weights` (one per
    value, ≥ 0) weigh each value's squared error: a centroid is its values' weighted mean."""
    values = values.astype(np.float64).ravel()
    weights = np.ones_like(values) if weights is None else np.broadcast_to(weights, values.shape).astype(np.float64).ravel()
    rng = np.random.default_rng(seed)
    chosen_sample = slice(None) if values.size <= SAMPLE else rng.choice(values.size, SAMPLE, replace=False)
    sample, weight = values[chosen_sample], weights[chosen_sample]
    weight = weight if weight.sum() > 0 else np.ones_like(weight)
    distinct = np.unique(sample)
    if distinct.size <= clusters:
        centroids = distinct
    else:
        centroids = [sample[rng.choice(sample.size, p=weight / weight.sum())]]
        nearest = weight * (sample - centroids[0]) ** 2
        for _ in range(clusters - 1):  # k-means++: each next seed drawn by its weighted squared distance
            total = nearest.sum()
            chosen = sample[rng.choice(sample.size, p=nearest / total)] if total > 0 else sample[rng.integers(sample.size)]
            centroids.append(chosen)
            nearest = np.minimum(nearest, weight * (sample - chosen) ** 2)
        centroids = np.unique(np.array(centroids))
        for _ in range(ITERATIONS):
            assigned = _assign(sample, centroids)
            sums = np.bincount(assigned, weights=weight * sample, minlength=centroids.size)
            counts = np.bincount(assigned, weights=weight, minlength=centroids.size)
            moved = np.sort(np.where(counts > 0, sums / np.where(counts > 0, counts, 1), centroids))
            if np.allclose(moved, centroids, rtol=0, atol=1e-12):
                break
            centroids = moved
    return centroids.astype(np.float32), _assign(values, centroids)


def _assign(values: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Each value's nearest centroid among sorted `centroids`: bisect the midpoints between them."""
    return np.searchsorted((centroids[1:] + centroids[:-1]) / 2, values).astype(np.int64)


def assign_with_feedback(weight: np.ndarray, tables: np.ndarray, columns: np.ndarray,
                         gram: np.ndarray) -> np.ndarray:
    """Each entry of x·W's weight `weight` [K inputs, N outputs]: its index into its column's codebook
    (`tables` [G, C] sorted, padded by repeating their last value; `columns` [N]: each column's codebook),
    chosen one input dimension at a time with the rounding error fed to the dimensions still to come so
    that x·W changes least for inputs of Gram matrix `gram` (xᵀx / count, [K, K])."""
    midpoints = ((tables[:, 1:] + tables[:, :-1]) / 2)[columns]  # [N, C - 1]

    def rounded(_, row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        index = np.sum(midpoints < row[:, None], axis=1)
        return index, tables[columns, index]

    return round_with_feedback(weight.astype(np.float64), gram, DAMPING, rounded)
