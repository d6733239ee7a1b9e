"""Pooling and reductions: MaxPool, AveragePool, the global pools, Reduce*, ArgMax/ArgMin, TopK, CumSum."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from graphopt.train.ops import Node, op
from graphopt.train.ops.linear import spatial_pads, torch_pad

_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def _window(node: Node, x) -> tuple[list, list, list, list, list]:
    kernel = list(node.get("kernel_shape"))
    rank = len(kernel)
    if rank not in _MAX_POOL:
        raise node.unsupported(f"a {rank}-d pool")
    strides = list(node.get("strides") or [1] * rank)
    dilations = list(node.get("dilations") or [1] * rank)
    begins, ends = spatial_pads(node, x, kernel, strides, dilations)
    return kernel, strides, dilations, begins, ends


@op("MaxPool")
def max_pool(node: Node, x):
    if node.outputs > 1:
        raise node.unsupported("the Indices output")
    kernel, strides, dilations, begins, ends = _window(node, x)
    if any(begins) or any(ends):
        x = F.pad(x, torch_pad(begins, ends), value=float("-inf"))
    return _MAX_POOL[len(kernel)](x, kernel, strides, 0, dilations, ceil_mode=bool(node.get("ceil_mode", 0)))


@op("AveragePool")
def average_pool(node: Node, x):
    kernel, strides, dilations, begins, ends = _window(node, x)
    if any(d != 1 for d in dilations):
        raise node.unsupported("a dilated average pool")
    pool = _AVG_POOL[len(kernel)]
    ceil = bool(node.get("ceil_mode", 0))
    if not (any(begins) or any(ends)):
        return pool(x, kernel, strides, 0, ceil)
    padded = F.pad(x, torch_pad(begins, ends))
    if node.get("count_include_pad", 0):
        return pool(padded, kernel, strides, 0, ceil)
    counts = pool(F.pad(torch.ones_like(x[:1, :1]), torch_pad(begins, ends)), kernel, strides, 0, ceil)
    return pool(padded, kernel, strides, 0, ceil) / counts


@op("GlobalAveragePool", "GlobalMaxPool")
def global_pool(node: Node, x):
    dims = tuple(range(2, x.dim()))
    return x.mean(dims, keepdim=True) if node.op_type == "GlobalAveragePool" else x.amax(dims, keepdim=True)


_REDUCE = {
    "ReduceMean": lambda x, dims, keep: x.mean(dims, keepdim=keep),
    "ReduceSum": lambda x, dims, keep: x.sum(dims, keepdim=keep),
    "ReduceMax": lambda x, dims, keep: x.amax(dims, keepdim=keep),
    "ReduceMin": lambda x, dims, keep: x.amin(dims, keepdim=keep),
    "ReduceProd": lambda x, dims, keep: _prod(x, dims, keep),
    "ReduceL1": lambda x, dims, keep: x.abs().sum(dims, keepdim=keep),
    "ReduceL2": lambda x, dims, keep: x.pow(2).sum(dims, keepdim=keep).sqrt(),
    "ReduceSumSquare": lambda x, dims, keep: x.pow(2).sum(dims, keepdim=keep),
    "ReduceLogSum": lambda x, dims, keep: x.sum(dims, keepdim=keep).log(),
    "ReduceLogSumExp": lambda x, dims, keep: torch.logsumexp(x, dims, keepdim=keep),
}


def _prod(x, dims: tuple, keep: bool):
    for dim in sorted(dims, reverse=True):
        x = x.prod(dim, keepdim=keep)
    return x


@op(*_REDUCE)
def reduce(node: Node, x, axes=None):
    axes = node.get("axes") if axes is None else axes.tolist()
    if not axes:
        if node.get("noop_with_empty_axes", 0):
            return x
        axes = list(range(x.dim()))
    dims = tuple(sorted(axis % x.dim() for axis in axes))
    return _REDUCE[node.op_type](x, dims, bool(node.get("keepdims", 1)))


@op("ArgMax", "ArgMin")
def arg_extreme(node: Node, x):
    axis, keep = node.get("axis", 0) % x.dim(), bool(node.get("keepdims", 1))
    function = torch.argmax if node.op_type == "ArgMax" else torch.argmin
    if not node.get("select_last_index", 0):
        return function(x, axis, keepdim=keep)
    return x.shape[axis] - 1 - function(x.flip(axis), axis, keepdim=keep)


@op("TopK")
def top_k(node: Node, x, k):
    values, indices = torch.topk(x, int(k.reshape(-1)[0]), node.get("axis", -1), largest=bool(node.get("largest", 1)),
                                 sorted=True)
    return values, indices


@op("CumSum")
def cum_sum(node: Node, x, axis):
    axis = int(axis.reshape(-1)[0])
    flip = bool(node.get("reverse", 0))
    x = x.flip(axis) if flip else x
    result = torch.cumsum(x, axis)
    result = result - x if node.get("exclusive", 0) else result
    return result.flip(axis) if flip else result
