"""ONNX Runtime's fused com.microsoft ops that graphopt's fusion (and ORT's transformers optimizer)
write, besides attention: FusedConv, FusedMatMul, the Gelu family, SkipLayerNormalization and its
simplified (RMS) forms, BiasAdd."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from graphopt.train.ops import MICROSOFT, Node, op
from graphopt.train.ops.linear import conv

_ACTIVATIONS = {
    "Relu": lambda x, params: torch.relu(x),
    "Sigmoid": lambda x, params: torch.sigmoid(x),
    "Tanh": lambda x, params: torch.tanh(x),
    "LeakyRelu": lambda x, params: F.leaky_relu(x, params[0] if params else 0.01),
    "Clip": lambda x, params: torch.clamp(x, *params) if params else x,
    "HardSigmoid": lambda x, params: torch.clamp((params[0] if params else 0.2) * x
                                                 + (params[1] if len(params) > 1 else 0.5), 0, 1),
}


@op("FusedConv", domain=MICROSOFT)
def fused_conv(node: Node, x, weight, bias=None, residual=None):
    activation = node.get("activation")
    if activation not in _ACTIVATIONS:
        raise node.unsupported(f"activation={activation!r}")
    out = conv(node, x, weight, bias)
    out = out if residual is None else out + residual
    return _ACTIVATIONS[activation](out, list(node.get("activation_params") or []))


@op("FusedMatMul", domain=MICROSOFT)
def fused_matmul(node: Node, a, b):
    if node.get("transBatchA", 0) or node.get("transBatchB", 0):
        raise node.unsupported("transBatchA/transBatchB")
    a = a.transpose(-1, -2) if node.get("transA", 0) else a
    b = b.transpose(-1, -2) if node.get("transB", 0) else b
    return node.get("alpha", 1.0) * torch.matmul(a, b)


@op("Gelu", domain=MICROSOFT)
def gelu(node: Node, x):
    return F.gelu(x)


@op("BiasGelu", domain=MICROSOFT)
def bias_gelu(node: Node, x, bias):
    return F.gelu(x + bias)


@op("FastGelu", domain=MICROSOFT)
def fast_gelu(node: Node, x, bias=None):
    return F.gelu(x if bias is None else x + bias, approximate="tanh")


@op("QuickGelu", domain=MICROSOFT)
def quick_gelu(node: Node, x):
    return x * torch.sigmoid(node.get("alpha", 1.702) * x)


@op("BiasAdd", domain=MICROSOFT)
def bias_add(node: Node, x, bias, skip):
    return x + bias + skip


def _normalized(x, gamma, beta, epsilon: float, simplified: bool):
    if simplified:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + epsilon) * gamma
    return F.layer_norm(x, (x.shape[-1],), gamma, beta, epsilon)


@op("SkipLayerNormalization", "SkipSimplifiedLayerNormalization", domain=MICROSOFT)
def skip_layer_norm(node: Node, x, skip, gamma, beta=None, bias=None):
    simplified = node.op_type.startswith("SkipSimplified")
    if simplified:
        beta, bias = None, beta  # the simplified form has no beta: its 4th input is the bias
    total = x + skip if bias is None else x + skip + bias
    out = _normalized(total, gamma, beta, node.get("epsilon", 1e-12), simplified)
    if node.outputs == 1:
        return out
    mean = total.mean(-1, keepdim=True)
    inverse = torch.rsqrt(total.pow(2).mean(-1, keepdim=True) + node.get("epsilon", 1e-12)) if simplified else \
        torch.rsqrt((total - mean).pow(2).mean(-1, keepdim=True) + node.get("epsilon", 1e-12))
    return (out, mean, inverse, total)[:node.outputs]


@op("SimplifiedLayerNormalization")
@op("SimplifiedLayerNormalization", domain=MICROSOFT)
def simplified_layer_norm(node: Node, x, gamma):
    if node.get("axis", -1) not in (-1, x.dim() - 1) or node.outputs > 1:
        raise node.unsupported("an axis other than the last, or the extra outputs")
    return _normalized(x, gamma, None, node.get("epsilon", 1e-5), True)
