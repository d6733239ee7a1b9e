"""The channel graph: which output channels of which layers must be removed together, and every
place that reads them — the dependency analysis structured pruning stands on.

Every layer with a constant weight — Conv/FusedConv/ConvTranspose with one group, Gemm, MatMul by
a constant matrix — makes channels: one id per output channel. The analysis follows each id, in
graph order, through the ops after the layer, keeping for every value the id each position of its
channel axis carries (a Layout), and records what removing ids would have to rewrite (a Site):
the next layer's input rows, biases and BatchNormalization/affine constants, a depthwise
convolution's weights and group count, Reshape/Resize constants, Split sizes. Concat lays its
inputs' ids end to end, Flatten and Reshape repeat them over the axes merged with the channels,
Transpose moves the axis; ONNX Runtime's fused Attention makes one id per V channel, a head's
joined. Where two traced values meet elementwise (a residual Add, FusedConv's
sum input) their ids are joined: channel i of one is channel i of the other, removed with it or
not at all (union-find).

An id is pinned — never removed — with the reason a user can read where its channel reaches
something the analysis does not follow: a graph output, an op it does not know, a normalization
or reduction over the channels, a shape read at run time, a grouped convolution, a value not
traced. Pinning is per joined group, so a residual stream with a pinned end is pinned whole.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import onnx_ir as ir

from graphopt.passes.match import MS_DOMAIN, constant_array, constant_tensor

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


@dataclasses.dataclass
class Producer:
    """A layer whose output channels are ids first..first+count-1."""

    node: ir.Node
    first: int
    count: int
    weight: int  # the weight's input index
    axis: int    # the weight's output-channel axis


@dataclasses.dataclass
class Consumer:
    """A layer reading traced channels through its constant weight: the rows a removed id takes
    away, and the input those rows multiply (what reconstruction refits them on)."""

    node: ir.Node
    weight: int
    axis: int  # the weight's input-channel axis
    value: ir.Value
    value_axis: int
    ids: np.ndarray


class ChannelGraph:
    """The analysis of one graph: its producers, consumers, sites and the traced values' layouts."""

    def __init__(self, graph: ir.Graph, fixed: dict[str, str]) -> None:
        """`fixed`: {node name: why} of layers whose output channels must stay (excluded, held back)."""
        self.producers: list[Producer] = []
        self.consumers: list[Consumer] = []
        self.sites: list[Site] = []
        self.layouts: dict[ir.Value, Layout] = {}
        self.parent: list[int] = []
        self.pins: dict[int, str] = {}  # root id -> why its group stays
        self.fixed = fixed
        self.owner: list[int] = []  # id -> index of its producer
        for node in graph:
            self._visit(node)
        for value, layout in self.layouts.items():
            if any(use.node.graph is not graph for use in value.uses()):
                self._pin(layout.ids, f"a subgraph (If/Loop/Scan body) reads {value.name!r}")
        for value in graph.outputs:
            if value in self.layouts:
                self._pin(self.layouts[value].ids, f"it reaches the graph output {value.name!r}")

    # union-find ---------------------------------------------------------------------------------

    def root(self, index: int) -> int:
        while self.parent[index] != index:
            self.parent[index] = self.parent[self.parent[index]]
            index = self.parent[index]
        return index

    def _join(self, first: np.ndarray, second: np.ndarray, why: str) -> None:
        for a, b in zip(first.tolist(), second.tolist()):
            if a == FIXED and b == FIXED:
                continue
            if FIXED in (a, b):
                self._pin(np.array([b if a == FIXED else a]), why)
                continue
            ra, rb = self.root(a), self.root(b)
            if ra != rb:
                self.parent[rb] = ra
                if rb in self.pins:
                    self.pins.setdefault(ra, self.pins.pop(rb))

    def _pin(self, ids: np.ndarray, why: str) -> None:
        for index in set(ids.tolist()) - {FIXED}:
            self.pins.setdefault(self.root(index), why)

    def pinned(self, index: int) -> str | None:
        return self.pins.get(self.root(index))

    # the walk -----------------------------------------------------------------------------------

    def _visit(self, node: ir.Node) -> None:
        traced = [(index, self.layouts[value]) for index, value in enumerate(node.inputs)
                  if value is not None and value in self.layouts]
        if node.domain == MS_DOMAIN and node.op_type == "Attention":
            self._attention(node, traced)
            return
        layer = _layer(node)
        if layer is not None:
            self._layer(node, *layer, traced)
            return
        if not traced:
            return
        rule = _RULES.get((node.domain or "", node.op_type)) if node.domain in ("", "ai.onnx", MS_DOMAIN) else None
        if rule is None:
            for _, layout in traced:
                self._pin(layout.ids, f"{node.op_type} {node.name!r} reads them, and the analysis does not follow it")
            return
        rule(self, node, traced)

    def _set(self, value: ir.Value, layout: Layout) -> None:
        self.layouts[value] = layout

    def _layer(self, node: ir.Node, weight: int, out_axis: int, in_axis: int, traced) -> None:
        array_shape = constant_tensor(node.inputs[weight]).shape
        rank = len(array_shape)
        value_axis = -(rank - 1) if node.op_type in ("Conv", "FusedConv", "ConvTranspose") else -1
        for index, layout in traced:
            if index == 0 and layout.axis == value_axis and len(layout.ids) == array_shape[in_axis]:
                self.consumers.append(Consumer(node, weight, in_axis, node.inputs[0], value_axis, layout.ids))
            elif not (node.op_type == "FusedConv" and index == 3):
                self._pin(layout.ids, f"{node.op_type} {node.name!r} reads them other than as its input channels")
        output = node.outputs[0]
        count = array_shape[out_axis]
        if node.name in self.fixed:
            ids = np.full(count, FIXED, dtype=np.int64)
        else:
            first = len(self.parent)
            self.parent.extend(range(first, first + count))
            self.owner.extend([len(self.producers)] * count)
            self.producers.append(Producer(node, first, count, weight, out_axis))
            ids = np.arange(first, first + count, dtype=np.int64)
            self.sites.append(Site("slice", node, weight, out_axis, ids))
            bias = 2 if len(node.inputs) > 2 else None
            if bias is not None and node.inputs[bias] is not None and not self._constant(node, bias, Layout(-1, ids)):
                self._pin(ids, f"{node.op_type} {node.name!r} has a bias computed at run time")
        layout = Layout(value_axis, ids)
        self._set(output, layout)
        if node.op_type == "FusedConv" and len(node.inputs) > 3 and node.inputs[3] is not None:
            self._meet(node, node.inputs[3], layout)  # Z, added to the convolution's output

    def _attention(self, node: ir.Node, traced) -> None:
        """ONNX Runtime's fused Attention makes channels: its output's, one per V column, each head's
        joined (a head is removed whole: its Q, K and V columns, the bias, num_heads, and the output
        projection's rows that read it)."""
        for _, layout in traced:  # its input is a normalization's output; a traced one is not followed
            self._pin(layout.ids, f"Attention {node.name!r} reads them")
        inputs = [*node.inputs, *[None] * 6]
        weight, bias = constant_tensor(inputs[1]), constant_tensor(inputs[2])
        heads = node.attributes.get_int("num_heads", 0)
        if weight is None or bias is None or len(weight.shape) != 2 or heads < 1 or weight.shape[1] % (3 * heads):
            return  # not a layer this analysis knows: its output is not traced
        count = weight.shape[1] // 3
        size = count // heads
        mask = inputs[5].shape if inputs[5] is not None else None
        why = "its Q, K and V sizes differ (qkv_hidden_sizes)" if "qkv_hidden_sizes" in node.attributes else \
            "it keeps a past state" if inputs[4] is not None or any(
                value.uses() or value.is_graph_output() for value in node.outputs[1:]) else \
            "its attention bias has a per-head axis" if inputs[5] is not None and (
                mask is None or len(mask) != 4 or mask[1] != 1) else ""
        if node.name in self.fixed:
            self._set(node.outputs[0], Layout(-1, np.full(count, FIXED, dtype=np.int64)))
            return
        first = len(self.parent)
        self.parent.extend(range(first, first + count))
        self.owner.extend([len(self.producers)] * count)
        self.producers.append(Producer(node, first, count, 1, 1))
        ids = np.arange(first, first + count, dtype=np.int64)
        for head in range(heads):
            block = ids[head * size:(head + 1) * size]
            self._join(np.full(size - 1, block[0]), block[1:], "")
        if why:
            self._pin(ids, f"Attention {node.name!r}: {why}")
        self.sites += [Site("slice", node, 1, 1, np.tile(ids, 3)), Site("slice", node, 2, 0, np.tile(ids, 3)),
                       Site("heads", node, -1, size, ids)]
        self._set(node.outputs[0], Layout(-1, ids))

    def _constant(self, node: ir.Node, index: int, layout: Layout) -> bool:
        """Slice a constant operand along the channel axis where it has one; False (pinned) where
        it is not a constant or does not broadcast."""
        tensor = constant_tensor(node.inputs[index])
        if tensor is None:
            return False
        shape = tuple(tensor.shape)
        if len(shape) < -layout.axis or shape[layout.axis] == 1:
            return True
        if shape[layout.axis] == len(layout.ids):
            self.sites.append(Site("slice", node, index, len(shape) + layout.axis, layout.ids))
            return True
        self._pin(layout.ids, f"{node.op_type} {node.name!r} combines them with a constant of shape {list(shape)}")
        return True

    def _meet(self, node: ir.Node, value: ir.Value, layout: Layout) -> None:
        """`value` is combined elementwise with channels of `layout`: join them, or pin them where it
        is not traced and has that axis."""
        other = self.layouts.get(value)
        if other is not None:
            if other.axis == layout.axis and len(other.ids) == len(layout.ids):
                self._join(layout.ids, other.ids, f"{node.op_type} {node.name!r} adds them to channels that stay")
            elif len(other.ids) != 1:
                self._pin(np.concatenate([layout.ids, other.ids]),
                          f"{node.op_type} {node.name!r} broadcasts them against channels on another axis")
            return
        shape = value.shape
        if shape is not None and (len(shape) < -layout.axis or shape[layout.axis] == 1):
            return
        self._pin(layout.ids, f"{node.op_type} {node.name!r} combines them with {value.name!r}, which no layer "
                              f"here makes (a residual stream from a normalization or a graph input)")


# rules: what each op does to the channels it reads ------------------------------------------------


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
        listed = node.attributes.get_ints("axes", None)
        if listed is None and len(node.inputs) > 1 and node.inputs[1] is not None:
            constant = constant_array(node.inputs[1])
            listed = None if constant is None else constant.tolist()
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
    shape = constant_array(node.inputs[1]) if len(node.inputs) > 1 else None
    if index != 0 or shape is None:
        graph._pin(layout.ids, f"Reshape {node.name!r} computes its shape at run time from them")
        return
    if source is None or target is None:
        graph._pin(layout.ids, f"Reshape {node.name!r} reshapes them between shapes the analysis cannot tell")
        return
    channel = len(source) + layout.axis
    found = _merging_axis(source, target, channel)
    if found is None:
        graph._pin(layout.ids, f"Reshape {node.name!r} splits them over several axes (attention heads: prune_heads)")
        return
    axis, start, stop = found
    ids = _merged(layout.ids, source, start, channel, stop)
    if int(shape[axis]) > 0:
        graph.sites.append(Site("shape", node, 1, axis, ids))
    elif int(shape[axis]) == 0 and (start, stop) != (channel, channel + 1):
        graph._pin(layout.ids, f"Reshape {node.name!r} copies a dim into the one that holds them")
        return
    graph._set(node.outputs[0], Layout(axis - len(target), ids))


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
    sizes = node.attributes.get_ints("split", None)
    if sizes is None and len(node.inputs) > 1 and node.inputs[1] is not None:
        constant = constant_array(node.inputs[1])
        if constant is None:
            graph._pin(layout.ids, f"Split {node.name!r} computes its sizes at run time")
            return
        sizes = constant.tolist()
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
    pads = node.attributes.get_ints("pads", None)
    if pads is None and len(node.inputs) > 1 and node.inputs[1] is not None:
        constant = constant_array(node.inputs[1])
        pads = None if constant is None else constant.tolist()
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
    axes = node.attributes.get_ints("axes", None)
    if axes is None and len(node.inputs) > 1 and node.inputs[1] is not None:
        constant = constant_array(node.inputs[1])
        axes = None if constant is None else constant.tolist()
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


_RULES = {
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
    ("", "Conv"): _depthwise, (MS_DOMAIN, "FusedConv"): _depthwise,
}


# helpers ----------------------------------------------------------------------------------------


def _layer(node: ir.Node) -> tuple[int, int, int] | None:
    """(weight input, its output-channel axis, its input-channel axis) of a layer that makes
    channels: a one-group Conv/FusedConv/ConvTranspose, a Gemm (x not transposed) or MatMul by a
    constant 2-D float matrix."""
    if node.domain not in ("", "ai.onnx", MS_DOMAIN) or len(node.inputs) < 2:
        return None
    weight = constant_tensor(node.inputs[1])
    if weight is None or not weight.dtype.is_floating_point():
        return None
    conv = node.op_type in ("Conv", "ConvTranspose") and node.domain in ("", "ai.onnx") or \
        node.op_type == "FusedConv" and node.domain == MS_DOMAIN
    if conv and node.attributes.get_int("group", 1) == 1 and len(weight.shape) >= 3:
        return (1, 1, 0) if node.op_type == "ConvTranspose" else (1, 0, 1)
    if node.domain == MS_DOMAIN or len(weight.shape) != 2:
        return None
    if node.op_type == "MatMul":
        return 1, 1, 0
    if node.op_type == "Gemm" and not node.attributes.get_int("transA", 0):
        return (1, 0, 1) if node.attributes.get_int("transB", 0) else (1, 1, 0)
    return None


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
