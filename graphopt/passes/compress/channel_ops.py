"""What each op does to the channels it reads: the rules of the channel graph (channels.py) and
their vocabulary — a value's Layout (its channel axis and the id at each position) and the Sites
that removing ids rewrites."""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

import numpy as np
import onnx_ir as ir

from graphopt.passes.match import MS_DOMAIN, constant_array, constant_tensor

if TYPE_CHECKING:
    from graphopt.passes.compress.channels import ChannelGraph

FIXED = -1  # a channel no layer makes prunable (a model input's, an excluded layer's)

# Ops that map each channel to itself, reading only their first input (and scalar attributes).
_PER_CHANNEL = frozenset({
    "Relu", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Gelu", "Erf", "Elu", "Selu", "Celu",
    "Softplus", "Softsign", "Mish", "Identity", "Dropout", "Neg", "Abs", "Sqrt", "Exp", "Log", "Reciprocal",
    "ThresholdedRelu", "Floor", "Ceil", "Round", "Sin", "Cos", "Sign", "Cast", "IsNaN", "IsInf", "Not",
    "MaxPool", "AveragePool",
    "GlobalAveragePool", "GlobalMaxPool", "LpPool"})
# Elementwise ops whose operands broadcast against each other.
_BROADCAST = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "PRelu", "Where"})
# ONNX Runtime's per-channel ops with a bias vector as input 1 (BiasGelu) or none (Gelu, QuickGelu).
_MS_PER_CHANNEL = frozenset({"BiasGelu", "FastGelu", "Gelu", "QuickGelu"})
# Per-channel parameters of a normalization, by input index (all over axis 1).
_NORM_PARAMETERS = {"BatchNormalization": (1, 2, 3, 4), "InstanceNormalization": (1, 2)}


@dataclasses.dataclass
class Layout:
    """The channel axis of a value (negative: counted from the last) and the id at each of its positions."""

    axis: int
    ids: np.ndarray


@dataclasses.dataclass
class Site:
    """Something removing channels rewrites: a constant input of `node` sliced along `axis`
    ("slice"), an entry of a shape constant ("shape", `axis` the entry), Split's sizes ("split",
    `parts` one id array per output), a depthwise convolution's group count ("group"), an
    Attention's head count ("heads", `axis` the channels per head)."""

    kind: str
    node: ir.Node
    index: int
    axis: int
    ids: np.ndarray
    parts: tuple[np.ndarray, ...] = ()




def _per_channel(graph: ChannelGraph, node: ir.Node, traced) -> None:
    index, layout = traced[0]
    if index != 0 or len(traced) > 1:
        graph._pin(layout.ids, f"{node.op_type} {node.name!r} reads them other than as its data")
        return
    for other in range(1, len(node.inputs)):  # Clip's bounds, BiasGelu's bias: scalars or per-channel constants
        if node.inputs[other] is not None and not graph._constant(node, other, layout):
            graph._pin(layout.ids, f"{node.op_type} {node.name!r} reads a computed input beside them")
            return
    graph._set(node.outputs[0], layout)


def _broadcast(graph: ChannelGraph, node: ir.Node, traced) -> None:
    first, layout = traced[0]
    if node.op_type == "Pow" and first != 0:
        graph._pin(layout.ids, f"Pow {node.name!r} raises something to their power")
        return
    for index, value in enumerate(node.inputs):
        if value is None or index == first:
            continue
        if value in graph.layouts or not graph._constant(node, index, layout):
            graph._meet(node, value, layout)  # a residual partner, or a computed operand
    graph._set(node.outputs[0], layout)


def _shape(graph: ChannelGraph, node: ir.Node, traced) -> None:
    graph._pin(traced[0][1].ids, f"{node.op_type} {node.name!r} reads their count at run time")


def _normalization(graph: ChannelGraph, node: ir.Node, traced) -> None:
    index, layout = traced[0]
    rank = _rank(node.inputs[0])
    if index != 0 or len(traced) > 1 or rank is None or layout.axis != 1 - rank:
        graph._pin(layout.ids, f"{node.op_type} {node.name!r} normalizes over them")
        return
    for parameter in _NORM_PARAMETERS[node.op_type]:
        if parameter < len(node.inputs) and node.inputs[parameter] is not None:
            if constant_tensor(node.inputs[parameter]) is None:
                graph._pin(layout.ids, f"{node.op_type} {node.name!r} has parameters computed at run time")
                return
            graph.sites.append(Site("slice", node, parameter, 0, layout.ids))
    graph._set(node.outputs[0], layout)


def _over_axes(graph: ChannelGraph, node: ir.Node, traced) -> None:
    """Softmax, LayerNormalization, the Reduce ops: fine over other axes, pinned over the channels."""
    index, layout = traced[0]
    rank = _rank(node.inputs[0])
    if index != 0 or rank is None:
        graph._pin(layout.ids, f"{node.op_type} {node.name!r} reads them in a way the analysis does not follow")
        return
    channel = rank + layout.axis
    if node.op_type == "LayerNormalization":
        start = node.attributes.get_int("axis", -1) % rank
        axes = set(range(start, rank))
    elif node.op_type in ("Softmax", "LogSoftmax"):
        axes = {node.attributes.get_int("axis", -1) % rank}
    else:
        listed = _listed(node, "axes")
        axes = set(range(rank)) if not listed else {axis % rank for axis in listed}
    if channel in axes:
        graph._pin(layout.ids, f"{node.op_type} {node.name!r} computes over the channels")
        return
    keep = node.op_type in ("Softmax", "LogSoftmax", "LayerNormalization") or node.attributes.get_int("keepdims", 1)
    after = sum(1 for axis in axes if axis > channel)
    graph._set(node.outputs[0], Layout(layout.axis if keep else layout.axis + after, layout.ids))


def _transpose(graph: ChannelGraph, node: ir.Node, traced) -> None:
    _, layout = traced[0]
    perm = node.attributes.get_ints("perm", None)
    rank = _rank(node.inputs[0]) if perm is None else len(perm)
    if rank is None:
        graph._pin(layout.ids, f"Transpose {node.name!r} moves them to an axis the analysis cannot tell")
        return
    perm = list(perm) if perm is not None else list(reversed(range(rank)))
    graph._set(node.outputs[0], Layout(perm.index(rank + layout.axis) - rank, layout.ids))


def _flatten(graph: ChannelGraph, node: ir.Node, traced) -> None:
    _, layout = traced[0]
    shape = node.inputs[0].shape
    dims = None if shape is None else [dim if isinstance(dim, int) else None for dim in shape.dims]
    rank = len(dims) if dims is not None else 0
    split, channel = node.attributes.get_int("axis", 1) % (rank + 1), rank + layout.axis
    if dims is None or any(dim is None for dim in dims[split:]):
        graph._pin(layout.ids, f"Flatten {node.name!r} merges them with axes of unknown size")
        return
    if channel < split:
        graph._pin(layout.ids, f"Flatten {node.name!r} merges them into its first axis")
        return
    graph._set(node.outputs[0], Layout(-1, _merged(layout.ids, dims, split, channel, rank)))


def _reshape(graph: ChannelGraph, node: ir.Node, traced) -> None:
    index, layout = traced[0]
    source, target = _static(node.inputs[0], symbols=True), _static(node.outputs[0], symbols=True)
    entries = _shape_entries(node) if len(node.inputs) > 1 else None
    if index != 0 or entries is None:
        graph._pin(layout.ids, f"Reshape {node.name!r} computes its shape at run time from them")
        return
    if source is None or target is None or len(entries) != len(target):
        graph._pin(layout.ids, f"Reshape {node.name!r} reshapes them between shapes the analysis cannot tell")
        return
    channel = len(source) + layout.axis
    found = _merging_axis(source, target, channel)
    if found is None:
        _split_heads(graph, node, layout, source, target, entries)
        return
    axis, start, stop = found
    ids = _merged(layout.ids, source, start, channel, stop)
    if not _count_site(graph, node, layout, entries[axis], ids, copied=(start, stop) == (channel, channel + 1)):
        return
    graph._set(node.outputs[0], Layout(axis - len(target), ids))


def _split_heads(graph: ChannelGraph, node: ir.Node, layout: Layout, source: list, target: list, entries) -> None:
    """A Reshape splitting the channels over two axes, [..., h·d] → [..., h, d] (attention heads of d
    channels): each head's channels are joined (a head goes whole) and the h axis carries the heads,
    each by its first channel's id."""
    channel = len(source) + layout.axis
    axis = channel + len(target) - len(source) - 1  # the heads' axis: the rest of the dims copied
    copied = source[:channel] == target[:axis] and source[channel + 1:] == target[axis + 2:]
    heads, size = (target[axis], target[axis + 1]) if 0 <= axis < len(target) - 1 else (None, None)
    if not copied or not isinstance(heads, int) or not isinstance(size, int) or heads * size != len(layout.ids):
        graph._pin(layout.ids, f"Reshape {node.name!r} splits them over axes the analysis does not follow")
        return
    blocks = layout.ids.reshape(heads, size)
    for block in blocks:
        graph._join(np.full(size - 1, block[0]), block[1:], f"Reshape {node.name!r} splits them into heads")
    ids = blocks[:, 0].copy()
    if _count_site(graph, node, Layout(layout.axis, ids), entries[axis], ids, copied=False):
        graph._set(node.outputs[0], Layout(axis - len(target), ids))


def _count_site(graph: ChannelGraph, node: ir.Node, layout: Layout, entry, ids: np.ndarray, copied: bool) -> bool:
    """Whether the shape entry holding the channels can follow them: -1 needs nothing, a positive
    count is rewritten (a Site), 0 copies a dim (only the channels' own), a count computed at run
    time pins them."""
    if entry is None:
        graph._pin(layout.ids, f"Reshape {node.name!r} computes their count at run time")
        return False
    value, site = entry
    if value > 0 and site[0] is not node and len(site[0].outputs[0].uses()) > 1:
        graph._pin(layout.ids, f"Reshape {node.name!r} shares the Concat holding their count with other Reshapes")
        return False
    if value > 0:
        graph.sites.append(Site("shape", site[0], site[1], site[2], ids))
    elif value == 0 and not copied:
        graph._pin(layout.ids, f"Reshape {node.name!r} copies a dim into the one that holds them")
        return False
    return True


def _shape_entries(node: ir.Node) -> list | None:
    """Each entry of a Reshape's target shape: (its value, where it lies: node, input, offset) where it
    is a constant, None where it is computed at run time — a constant shape, or a Concat of 1-D pieces
    (PyTorch's exporters concatenate the batch and sequence dims read from a Shape with constants)."""
    shape = constant_array(node.inputs[1])
    if shape is not None:
        return [(int(value), (node, 1, offset)) for offset, value in enumerate(shape.reshape(-1))]
    producer = node.inputs[1].producer()
    if producer is None or producer.op_type != "Concat" or producer.domain not in ("", "ai.onnx"):
        return None
    entries = []
    for slot, piece in enumerate(producer.inputs):
        constant = constant_array(piece) if piece is not None else None
        if constant is not None:
            entries += [(int(value), (producer, slot, offset)) for offset, value in enumerate(constant.reshape(-1))]
        elif piece is not None and piece.shape is not None and len(piece.shape) == 1 and \
                isinstance(piece.shape[0], int):
            entries += [None] * piece.shape[0]
        else:
            return None
    return entries


def _concat(graph: ChannelGraph, node: ir.Node, traced) -> None:
    rank = _rank(node.outputs[0]) or next((_rank(value) for value in node.inputs if _rank(value)), None)
    _, layout = traced[0]
    if rank is None:
        graph._pin(layout.ids, f"Concat {node.name!r} joins them along an axis the analysis cannot tell")
        return
    axis = node.attributes.get_int("axis", 0) % rank - rank
    if any(item.axis != axis for _, item in traced):
        for index, value in enumerate(node.inputs):  # along another axis: every input carries the same channels
            if value is not node.inputs[traced[0][0]]:
                graph._meet(node, value, layout)
        graph._set(node.outputs[0], layout)
        return
    parts = []
    for value in node.inputs:
        if value in graph.layouts:
            parts.append(graph.layouts[value].ids)
        elif value.shape is not None and isinstance(value.shape[axis], int):
            parts.append(np.full(value.shape[axis], FIXED, dtype=np.int64))
        else:
            graph._pin(np.concatenate([item.ids for _, item in traced]),
                       f"Concat {node.name!r} joins them with {value.name!r} of unknown size")
            return
    graph._set(node.outputs[0], Layout(axis, np.concatenate(parts)))


def _split(graph: ChannelGraph, node: ir.Node, traced) -> None:
    index, layout = traced[0]
    rank = _rank(node.inputs[0])
    if index != 0 or rank is None:
        graph._pin(layout.ids, f"Split {node.name!r} splits them in a way the analysis does not follow")
        return
    if node.attributes.get_int("axis", 0) % rank != rank + layout.axis:
        for output in node.outputs:
            graph._set(output, layout)
        return
    sizes = _listed(node, "split")
    if sizes is None and len(node.inputs) > 1 and node.inputs[1] is not None:
        graph._pin(layout.ids, f"Split {node.name!r} computes its sizes at run time")
        return
    if sizes is None:
        count = len(node.outputs)
        if len(layout.ids) % count:
            graph._pin(layout.ids, f"Split {node.name!r} splits them unevenly")
            return
        sizes = [len(layout.ids) // count] * count
    bounds = np.cumsum([0, *sizes])
    parts = tuple(layout.ids[bounds[i]:bounds[i + 1]] for i in range(len(sizes)))
    graph.sites.append(Site("split", node, 1, layout.axis, layout.ids, parts))
    for output, part in zip(node.outputs, parts):
        graph._set(output, Layout(layout.axis, part))


def _batched_matmul(graph: ChannelGraph, node: ir.Node, traced) -> None:
    """MatMul of two computed operands (attention's Q·Kᵀ and P·V): channels on a batch axis (the
    heads) pass through, joined with the other operand's on that axis; on the two matrix axes they
    are pinned. (A MatMul by a constant weight is a layer: channels.py.)"""
    if any(_rank(node.inputs[index]) is None or layout.axis >= -2 or _rank(node.inputs[index]) + layout.axis < 0
           for index, layout in traced):
        graph._pin(np.concatenate([layout.ids for _, layout in traced]),
                   f"MatMul {node.name!r} multiplies them as a matrix axis")
        return
    index, layout = traced[0]
    graph._meet(node, node.inputs[1 - index], layout)
    graph._set(node.outputs[0], layout)


def _depthwise(graph: ChannelGraph, node: ir.Node, traced) -> None:
    """A convolution of groups == channels, one filter per channel: each channel stays itself
    (removed with its filter); any other grouped convolution pins them."""
    index, layout = traced[0]
    weight = constant_tensor(node.inputs[1]) if len(node.inputs) > 1 else None
    groups = node.attributes.get_int("group", 1)
    rank = len(weight.shape) if weight is not None else 0
    if (index != 0 or weight is None or layout.axis != 1 - rank or groups != len(layout.ids)
            or weight.shape[0] != groups or weight.shape[1] != 1 or node.op_type == "ConvTranspose"):
        graph._pin(layout.ids, f"{node.op_type} {node.name!r} convolves them in {groups} groups, not one per channel")
        return
    graph.sites.append(Site("slice", node, 1, 0, layout.ids))
    graph.sites.append(Site("group", node, -1, 0, layout.ids))
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        graph._constant(node, 2, Layout(-1, layout.ids))
    out = Layout(layout.axis, layout.ids)
    graph._set(node.outputs[0], out)
    if node.op_type == "FusedConv" and len(node.inputs) > 3 and node.inputs[3] is not None:
        graph._meet(node, node.inputs[3], out)


def _pad(graph: ChannelGraph, node: ir.Node, traced) -> None:
    index, layout = traced[0]
    rank = _rank(node.inputs[0])
    pads = _listed(node, "pads")
    axes_given = len(node.inputs) > 3 and node.inputs[3] is not None
    if index != 0 or rank is None or pads is None or axes_given or \
            pads[rank + layout.axis] or pads[2 * rank + layout.axis]:
        graph._pin(layout.ids, f"Pad {node.name!r} pads them")
        return
    graph._set(node.outputs[0], layout)


def _resize(graph: ChannelGraph, node: ir.Node, traced) -> None:
    index, layout = traced[0]
    rank = _rank(node.inputs[0])
    if index != 0 or rank is None:
        graph._pin(layout.ids, f"{node.op_type} {node.name!r} resizes them")
        return
    for slot in range(1, len(node.inputs)):
        constant = constant_array(node.inputs[slot]) if node.inputs[slot] is not None else None
        if node.inputs[slot] is not None and constant is None:
            graph._pin(layout.ids, f"{node.op_type} {node.name!r} computes its scales at run time")
            return
        if constant is None or constant.size != rank:
            continue
        if slot == 3 and node.op_type == "Resize":  # sizes: the channel entry is rewritten
            graph.sites.append(Site("shape", node, 3, rank + layout.axis, layout.ids))
        elif constant[rank + layout.axis] != 1:
            graph._pin(layout.ids, f"{node.op_type} {node.name!r} scales the channel axis")
            return
    graph._set(node.outputs[0], layout)


def _squeeze(graph: ChannelGraph, node: ir.Node, traced) -> None:
    index, layout = traced[0]
    rank_in, rank_out = _rank(node.inputs[0]), _rank(node.outputs[0])
    axes = _listed(node, "axes")
    if index != 0 or rank_in is None or rank_out is None or axes is None:
        graph._pin(layout.ids, f"{node.op_type} {node.name!r} changes their rank in a way the analysis cannot tell")
        return
    channel = rank_in + layout.axis
    if node.op_type == "Squeeze":
        axes = {axis % rank_in for axis in axes}
        new = channel - sum(1 for axis in axes if axis < channel)
    else:
        axes = sorted(axis % rank_out for axis in axes)
        new = channel
        for axis in axes:
            new += axis <= new
    graph._set(node.outputs[0], Layout(new - rank_out, layout.ids))


RULES = {
    **{("", op): _per_channel for op in _PER_CHANNEL},
    **{(MS_DOMAIN, op): _per_channel for op in _MS_PER_CHANNEL},
    **{("", op): _broadcast for op in _BROADCAST},
    **{("", op): _normalization for op in _NORM_PARAMETERS},
    **{("", op): _over_axes for op in ("Softmax", "LogSoftmax", "LayerNormalization", "ReduceMean", "ReduceSum",
                                        "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
                                        "ReduceSumSquare", "ReduceLogSumExp")},
    ("", "Shape"): _shape, ("", "Size"): _shape, ("", "Clip"): _per_channel, ("", "Transpose"): _transpose, ("", "Flatten"): _flatten,
    ("", "Reshape"): _reshape, ("", "Concat"): _concat, ("", "Split"): _split, ("", "Pad"): _pad,
    ("", "Resize"): _resize, ("", "Upsample"): _resize, ("", "Squeeze"): _squeeze, ("", "Unsqueeze"): _squeeze,
    ("", "Conv"): _depthwise, (MS_DOMAIN, "FusedConv"): _depthwise, ("", "MatMul"): _batched_matmul,
}


# helpers ----------------------------------------------------------------------------------------

def _listed(node: ir.Node, attribute: str) -> list[int] | None:
    """Integers an op takes as an attribute (older opsets) or as its constant second input (newer:
    Reduce axes, Split sizes, Pad pads, Squeeze axes); None where neither holds them."""
    listed = node.attributes.get_ints(attribute, None)
    if listed is None and len(node.inputs) > 1 and node.inputs[1] is not None:
        constant = constant_array(node.inputs[1])
        listed = None if constant is None else constant.tolist()
    return None if listed is None else list(listed)


def _rank(value: ir.Value | None) -> int | None:
    return None if value is None or value.shape is None else len(value.shape)


def _static(value: ir.Value, symbols: bool = False) -> list | None:
    """A value's dims, each an int (or, with `symbols`, a symbol's name); None where one is unknown."""
    if value is None or value.shape is None:
        return None
    dims = [dim if isinstance(dim, int) else dim.value for dim in value.shape.dims]
    if any(dim is None or (isinstance(dim, str) and not symbols) for dim in dims):
        return None
    return dims


def _merged(ids: np.ndarray, dims: list, start: int, channel: int, stop: int) -> np.ndarray:
    """The ids along one axis made of input axes start..stop-1, the channels among them."""
    before, after = math.prod(dims[start:channel]), math.prod(dims[channel + 1:stop])
    return np.tile(np.repeat(ids, after), before)


def _merging_axis(source: list, target: list, channel: int) -> tuple[int, int, int] | None:
    """(the output axis, first and last+1 input axes it merges) where a reshape keeps the channel
    axis whole inside one output axis, or None. Dims are ints or symbols; a symbol may only be
    copied, not merged."""
    def prefixes(dims):
        products, symbols, total = [((), 1)], [], 1
        for dim in dims:
            if isinstance(dim, str):
                symbols.append(dim)
            else:
                total *= dim
            products.append((tuple(sorted(symbols)), total))
        return products

    inner, outer = prefixes(source), prefixes(target)
    for axis in range(len(target)):
        starts = [k for k in range(channel + 1) if inner[k] == outer[axis]]
        stops = [k for k in range(channel + 1, len(source) + 1) if inner[k] == outer[axis + 1]]
        if starts and stops and not any(isinstance(dim, str) for dim in source[starts[-1]:stops[0]]):
            return axis, starts[-1], stops[0]
    return None
