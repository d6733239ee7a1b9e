"""Compression passes beyond quantization, each a lossy pass of graphopt.lossy: pruning (prune:
magnitude; prune_channels: structured, on the channel graph of channels and channel_ops), low-rank
factorization (low_rank), weight sharing (cluster)."""

from graphopt.passes.compress import cluster, low_rank, prune, prune_channels  # noqa: F401  (registers their passes)
