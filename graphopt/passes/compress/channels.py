"""The channel graph: which output channels of which layers must be removed together, and every
place that reads them — the dependency analysis structured pruning stands on.

Every layer with a constant weight — Conv/FusedConv/ConvTranspose with one group, Gemm, MatMul by
a constant matrix — makes channels: one id per output channel. The analysis follows each id, in
graph order, through the ops after the layer, keeping for every value the id each position of its
channel axis carries (a Layout), and records what removing ids would have to rewrite (a Site):
the next layer's input rows, biases and BatchNormalization/affine constants, a depthwise
convolution's weights and group count, Reshape/Resize constants, Split sizes. Concat lays its
inputs' ids end to end, Flatten and Reshape repeat them over the axes merged with the channels,
Transpose moves the axis (each op's rule: channel_ops.py); ONNX Runtime's fused Attention makes
one id per V channel, a head's joined. An unfused attention's Reshape splitting channels into
heads joins each head's ids and carries one per head on the heads' axis; a MatMul of two computed
operands (Q·Kᵀ, P·V) passes that axis through. Where two traced values meet elementwise or in such
a MatMul (a residual Add, FusedConv's sum input, a head's Q and K) their ids are joined: channel i of
one is channel i of the other, removed with it or not at all (union-find).

An id is pinned — never removed — with the reason a user can read where its channel reaches
something the analysis does not follow: a graph output, an op it does not know, a normalization
or reduction over the channels, a shape read at run time, a grouped convolution, a value not
traced. Pinning is per joined group, so a residual stream with a pinned end is pinned whole.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from graphopt.passes.compress.channel_ops import FIXED, RULES, Layout, Site
from graphopt.passes.match import MS_DOMAIN, constant_tensor

__all__ = ["FIXED", "ChannelGraph", "Consumer", "Layout", "Producer", "Site"]




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
        rule = RULES.get((node.domain or "", node.op_type)) if node.domain in ("", "ai.onnx", MS_DOMAIN) else None
        if rule is None:
            for _, layout in traced:
                self._pin(layout.ids, f"{node.op_type} {node.name!r} reads them, and the analysis does not follow it")
            return
        rule(self, node, traced)
        if not any(output in self.layouts for output in node.outputs):  # a rule that stops them pins them
            for _, layout in traced:
                self._pin(layout.ids, f"{node.op_type} {node.name!r} reads them, and the analysis does not follow it")

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


