"""The layers whose weights are trained: MatMul, Gemm, Conv, ConvTranspose, Einsum."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from graphopt.train.ops import Node, op

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_TRANSPOSE = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


@op("MatMul")
def matmul(node: Node, a, b):
    return torch.matmul(a, b)


@op("Gemm")
def gemm(node: Node, a, b, c=None):
    a = a.T if node.get("transA", 0) else a
    b = b.T if node.get("transB", 0) else b
    result = node.get("alpha", 1.0) * (a @ b)
    return result if c is None else result + node.get("beta", 1.0) * c


@op("Einsum")
def einsum(node: Node, *tensors):
    return torch.einsum(node.get("equation").replace(" ", ""), *tensors)


def spatial_pads(node: Node, x, kernel: list[int], strides: list[int], dilations: list[int]) -> tuple[list, list]:
    """(begins, ends) of the padding along each spatial axis, auto_pad resolved against x's shape."""
    spatial = list(x.shape[2:])
    auto = node.get("auto_pad", "NOTSET")
    if auto == "NOTSET":
        pads = list(node.get("pads") or [0] * 2 * len(spatial))
        return pads[:len(spatial)], pads[len(spatial):]
    if auto == "VALID":
        return [0] * len(spatial), [0] * len(spatial)
    begins, ends = [], []
    for size, k, s, d in zip(spatial, kernel, strides, dilations):
        out = -(-size // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
        small = total // 2
        begins.append(small if auto == "SAME_UPPER" else total - small)
        ends.append(total - begins[-1])
    return begins, ends


def torch_pad(begins: list[int], ends: list[int]) -> list[int]:
    """ONNX's per-axis (begins, ends) in F.pad's order: the last axis first."""
    return [amount for begin, end in zip(reversed(begins), reversed(ends)) for amount in (begin, end)]


def _window(node: Node, weight, what: str) -> tuple[int, list[int], list[int]]:
    """(spatial rank, strides, dilations) of a convolution, a rank torch has none for refused."""
    rank = weight.dim() - 2
    if rank not in _CONV:
        raise node.unsupported(f"a {rank}-d {what}")
    return rank, list(node.get("strides") or [1] * rank), list(node.get("dilations") or [1] * rank)


@op("Conv")
def conv(node: Node, x, weight, bias=None):
    rank, strides, dilations = _window(node, weight, "convolution")
    begins, ends = spatial_pads(node, x, list(weight.shape[2:]), strides, dilations)
    if begins != ends:
        x, begins = F.pad(x, torch_pad(begins, ends)), [0] * rank
    return _CONV[rank](x, weight, bias, strides, begins, dilations, node.get("group", 1))


@op("ConvTranspose")
def conv_transpose(node: Node, x, weight, bias=None):
    rank, strides, dilations = _window(node, weight, "transposed convolution")
    extra = list(node.get("output_padding") or [0] * rank)
    kernel = list(weight.shape[2:])
    full = [s * (size - 1) + e + (k - 1) * d + 1 for size, s, e, k, d in zip(x.shape[2:], strides, extra, kernel,
                                                                                dilations)]
    wanted = node.get("output_shape")
    auto = node.get("auto_pad", "NOTSET")
    if wanted is None and auto in ("SAME_UPPER", "SAME_LOWER"):
        wanted = [size * s for size, s in zip(x.shape[2:], strides)]
    if wanted is not None:
        totals = [have - want for have, want in zip(full, list(wanted)[-rank:])]
        if min(totals) < 0:
            raise node.unsupported("an output_shape larger than the transposed convolution computes")
        lower = auto == "SAME_LOWER"
        begins = [total - total // 2 if lower else total // 2 for total in totals]
        ends = [total - begin for total, begin in zip(totals, begins)]
    elif auto == "VALID":
        begins = ends = [0] * rank
    else:
        pads = list(node.get("pads") or [0] * 2 * rank)
        begins, ends = pads[:rank], pads[rank:]
    result = _CONV_TRANSPOSE[rank](x, weight, bias, strides, 0, extra, node.get("group", 1), dilations)
    crop = [slice(None), slice(None)] + [slice(begin, size - end) for begin, end, size in
                                         zip(begins, ends, result.shape[2:])]
    return result[tuple(crop)]
