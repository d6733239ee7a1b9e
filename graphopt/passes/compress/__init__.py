"""Compression passes beyond quantization, each a lossy pass of graphopt.lossy: pruning (prune),
low-rank factorization (low_rank)."""

from graphopt.passes.compress import low_rank, prune  # noqa: F401  (registers low_rank, prune_magnitude)
