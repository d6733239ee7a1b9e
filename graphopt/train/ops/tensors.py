"""Shapes and indexing: Reshape, Transpose, Concat, Split, Slice, Gather*, Scatter*, Expand, Pad,
Resize, the shape computations (Shape, Range, ConstantOfShape…) and Constant.

Shape tensors are ordinary int64 tensors here: the graph runs eagerly, so a Reshape reads its target
shape's values like ONNX Runtime does.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from graphopt.train.ops import Node, op


def _ints(tensor) -> list[int]:
    return [int(value) for value in tensor.reshape(-1).tolist()]


def _axes(node: Node, axes, rank: int) -> list[int] | None:
    axes = node.get("axes") if axes is None else _ints(axes)
    return None if axes is None else sorted(axis % rank for axis in axes)


@op("Constant")
def constant(node: Node):
    for key, dtype in (("value_float", torch.float32), ("value_floats", torch.float32), ("value_int", torch.int64),
                       ("value_ints", torch.int64)):
        if key in node.attributes:
            return torch.tensor(node.get(key), dtype=dtype)
    if "value" not in node.attributes:
        raise node.unsupported("a Constant without a numeric value")
    return torch.from_numpy(np.array(node.get("value")))


@op("Reshape")
def reshape(node: Node, x, shape):
    target = _ints(shape)
    if not node.get("allowzero", 0):
        target = [x.shape[index] if size == 0 else size for index, size in enumerate(target)]
    return x.reshape(target)


@op("Flatten")
def flatten(node: Node, x):
    axis = node.get("axis", 1) % (x.dim() + 1)
    return x.reshape(math.prod(x.shape[:axis]), -1)


@op("Transpose")
def transpose(node: Node, x):
    return x.permute(list(node.get("perm") or reversed(range(x.dim()))))


@op("Squeeze")
def squeeze(node: Node, x, axes=None):
    dims = _axes(node, axes, x.dim())
    if dims is None:
        return x.squeeze()
    return x.reshape([size for index, size in enumerate(x.shape) if index not in dims])


@op("Unsqueeze")
def unsqueeze(node: Node, x, axes=None):
    rank = x.dim() + len(node.get("axes") if axes is None else _ints(axes))
    for dim in _axes(node, axes, rank):
        x = x.unsqueeze(dim)
    return x


@op("Concat")
def concat(node: Node, *tensors):
    return torch.cat(tensors, node.get("axis"))


@op("Split")
def split(node: Node, x, sizes=None):
    axis = node.get("axis", 0)
    sizes = node.get("split") if sizes is None else _ints(sizes)
    if not sizes:
        count = node.get("num_outputs", node.outputs)
        sizes = -(-x.shape[axis] // count)
    return tuple(torch.split(x, sizes, axis))


@op("Slice")
def slice_(node: Node, x, starts=None, ends=None, axes=None, steps=None):
    if node.opset < 10:
        starts, ends, axes = node.get("starts"), node.get("ends"), node.get("axes")
    else:
        starts, ends = _ints(starts), _ints(ends)
        axes = None if axes is None else _ints(axes)
    axes = list(range(len(starts))) if axes is None else axes
    steps = [1] * len(starts) if steps is None else _ints(steps)
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis %= x.dim()
        begin, stop, stride = slice(start, end, step).indices(x.shape[axis])
        if stride == 1:
            x = x.narrow(axis, begin, max(0, stop - begin))
        else:
            x = x.index_select(axis, torch.arange(begin, stop, stride, device=x.device))
    return x


def _wrap(indices, size: int):
    return torch.where(indices < 0, indices + size, indices)


@op("Gather")
def gather(node: Node, x, indices):
    axis = node.get("axis", 0) % x.dim()
    picked = x.index_select(axis, _wrap(indices, x.shape[axis]).reshape(-1).long())
    return picked.reshape((*x.shape[:axis], *indices.shape, *x.shape[axis + 1:]))


@op("GatherElements")
def gather_elements(node: Node, x, indices):
    axis = node.get("axis", 0) % x.dim()
    return torch.gather(x, axis, _wrap(indices, x.shape[axis]).long())


@op("GatherND")
def gather_nd(node: Node, x, indices):
    if node.get("batch_dims", 0):
        raise node.unsupported("batch_dims > 0")
    depth = indices.shape[-1]
    index = tuple(_wrap(indices[..., level], x.shape[level]).long() for level in range(depth))
    return x[index]


@op("ScatterND")
def scatter_nd(node: Node, data, indices, updates):
    if node.get("reduction", "none") != "none":
        raise node.unsupported(f"reduction={node.get('reduction')}")
    index = tuple(_wrap(indices[..., level], data.shape[level]).long() for level in range(indices.shape[-1]))
    return data.index_put(index, updates)


@op("ScatterElements")
def scatter_elements(node: Node, data, indices, updates):
    axis = node.get("axis", 0) % data.dim()
    indices = _wrap(indices, data.shape[axis]).long()
    reduction = node.get("reduction", "none")
    if reduction == "none":
        return data.scatter(axis, indices, updates)
    return data.scatter_reduce(axis, indices, updates, {"add": "sum", "mul": "prod", "max": "amax",
                                                          "min": "amin"}[reduction])


@op("Expand")
def expand(node: Node, x, shape):
    return x.expand(torch.broadcast_shapes(tuple(x.shape), tuple(_ints(shape))))


@op("Tile")
def tile(node: Node, x, repeats):
    return x.repeat(_ints(repeats))


@op("Shape")
def shape(node: Node, x):
    start, end = node.get("start", 0), node.get("end")
    return torch.tensor(list(x.shape)[start:end], dtype=torch.int64)


@op("Size")
def size(node: Node, x):
    return torch.tensor(x.numel(), dtype=torch.int64)


@op("ConstantOfShape")
def constant_of_shape(node: Node, shape):
    value = node.get("value")
    fill = torch.zeros((), dtype=torch.float32) if value is None else torch.from_numpy(np.array(value)).reshape(())
    return torch.full(_ints(shape), fill.item(), dtype=fill.dtype)


@op("Range")
def range_(node: Node, start, limit, delta):
    return torch.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype)


@op("NonZero")
def non_zero(node: Node, x):
    return torch.nonzero(x).T.contiguous()


@op("OneHot")
def one_hot(node: Node, indices, depth, values):
    count = int(depth.reshape(-1)[0])
    hot = F.one_hot(_wrap(indices, count).long(), count).to(values.dtype)
    result = values[0] + hot * (values[1] - values[0])
    return result.movedim(-1, node.get("axis", -1) % result.dim())


@op("Trilu")
def trilu(node: Node, x, k=None):
    diagonal = 0 if k is None else int(k.reshape(-1)[0])
    return torch.triu(x, diagonal) if node.get("upper", 1) else torch.tril(x, diagonal)


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}


@op("Pad")
def pad(node: Node, x, pads=None, value=None, axes=None):
    if node.opset < 11:
        pads, value = node.get("pads"), node.get("value", 0.0)
    else:
        pads = _ints(pads)
        value = 0 if value is None or value.numel() == 0 else value.reshape(-1)[0].item()
    axes = list(range(x.dim())) if axes is None else [axis % x.dim() for axis in _ints(axes)]
    begins, ends = [0] * x.dim(), [0] * x.dim()
    for index, axis in enumerate(axes):
        begins[axis], ends[axis] = pads[index], pads[len(axes) + index]
    first = next((axis for axis in range(x.dim()) if begins[axis] or ends[axis]), x.dim())
    amounts = [amount for axis in reversed(range(first, x.dim())) for amount in (begins[axis], ends[axis])]
    mode = _PAD_MODES[node.get("mode", "constant")]
    if not amounts:
        return x
    return F.pad(x, amounts, mode, value) if mode == "constant" else F.pad(x, amounts, mode)


_INTERPOLATE = {("linear", 1): "linear", ("linear", 2): "bilinear", ("linear", 3): "trilinear",
                ("cubic", 2): "bicubic", ("nearest", 1): "nearest", ("nearest", 2): "nearest",
                ("nearest", 3): "nearest"}


@op("Resize")
def resize(node: Node, x, roi=None, scales=None, sizes=None):
    mode, rank = node.get("mode", "nearest"), x.dim() - 2
    transform = node.get("coordinate_transformation_mode", "half_pixel")
    if node.get("axes") is not None or node.get("antialias", 0) or (mode, rank) not in _INTERPOLATE:
        raise node.unsupported(f"mode={mode} on {rank} spatial axes with these attributes")
    options = {}
    if mode == "nearest":
        options["mode"] = {"asymmetric": "nearest", "half_pixel": "nearest-exact",
                           "pytorch_half_pixel": "nearest-exact"}.get(transform)
    elif transform in ("half_pixel", "pytorch_half_pixel", "align_corners"):
        options = {"mode": _INTERPOLATE[mode, rank], "align_corners": transform == "align_corners"}
    if options.get("mode") is None:
        raise node.unsupported(f"coordinate_transformation_mode={transform} with mode={mode}")
    if sizes is not None and sizes.numel():
        return F.interpolate(x, size=_ints(sizes)[2:], **options)
    factors = [float(value) for value in scales.reshape(-1).tolist()]
    if factors[:2] != [1.0, 1.0]:
        raise node.unsupported("scaling the batch or channel axis")
    return F.interpolate(x, scale_factor=factors[2:], recompute_scale_factor=False, **options)


@op("DepthToSpace")
def depth_to_space(node: Node, x):
    block = node.get("blocksize")
    if node.get("mode", "DCR") == "CRD":
        return F.pixel_shuffle(x, block)
    batch, channels, height, width = x.shape
    x = x.reshape(batch, block, block, channels // block ** 2, height, width).permute(0, 3, 4, 1, 5, 2)
    return x.reshape(batch, channels // block ** 2, height * block, width * block)


@op("SpaceToDepth")
def space_to_depth(node: Node, x):
    block = node.get("blocksize")
    batch, channels, height, width = x.shape
    x = x.reshape(batch, channels, height // block, block, width // block, block).permute(0, 3, 5, 1, 2, 4)
    return x.reshape(batch, channels * block ** 2, height // block, width // block)


# Sequences (a Python list of tensors is one value)
@op("SplitToSequence")
def split_to_sequence(node: Node, x, split=None):
    axis = node.get("axis", 0) % x.dim()
    if split is None:
        parts = list(torch.split(x, 1, axis))
        return parts if node.get("keepdims", 1) else [part.squeeze(axis) for part in parts]
    sizes = int(split.item()) if split.dim() == 0 else _ints(split)
    return list(torch.split(x, sizes, axis))


@op("SequenceConstruct")
def sequence_construct(node: Node, *tensors):
    return list(tensors)


@op("SequenceAt")
def sequence_at(node: Node, sequence, position):
    return sequence[int(position.reshape(-1)[0])]


@op("SequenceLength")
def sequence_length(node: Node, sequence):
    return torch.tensor(len(sequence), dtype=torch.int64)


@op("ConcatFromSequence")
def concat_from_sequence(node: Node, sequence):
    axis = node.get("axis")
    return torch.stack(sequence, axis) if node.get("new_axis", 0) else torch.cat(sequence, axis)
