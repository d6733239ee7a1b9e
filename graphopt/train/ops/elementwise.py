"""Elementwise ONNX operators: arithmetic, comparisons, logic, activations, casts."""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from graphopt.train.ops import Node, op
from graphopt.train.ops.dtypes import torch_dtype

_BINARY = {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Equal": torch.eq, "Less": torch.lt,
           "Greater": torch.gt, "LessOrEqual": torch.le, "GreaterOrEqual": torch.ge, "And": torch.logical_and,
           "Or": torch.logical_or, "Xor": torch.logical_xor, "BitShift": None}
_UNARY = {"Relu": torch.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Exp": torch.exp, "Log": torch.log,
          "Sqrt": torch.sqrt, "Abs": torch.abs, "Neg": torch.neg, "Reciprocal": torch.reciprocal, "Erf": torch.erf,
          "Floor": torch.floor, "Ceil": torch.ceil, "Round": torch.round, "Sign": torch.sign, "Sin": torch.sin,
          "Cos": torch.cos, "Tan": torch.tan, "Atan": torch.atan, "Asin": torch.asin, "Acos": torch.acos,
          "Sinh": torch.sinh, "Cosh": torch.cosh, "Softsign": F.softsign, "Not": torch.logical_not,
          "IsNaN": torch.isnan, "Mish": F.mish, "HardSwish": F.hardswish}


@op(*(name for name, function in _BINARY.items() if function is not None))
def binary(node: Node, a, b):
    return _BINARY[node.op_type](a, b)


@op(*_UNARY)
def unary(node: Node, x):
    return _UNARY[node.op_type](x)


@op("Div")
def div(node: Node, a, b):
    if a.dtype.is_floating_point:
        return a / b
    return torch.div(a, b, rounding_mode="trunc")  # ONNX divides integers truncating


@op("Pow")
def pow_(node: Node, a, b):
    return torch.pow(a, b).to(a.dtype)


@op("Mod")
def mod(node: Node, a, b):
    return torch.fmod(a, b) if node.get("fmod", 0) else torch.remainder(a, b)


@op("Max", "Min", "Sum", "Mean")
def variadic(node: Node, *tensors):
    function = {"Max": torch.maximum, "Min": torch.minimum, "Sum": torch.add, "Mean": torch.add}[node.op_type]
    result = functools.reduce(function, tensors)
    return result / len(tensors) if node.op_type == "Mean" else result


@op("Where")
def where(node: Node, condition, a, b):
    return torch.where(condition, a, b)


@op("Identity")
def identity(node: Node, x):
    return x


@op("Dropout")
def dropout(node: Node, x, ratio=None, training=None):
    """The inference graph's Dropout: the identity (a graph exported for inference trains without it)."""
    if training is not None and bool(training):
        raise node.unsupported("training_mode=True")
    return (x, torch.ones_like(x, dtype=torch.bool)) if node.outputs > 1 else x


@op("Cast")
def cast(node: Node, x):
    return x.to(torch_dtype(node.get("to")))


@op("CastLike")
def cast_like(node: Node, x, like):
    return x.to(like.dtype)


@op("IsInf")
def is_inf(node: Node, x):
    positive, negative = node.get("detect_positive", 1), node.get("detect_negative", 1)
    return (torch.isposinf(x) & bool(positive)) | (torch.isneginf(x) & bool(negative))


@op("Clip")
def clip(node: Node, x, low=None, high=None):
    if node.opset < 11:
        low, high = node.get("min"), node.get("max")
    return torch.clamp(x, low, high)


@op("LeakyRelu")
def leaky_relu(node: Node, x):
    return F.leaky_relu(x, node.get("alpha", 0.01))


@op("Elu")
def elu(node: Node, x):
    return F.elu(x, node.get("alpha", 1.0))


@op("Celu")
def celu(node: Node, x):
    return F.celu(x, node.get("alpha", 1.0))


@op("Selu")
def selu(node: Node, x):
    alpha, gamma = node.get("alpha", 1.67326319217681884765625), node.get("gamma", 1.05070102214813232421875)
    return gamma * torch.where(x > 0, x, alpha * (torch.exp(x) - 1))


@op("ThresholdedRelu")
def thresholded_relu(node: Node, x):
    return torch.where(x > node.get("alpha", 1.0), x, torch.zeros_like(x))


@op("HardSigmoid")
def hard_sigmoid(node: Node, x):
    return torch.clamp(node.get("alpha", 0.2) * x + node.get("beta", 0.5), 0, 1)


@op("Softplus")
def softplus(node: Node, x):
    return torch.log1p(torch.exp(-torch.abs(x))) + torch.relu(x)


@op("PRelu")
def prelu(node: Node, x, slope):
    return torch.where(x < 0, x * slope, x)


@op("Gelu")
def gelu(node: Node, x):
    return F.gelu(x, approximate=node.get("approximate", "none"))


@op("Softmax", "LogSoftmax")
def softmax(node: Node, x):
    function = torch.softmax if node.op_type == "Softmax" else torch.log_softmax
    if node.opset >= 13:
        return function(x, node.get("axis", -1))
    axis = node.get("axis", 1) % x.dim()  # before opset 13: over everything from `axis` on, as one row
    rows = x.reshape(math.prod(x.shape[:axis]), -1)
    return function(rows, -1).reshape(x.shape)
