"""Fusions: several nodes become one that computes the same thing, one module per family.

affine: a constant per-channel Mul/Add after Conv/Gemm/MatMul folded into its weights and bias.
batchnorm: inference BatchNormalization folded into the Conv/ConvTranspose/Gemm before it.
hardswish: hardswish/hardsigmoid written as Add/Clip/Mul/Div become HardSwish/HardSigmoid.
gelu: the erf and tanh GELU formulas exporters write out become one Gelu (ONNX opset 20 for
the portable target, com.microsoft Gelu/FastGelu/BiasGelu for ort).
layernorm: the decomposed mean/variance formula becomes LayerNormalization (opset 17).
skip_layernorm (ort): a residual Add (+ bias) and LayerNormalization become SkipLayerNormalization.
attention: scaled dot-product attention becomes com.microsoft Attention/MultiHeadAttention (ort)
or ONNX Attention (portable, opset 23).
conv: constant Pads into Conv/pooling, Conv [+ residual] + activation into com.microsoft FusedConv (ort).
linear: 2-D MatMul + bias into Gemm; flatten → Gemm → unflatten into MatMul + bias on N-D input.
"""

from graphopt.passes.fusion import (  # noqa: F401  (registers them)
    affine,
    attention,
    batchnorm,
    conv,
    gelu,
    hardswish,
    layernorm,
    linear,
    skip_layernorm,
)
