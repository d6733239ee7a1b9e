"""Compression passes beyond quantization: pruning (prune), each a lossy pass of graphopt.lossy."""

from graphopt.passes.compress import prune  # noqa: F401  (registers prune_magnitude)
