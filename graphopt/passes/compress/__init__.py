"""Compression passes beyond quantization, each a lossy pass of graphopt.lossy: pruning (prune),
low-rank factorization (low_rank), weight sharing (cluster)."""

from graphopt.passes.compress import cluster, low_rank, prune  # noqa: F401  (registers their passes)
