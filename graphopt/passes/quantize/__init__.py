"""Quantization passes: weights to int8/int4 with the scales the kernels take.

scales: the symmetric int8 arithmetic (per tensor, per channel) in numpy.
dynamic: int8 weights for MatMul/Gemm/Attention, activations quantized at run time; int8 embeddings.
"""

from graphopt.passes.quantize import dynamic  # noqa: F401  (registers it)
