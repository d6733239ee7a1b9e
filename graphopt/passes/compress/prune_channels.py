"""prune_channels: whole output channels removed from the layers, and every reader rewritten to match.

The channel graph (graphopt.passes.compress.channels) says which channels are one — a residual
stream's channel i in every layer adding to it, a depthwise convolution's channel and its input's
— and every place that reads them. Each family (the channels of the same set of layers) loses
its `ratio` least important channels, rounded so that a multiple of `round_to` stays (the CPU's
convolution kernels work in blocks of 8 or 16 channels); a channel the analysis pinned stays, and
a family with nothing to remove says why.

Importance (`importance`): `activation` (the default) scores a channel by what the layers reading
it lose without it, E[x_c²]·‖W_c‖² over each reader's rows (on the calibration data, else the
synthesized validation inputs); `l1`/`l2` by the norm of its filter, each layer's norms over
their mean. Then the readers are refit (`reconstruct`, He et al. 2017): the next layer's weights
W' on the kept channels x_k, and a bias shift b, minimize E‖x_k·W' + b − x·W‖² — least squares
from the Gram matrix and the mean of its input, measured in one pass (no training), pulled toward
the sliced weights by a ridge of (kept channels / rows seen) × the mean diagonal, so that a few
sentences' tokens, fewer than an FFN's neurons, are not learned by heart. A
k×k convolution is refit one kernel tap at a time on the channels' Gram matrix (the borders' zero
padding aside, the same sum of squares).
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import numpy as np
import onnx_ir as ir

from graphopt.dims import named
from graphopt.errors import InputError
from graphopt.passes.compress.channels import FIXED, ChannelGraph, Consumer
from graphopt.passes.compress.prune import SPARSE
from graphopt.passes.contract import FALLBACK_REASON, GRAM, LossyPass, Request
from graphopt.passes.match import constant_array, drop_unused_initializers, fresh_node_name, fresh_value_name, \
    infer_types, new_initializer
from graphopt.passes.quantize._linear import check_names, name_set
from graphopt.passes.registry import register

IMPORTANCE = ("activation", "l1", "l2")
MAX_GRAM = 4096  # channels of a reader's input refit by least squares (its Gram matrix: 128 MiB of float64)
DAMPING = 1e-6  # of the Gram matrix's mean diagonal, at least: channels the data never moved are not inverted
STRUCTURED = dataclasses.replace(SPARSE, name="pruned")


@dataclasses.dataclass
class _Family:
    """Channels of the same layers: one list of ids per channel group (removed together)."""

    producers: tuple[int, ...]
    groups: list[list[int]]
    pins: list[str]
    heads: bool = False  # its groups are attention heads (several channels of one layer each)


@register("prune_channels")
class PruneChannels(LossyPass):
    """Remove whole output channels of Conv/Gemm/MatMul layers and rewrite every reader (structured pruning).

    Not in the presets. The channels of layers joined by a residual Add, a depthwise convolution,
    Concat or Split are pruned together or not at all; a channel that reaches a graph output or an
    op the analysis does not follow stays (the report names it). The readers are refit by least
    squares on the data's statistics.

    Options:

    - `ratio`: the fraction of each family's channels removed (0 < ratio < 1).
    - `importance`: `activation` (what the readers lose), `l1` or `l2` (the filters' norms).
    - `reconstruct`: refit the readers' weights and biases (`false`: only slice them).
    - `round_to`: the kept channels are a multiple of this (1: exactly the ratio).
    - `exclude`: `;`-separated node names or op types whose output channels stay.
    """

    tolerance = STRUCTURED
    handles = "Conv/ConvTranspose (one group), Gemm and MatMul layers with constant float weights"
    heads: ClassVar[bool] = False
    unit: ClassVar[str] = "channels"
    untouched = "dense"
    cost = "layers"
    objective = "latency"
    verb = "pruned"

    def __init__(self, ratio: float = 0.5, importance: str = "activation", reconstruct: bool = True,
                 round_to: int = 8, exclude: str = "") -> None:
        super().__init__()
        if not 0.0 < ratio < 1.0:
            raise InputError(f"{self.name}: ratio must be between 0 and 1 (the share of {self.unit} removed), "
                             f"got {ratio}")
        if importance not in IMPORTANCE:
            raise InputError(f"{self.name}: importance {importance!r}: choose from {', '.join(IMPORTANCE)}")
        if round_to < 1:
            raise InputError(f"{self.name}: round_to must be 1 or more, got {round_to}")
        self.ratio, self.importance, self.reconstruct = ratio, importance, reconstruct
        self.round_to, self.exclude = round_to, name_set(exclude)

    def ladder(self) -> tuple[str, ...]:
        return (_form(self.ratio), _form(self.ratio / 2), self.untouched)

    def measures(self) -> bool:
        return self.reconstruct or self.importance == "activation"

    def requires(self, model: ir.Model) -> list[Request]:
        if not self.measures():
            return []
        graph = self._analyse(model)
        by_axis: dict[int, set[str]] = {}
        for consumer in graph.consumers:
            if len(consumer.ids) <= MAX_GRAM and consumer.value.name and \
                    any(index != FIXED and graph.pinned(index) is None for index in consumer.ids.tolist()):
                by_axis.setdefault(consumer.value_axis, set()).add(consumer.value.name)
        return [Request(GRAM, tuple(sorted(names)), axis) for axis, names in sorted(by_axis.items())]

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        check_names(model, self.exclude)
        graph = self._analyse(model)
        scores = self._scores(graph)
        removed = np.zeros(len(graph.parent), dtype=bool)
        chosen = []
        for family in _families(graph):
            head = graph.producers[family.producers[0]].node
            if family.heads != self.heads:  # the other pass's: prune_heads prunes heads, prune_channels channels
                if family.heads:
                    self.keep(head, "its channels go in heads (a fused Attention's, or split by a Reshape): "
                                    "prune_heads removes them whole")
                continue
            drop = self._choose(family, head, scores)
            if drop is not None:
                removed[[index for group in drop for index in group]] = True
                chosen.append((family, head, len(drop)))
        if not chosen:
            return ir.passes.PassResult(model, modified=False)
        before = [_weight_bytes(graph, family) for family, _, _ in chosen]
        refit = _Rewrite(model.graph, graph, removed, self).apply()
        for (family, head, count), bytes_before in zip(chosen, before):
            layers = len(family.producers)
            self.record(head, self.backed_off.get(head.name, self.ladder()[0]), before=bytes_before,
                        after=_weight_bytes(graph, family),
                        detail=f"{count} of {len(family.groups)} {self.unit} removed"
                               + (f" from each of {layers} layers joined by adds, depthwise convolutions or Concat"
                                  if layers > 1 else ""))
        self.changed(f"{sum(count for _, _, count in chosen)} {self.unit} removed from {len(chosen)} layer families"
                     + (f", {len(refit)} readers refit by least squares" if refit else ""))
        return ir.passes.PassResult(model, modified=True)

    def _analyse(self, model: ir.Model) -> ChannelGraph:
        """The channel graph, on shapes inferred and dims named (a batch dim inference left anonymous
        is still the same dim before and after a Reshape)."""
        infer_types(self, model)
        with named(model):
            return ChannelGraph(model.graph, self._fixed(model))

    def _fixed(self, model: ir.Model) -> dict[str, str]:
        fixed = {}
        for node in model.graph:
            if node.name in self.exclude or node.op_type in self.exclude:
                fixed[node.name] = "excluded"
            elif node.name in self.frozen:
                fixed[node.name] = self.frozen[node.name]
        return fixed

    def _choose(self, family: _Family, head: ir.Node, scores: np.ndarray) -> list[list[int]] | None:
        """The channel groups removed from a family (None: it stays, the reason recorded)."""
        form = self.backed_off.get(head.name, self.ladder()[0])
        if form == self.untouched:
            self.keep(head, FALLBACK_REASON)
            return None
        free = [group for group, pin in zip(family.groups, family.pins) if not pin]
        if not free:
            self.keep(head, family.pins[0])
            return None
        total = len(family.groups)
        kept = total - int(_ratio_of(form) * total)
        kept = min(total, math.ceil(kept / self.round_to) * self.round_to)
        count = min(total - kept, len(free))
        if count <= 0:
            pinned = next((pin for pin in family.pins if pin), "")
            self.keep(head, f"removing {_ratio_of(form):.0%} of its {total} {self.unit} removes none (a multiple "
                            f"of round_to={self.round_to} stays)" if not pinned else
                      f"{total - len(free)} of its {total} {self.unit} stay: {pinned}")
            return None
        return sorted(free, key=lambda group: float(scores[group].sum()))[:count]

    def _scores(self, graph: ChannelGraph) -> np.ndarray:
        """Each id's importance: what its readers lose without it, or its filter's norm (over its layer's mean)."""
        weights = np.zeros(len(graph.parent))
        for producer in graph.producers:
            array = np.moveaxis(constant_array(producer.node.inputs[producer.weight]), producer.axis, 0)
            rows = array.reshape(array.shape[0], -1).astype(np.float64)
            norms = np.abs(rows).sum(1) if self.importance == "l1" else np.sqrt(np.square(rows).sum(1))
            norms = norms.reshape(-1, producer.count).sum(0)  # an Attention's Q, K and V columns of a channel
            weights[producer.first:producer.first + producer.count] = norms / max(float(norms.mean()), 1e-30)
        if self.importance != "activation":
            return weights
        lost, seen = np.zeros(len(graph.parent)), np.zeros(len(graph.parent), dtype=bool)
        for consumer in graph.consumers:
            stats = self.statistics.channels.get(consumer.value.name)
            if stats is None or len(stats.mean_square) != len(consumer.ids):
                continue
            array = np.moveaxis(constant_array(consumer.node.inputs[consumer.weight]), consumer.axis, 0)
            rows = np.square(array.reshape(array.shape[0], -1).astype(np.float64)).sum(1)
            share = stats.mean_square * rows
            share = share / max(float(share.sum()), 1e-30)
            traced = consumer.ids != FIXED
            np.add.at(lost, consumer.ids[traced], share[traced])
            seen[consumer.ids[traced]] = True
        # by its filter where no reader of its group was measured; a group some reader measured (an
        # unfused attention head: the output projection reads one id of its Q, K and V) by what that loses
        roots = np.array([graph.root(index) for index in range(len(graph.parent))], dtype=np.int64)
        measured = np.zeros(len(graph.parent), dtype=bool)
        measured[roots[seen]] = True
        return np.where(seen, lost, np.where(measured[roots], 0.0, weights))


def _families(graph: ChannelGraph) -> list[_Family]:
    """The channel groups (joined ids) gathered by the set of layers they belong to, in graph order."""
    groups: dict[int, list[int]] = {}
    for index in range(len(graph.parent)):
        groups.setdefault(graph.root(index), []).append(index)
    families: dict[tuple[int, ...], _Family] = {}
    for root, members in groups.items():
        key = tuple(sorted({graph.owner[index] for index in members}))
        family = families.setdefault(key, _Family(key, [], []))
        family.heads = family.heads or len(members) > len(key)
        family.groups.append(members)
        family.pins.append(graph.pins.get(root, ""))
    return sorted(families.values(), key=lambda family: family.producers)


class _Rewrite:
    """The graph rewritten without the removed ids: constants sliced (readers refit), shapes,
    Split sizes and group counts updated."""

    def __init__(self, graph: ir.Graph, channels: ChannelGraph, removed: np.ndarray, owner: PruneChannels) -> None:
        self.graph, self.channels, self.removed, self.owner = graph, channels, removed, owner
        self.pending: dict[tuple[ir.Node, int], np.ndarray] = {}

    def keep(self, ids: np.ndarray) -> np.ndarray:
        return np.flatnonzero((ids == FIXED) | ~self.removed[np.maximum(ids, 0)])

    def array(self, node: ir.Node, index: int) -> np.ndarray:
        key = (node, index)
        if key not in self.pending:
            self.pending[key] = constant_array(node.inputs[index])
        return self.pending[key]

    def apply(self) -> set[str]:
        """Rewrite the graph; the names of the readers refit by least squares."""
        for site in self.channels.sites:
            kept = self.keep(site.ids)
            if len(kept) == len(site.ids):
                continue
            if site.kind == "slice":
                self.pending[(site.node, site.index)] = np.take(self.array(site.node, site.index), kept, site.axis)
            elif site.kind == "shape":
                shape = self.array(site.node, site.index).copy()
                shape[site.axis] = len(kept)
                self.pending[(site.node, site.index)] = shape
            elif site.kind == "group":
                site.node.attributes["group"] = ir.AttrInt64("group", len(kept))
            elif site.kind == "heads":
                site.node.attributes["num_heads"] = ir.AttrInt64("num_heads", len(kept) // site.axis)
            else:
                self._split(site)
        refit = set()
        for consumer in self.channels.consumers:
            kept = self.keep(consumer.ids)
            if len(kept) < len(consumer.ids) and self._refit(consumer, kept):
                refit.add(consumer.node.name)
        for (node, index), array in self.pending.items():
            old = node.inputs[index] if index < len(node.inputs) else None
            value = new_initializer(self.graph, array.astype(array.dtype, copy=False),
                                    f"{old.name if old is not None and old.name else node.name}_pruned")
            if index >= len(node.inputs):
                node.resize_inputs(index + 1)
            node.replace_input_with(index, value)
            drop_unused_initializers(self.graph, [old])
        for value, layout in self.channels.layouts.items():
            kept = self.keep(layout.ids)
            if len(kept) < len(layout.ids) and value.shape is not None:
                dims = list(value.shape.dims)
                dims[layout.axis] = len(kept)
                value.shape = ir.Shape(dims)
        return refit

    def _split(self, site) -> None:
        sizes = np.array([len(self.keep(part)) for part in site.parts], dtype=np.int64)
        node = site.node
        if "num_outputs" in node.attributes:
            del node.attributes["num_outputs"]
        if "split" in node.attributes:
            node.attributes["split"] = ir.AttrInt64s("split", sizes.tolist())
        elif _opset(self.graph, node) < 13:
            node.attributes["split"] = ir.AttrInt64s("split", sizes.tolist())
        else:
            self.pending[(node, 1)] = sizes

    def _refit(self, consumer: Consumer, kept: np.ndarray) -> bool:
        """Slice the reader's input rows, refit by least squares where its input was measured; whether it was."""
        node, index, axis = consumer.node, consumer.weight, consumer.axis
        weight = self.array(node, index)
        stats = self.owner.statistics.channels.get(consumer.value.name)
        usable = self.owner.reconstruct and stats is not None and stats.gram is not None and \
            stats.gram.shape == (len(consumer.ids),) * 2 and node.op_type != "ConvTranspose"
        if not usable:
            self.pending[(node, index)] = np.take(weight, kept, axis)
            return False
        moved = np.moveaxis(weight, axis, 0)
        rows = moved.reshape(moved.shape[0], -1).astype(np.float64)
        gram, mean = stats.gram, stats.mean
        size = len(kept)
        system = np.empty((size + 1, size + 1))
        system[:size, :size] = gram[np.ix_(kept, kept)]
        system[:size, size] = system[size, :size] = mean[kept]
        system[size, size] = 1.0
        # pulled toward the sliced weights, the harder the fewer rows the data had per channel (a few
        # sentences' tokens are fewer than an FFN's neurons: the exact fit would learn them by heart)
        ridge = max(float(np.mean(np.diag(gram))), 1e-30) * max(DAMPING, size / max(stats.count, 1))
        system[np.arange(size), np.arange(size)] += ridge
        target = np.vstack([gram[kept], mean[None, :]]) @ rows
        target[:size] += ridge * rows[kept]
        solved = np.linalg.solve(system, target)
        fitted = solved[:size].reshape((size, *moved.shape[1:]))
        self.pending[(node, index)] = np.moveaxis(fitted, 0, axis).astype(weight.dtype)
        shift = solved[size].reshape(moved.shape[1:])
        out_axis = 0 if node.op_type in ("Conv", "FusedConv") else shift.ndim - 1
        shift = shift.reshape(shift.shape[out_axis], -1).sum(1) if shift.ndim > 1 else shift
        self._shift_bias(node, shift.astype(np.float32))
        return True

    def _shift_bias(self, node: ir.Node, shift: np.ndarray) -> None:
        """Add the refit's bias shift (in units of x·W) to the reader's output: its bias input (Gemm's C
        is scaled by beta, its product by alpha), the constant of a bias Add after a MatMul, or a new Add."""
        beta = node.attributes.get_float("beta", 1.0) if node.op_type == "Gemm" else 1.0
        if node.op_type in ("Conv", "FusedConv") or (node.op_type == "Gemm" and beta != 0.0):
            if node.op_type == "Gemm":
                shift = (shift * node.attributes.get_float("alpha", 1.0) / beta).astype(np.float32)
            if len(node.inputs) > 2 and node.inputs[2] is not None:
                bias = self.array(node, 2)
                self.pending[(node, 2)] = (bias + shift).astype(bias.dtype)  # Gemm's C: [N], [1, N] or a scalar
            else:
                self.pending[(node, 2)] = shift
            return
        output = node.outputs[0]  # a MatMul (or a Gemm of beta 0): the bias Add after it, or a new Add
        uses = list(output.uses())
        if len(uses) == 1 and uses[0].node.op_type == "Add" and not output.is_graph_output():
            add, slot = uses[0].node, 1 - uses[0].idx
            other = self.pending.get((add, slot))  # the bias as pruned, when it was
            other = constant_array(add.inputs[slot]) if other is None else other
            if other is not None and other.shape == shift.shape:
                self.pending[(add, slot)] = (other + shift).astype(other.dtype)
                return
        shifted = ir.Node("", "Add", [output, new_initializer(self.graph, shift, f"{node.name}_pruned_shift")],
                          name=fresh_node_name(self.graph, f"{node.name}/pruned_shift"))
        result = shifted.outputs[0]
        result.shape, result.dtype = output.shape, output.dtype
        self.graph.insert_after(node, shifted)
        for use in uses:
            use.node.replace_input_with(use.idx, result)
        if output.is_graph_output():  # the graph's output keeps its name, now the shifted value's
            name = output.name
            output.name = fresh_value_name(self.graph, f"{name}_unshifted")
            result.name = name
            for index, value in enumerate(list(self.graph.outputs)):
                if value is output:
                    self.graph.outputs[index] = result


def _weight_bytes(graph: ChannelGraph, family: _Family) -> int:
    """The bytes of the weights of a family's layers."""
    total = 0
    for index in family.producers:
        producer = graph.producers[index]
        tensor = producer.node.inputs[producer.weight].const_value
        total += 0 if tensor is None else int(tensor.nbytes)
    return total


def _opset(graph: ir.Graph, node: ir.Node) -> int:
    return graph.opset_imports.get("", graph.opset_imports.get("ai.onnx", 1))


def _form(ratio: float, what: str = "channels") -> str:
    return f"{ratio * 100:g}% of {what} removed"


def _ratio_of(form: str) -> float:
    return float(form.split("%")[0]) / 100


@register("prune_heads")
class PruneHeads(PruneChannels):
    """Remove whole attention heads, fused or not, and the output projection's rows (structured pruning).

    Not in the presets; the heads of ONNX Runtime's fused Attention (`--target ort`) or of an
    unfused attention (the projections' channels split into heads by a Reshape, Q·Kᵀ and P·V
    batched MatMuls, the heads merged by another Reshape). A head is scored, removed and refit as
    prune_channels does a channel: its Q, K and V columns, its bias, num_heads, and the rows of
    the projection reading it go together.

    Options:

    - `ratio`: the fraction of each Attention's heads removed (0 < ratio < 1).
    - `importance`: `activation` (what the output projection loses), `l1` or `l2` (the heads' weights).
    - `reconstruct`: refit the output projection (`false`: only slice it).
    - `round_to`: the kept heads are a multiple of this.
    - `exclude`: `;`-separated node names or op types whose heads stay.
    """

    handles = "com.microsoft Attention nodes with constant packed Q/K/V weights, and unfused attentions' projections"
    heads = True
    unit = "heads"

    def __init__(self, ratio: float = 0.25, importance: str = "activation", reconstruct: bool = True,
                 round_to: int = 1, exclude: str = "") -> None:
        super().__init__(ratio, importance, reconstruct, round_to, exclude)

    def ladder(self) -> tuple[str, ...]:
        return (_form(self.ratio, "heads"), _form(self.ratio / 2, "heads"), self.untouched)
