"""Quantization passes: weights to int8/int4 with the scales the kernels take.

scales: the symmetric int8 arithmetic (per tensor, per channel) in numpy.
smooth: SmoothQuant's activation outliers moved into the weights (exact in float).
dynamic: int8 weights for MatMul/Gemm/Attention, activations quantized at run time; int8 embeddings.
blocks: the blocked symmetric int4 arithmetic (round-to-nearest, error-minimizing clip, packing) in numpy.
weight_only: int4 weights in blocks (MatMulNBits, or DequantizeLinear at opset 21), activations float.
calibrate: static int8's activation ranges (minmax, percentile, entropy) from streamed histograms.
static: QuantizeLinear/DequantizeLinear pairs at calibrated ranges around the ops int8 kernels run.
static_linear: static int8 for transformers, only the linear layers and attention projections (dynamic's kernels).
qattention: com.microsoft Attention → QAttention (dynamic and static int8).
outliers: outlier channels computed apart in float (carved out of act(x·W), or masked), carve_outliers.
"""

from graphopt.passes.quantize import dynamic, outliers, smooth, static, static_linear, weight_only  # noqa: F401  (registers them)
