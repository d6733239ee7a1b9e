"""A smaller student made from the teacher itself: its encoder keeps every K-th layer (layers 0, K,
2K…), each initialised with the teacher's own weights, as DistilBERT was made from BERT.

Layers are found by the exporters' parameter names (`encoder.layer.3.`, `h.3.`, `layers.3.`,
`blocks.3.`): the nodes reading layer N's numbered weights are its anchors (a weight read by several
nodes is not: O3 merges identical weights, such as a random model's LayerNorm ones, across layers). The residual stream
between layers N and N+1 is the value every path from N's anchors to N+1's anchors goes through (the
latest such value, float, shaped like a hidden state); the stream into layer 0 comes from the weights
before it (the embeddings), the stream out of the last layer goes to the weights after it (a final
norm, a head) or to the graph's outputs. This holds on the exporters' graphs and on graphopt's fused
ones alike, whatever names the fused weights lost. Dropping layers a..b reconnects the readers of b's
output to a's input; what no kept node reads any more is removed, and a dropped layer's weights still
read afterwards are an error.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable

import onnx_ir as ir

from graphopt.errors import InputError
from graphopt.passes.cleanup import RemoveUnused

_NUMBERED = re.compile(r"(?:^|[./_])(?:layers?|h|blocks?)[./_](\d+)(?:[./_]|$)")
_FLOATS = {ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE}


@dataclasses.dataclass
class Dropped:
    layers: int                  # the teacher's
    kept: list[int]              # its layers the student keeps, in order
    # (student value, teacher value) after each kept block but the last (whose output is the model's): the
    # student's after layer kept[j], the teacher's after the last layer that block stands for (names, for
    # matching hidden states)
    pairs: list[tuple[str, str]]


def _anchor(node: ir.Node) -> int | str | None:
    """The layer number a node's own weights name; "named" for an exporter's parameter name without one
    (model.embeddings.LayerNorm.weight); None for no weights or unnamed ones (a fusion's)."""
    numbers, named = set(), False
    for value in node.inputs:
        if value is None or not value.is_initializer():
            continue
        match = _NUMBERED.search(value.name or "")
        if match and len({use.node for use in value.uses()}) == 1:  # not a weight shared by many layers
            numbers.add(int(match.group(1)))
        elif "." in (value.name or ""):
            named = True
    return max(numbers) if numbers else ("named" if named else None)


def _reaches(starts: Iterable[ir.Value], targets: set[ir.Node], outputs: bool, blocked: ir.Value) -> bool:
    """Whether any path from `starts` reaches a node of `targets` (or, with `outputs`, a graph output)
    without going through `blocked`."""
    seen, stack = set(), [value for value in starts if value is not blocked]
    while stack:
        value = stack.pop()
        if outputs and value.is_graph_output():
            return True
        for use in value.uses():
            node = use.node
            if node in targets:
                return True
            if node not in seen:
                seen.add(node)
                stack.extend(output for output in node.outputs if output is not blocked)
    return False


def _stream(graph: ir.Graph, sources: list[ir.Node], targets: list[ir.Node], like: ir.Value | None,
            where: str) -> ir.Value:
    """The latest float value every path from `sources` to `targets` (or to the graph's outputs when
    there are none) goes through."""
    starts = [value for node in sources for value in node.outputs]
    goal, outputs = set(targets), not targets
    order = {node: index for index, node in enumerate(graph)}
    first = min(order[node] for node in sources)
    last = min(order[node] for node in targets) if targets else len(order)
    candidates = [value for node in graph if first <= order[node] < last for value in node.outputs
                  if value.dtype in _FLOATS and (like is None or _same_width(value, like))]
    for value in reversed(candidates):
        if _reaches(starts, goal, outputs, value) is False and _reaches(starts, goal, outputs, None):
            return value
    raise InputError(f"--drop-layers: no single value carries the hidden state {where}: this model's layers "
                     f"cannot be told apart")


def _same_width(value: ir.Value, like: ir.Value) -> bool:
    if value.shape is None or like.shape is None:
        return True
    return len(value.shape) == len(like.shape) and value.shape[-1] == like.shape[-1]


def drop_layers(model: ir.Model, every: int) -> Dropped:
    """Keep layers 0, every, 2·every… of `model` (in place); raises InputError where the layers cannot be
    found or told apart, or where nothing would be dropped."""
    if every < 2:
        raise InputError(f"--drop-layers {every}: keep every K-th layer with K >= 2")
    graph = model.graph
    anchors: dict[int, list[ir.Node]] = {}
    named: list[ir.Node] = []
    for node in graph:
        number = _anchor(node)
        if number == "named":
            named.append(node)
        elif number is not None:
            anchors.setdefault(number, []).append(node)
    numbers = sorted(anchors)
    if not numbers:
        raise InputError("--drop-layers: no numbered layers in this model (weights named like encoder.layer.N. "
                         "or h.N., as torch exporters name them)")
    count = numbers[-1] + 1
    if numbers != list(range(count)):
        raise InputError(f"--drop-layers: layer numbers {numbers} are not 0..{count - 1}")
    if count <= every - 1 or count < 2:
        raise InputError(f"--drop-layers {every}: the model has {count} layer(s), nothing to drop")
    order = {node: index for index, node in enumerate(graph)}
    before = [node for node in named if order[node] < min(order[node] for node in anchors[0])]
    after = [node for node in named if order[node] > max(order[node] for node in anchors[count - 1])]
    stream = []  # stream[n]: the output of layer n
    for number in range(count):
        targets = anchors[number + 1] if number + 1 < count else after
        stream.append(_stream(graph, anchors[number], targets, stream[0] if stream else None,
                              f"after layer {number}"))
    entry = _stream(graph, before, anchors[0], stream[0], "into layer 0") if before else None
    kept = list(range(0, count, every))
    pairs = []
    for position, layer in enumerate(kept):
        last = (kept[position + 1] if position + 1 < len(kept) else count) - 1  # the layers this block stands for
        if position + 1 < len(kept):
            pairs.append((stream[layer], stream[last].name))
        if last > layer:
            _bypass(stream[last], stream[layer])
    del entry  # found to prove layer 0's input is one value; layer 0 is always kept
    RemoveUnused()(model)
    alive = set(graph)
    left = [number for number in range(count) if number not in kept and any(node in alive for node in anchors[number])]
    if left:
        raise InputError(f"--drop-layers: layer(s) {left} are still read after being bypassed: this model's layers "
                         f"cannot be told apart")
    return Dropped(count, kept, [(mine.name, theirs) for mine, theirs in pairs])


def _bypass(dropped: ir.Value, kept: ir.Value) -> None:
    """The readers of `dropped` read `kept`; a graph output keeps its name."""
    name, is_output = dropped.name, dropped.is_graph_output()
    ir.convenience.replace_all_uses_with(dropped, kept, replace_graph_outputs=True)
    if is_output:
        dropped.name = f"{name}/dropped"
        kept.name = name
