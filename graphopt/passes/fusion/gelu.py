"""GELU fusion: the formulas exporters write out become one Gelu node.

    erf:   y = 0.5 · x · (1 + erf(x / √2))
    tanh:  y = 0.5 · x · (1 + tanh(√(2/π) · (x + 0.044715 · x³)))

Either product order and operand order is accepted (torchscript writes Mul(Mul(x, 1 + erf), 0.5),
GPT-2's gelu_new Mul(Mul(x, 0.5), 1 + tanh …)). portable emits ONNX Gelu (opset 20,
approximate="none" or "tanh"); ort emits com.microsoft Gelu / FastGelu, and folds a bias Add
in front (Gelu(h + b) → BiasGelu(h, b), FastGelu(h, b)), existing ONNX Gelu nodes included;
those contrib kernels are float32, so other types get the ONNX Gelu on both targets.
"""

from __future__ import annotations

import dataclasses
import math

import onnx_ir as ir

from graphopt.passes.match import (
    MS_DOMAIN,
    anchors,
    close,
    fresh_node_name,
    in_graph,
    infer_types,
    is_float,
    is_op,
    leaking_node,
    only_consumer,
    operands,
    other_input,
    scalar,
    split_constant,
    vector,
)
from graphopt.passes.registry import Pass, register

GELU_OPSET = 20
_SQRT2 = math.sqrt(2.0)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_CUBIC = 0.044715


class _Refused(Exception):
    """A GELU-shaped subgraph that is not one; the message says which step failed."""


@dataclasses.dataclass
class _Gelu:
    x: ir.Value
    output: ir.Value
    nodes: list[ir.Node]
    approximate: str


def _erf_head(erf: ir.Node) -> tuple[ir.Value, list[ir.Node]] | None:
    """x and the node computing x/√2 (Div by √2 or Mul by 1/√2) in front of the Erf."""
    producer = erf.inputs[0].producer() if erf.inputs and erf.inputs[0] is not None else None
    divided = operands(producer, "Div")
    if divided is not None and scalar(divided[1], divided[0]) is not None:
        x, divisor = divided[0], scalar(divided[1], divided[0])
        if not close(divisor, _SQRT2):
            raise _Refused(f"Erf's input is x / {divisor:g}, GELU needs x / √2")
        return x, [producer]
    multiplied = split_constant(producer, "Mul")
    if multiplied is not None:
        x, factor = multiplied
        if not close(factor, 1 / _SQRT2):
            raise _Refused(f"Erf's input is x · {factor:g}, GELU needs x · 1/√2")
        return x, [producer]
    return None


def _cube_of(value: ir.Value) -> ir.Value | None:
    """x when `value` is Pow(x, 3), Mul(x, Mul(x, x)) or Mul(Mul(x, x), x)."""
    producer = value.producer()
    powered = operands(producer, "Pow")
    if powered is not None:
        return powered[0] if close(scalar(powered[1], powered[0]), 3.0, rel=1e-6) else None
    multiplied = operands(producer, "Mul")
    if multiplied is None:
        return None
    for outer, inner in (multiplied, multiplied[::-1]):
        square = operands(inner.producer(), "Mul")
        if square is not None and square[0] is square[1] is outer:
            return outer
    return None


def _tanh_head(tanh: ir.Node) -> tuple[ir.Value, list[ir.Node]] | None:
    """x and the nodes computing √(2/π)·(x + 0.044715·x³) in front of the Tanh."""
    scaled = tanh.inputs[0].producer() if tanh.inputs and tanh.inputs[0] is not None else None
    split = split_constant(scaled, "Mul")
    if split is None:
        return None
    inner, factor = split
    summed = operands(inner.producer(), "Add")
    if summed is None:
        return None
    for x, cubic_term in (summed, summed[::-1]):
        cubic = split_constant(cubic_term.producer(), "Mul")
        if cubic is None or _cube_of(cubic[0]) is not x:
            continue
        if not close(cubic[1], _CUBIC, rel=1e-3):
            raise _Refused(f"the cubic term is {cubic[1]:g}·x³, GELU needs 0.044715·x³")
        if not close(factor, _SQRT_2_OVER_PI):
            raise _Refused(f"Tanh's input is scaled by {factor:g}, GELU needs √(2/π) = 0.797885")
        cube = cubic[0].producer()
        squares = [value.producer() for value in cube.inputs if value is not x and is_op(value.producer(), "Mul")]
        return x, [scaled, inner.producer(), cubic_term.producer(), cube, *squares]
    return None


def _tail(anchor: ir.Node, x: ir.Value) -> tuple[ir.Value, list[ir.Node]]:
    """The output of 0.5 · x · (1 + anchor), in any product order, and the nodes computing it."""
    if only_consumer(anchor.outputs[0]) is None and anchor.outputs[0].uses():
        raise _Refused(f"{anchor.op_type}'s output is also used outside the GELU")
    plus_one = only_consumer(anchor.outputs[0])
    added = split_constant(plus_one, "Add")
    if added is None or added[0] is not anchor.outputs[0]:
        raise _Refused(f"{anchor.op_type}'s output is not followed by + 1")
    if not close(added[1], 1.0):
        raise _Refused(f"{anchor.op_type}'s output is followed by + {added[1]:g}, GELU needs + 1")
    one_plus = plus_one.outputs[0]
    first = only_consumer(one_plus)
    if not is_op(first, "Mul"):
        raise _Refused("1 + … is not multiplied by x and 0.5 (it is used elsewhere or not by a Mul)")
    partner = other_input(first, one_plus)
    if partner is x:
        second = only_consumer(first.outputs[0])
        half = split_constant(second, "Mul")
        if half is None or not close(half[1], 0.5):
            raise _Refused("x · (1 + …) is not multiplied by 0.5")
        return second.outputs[0], [plus_one, first, second]
    if close(scalar(partner, one_plus), 0.5):
        second = only_consumer(first.outputs[0])
        if not is_op(second, "Mul") or other_input(second, first.outputs[0]) is not x:
            raise _Refused("0.5 · (1 + …) is not multiplied by x")
        return second.outputs[0], [plus_one, first, second]
    half_x = split_constant(partner.producer() if partner is not None else None, "Mul")
    if half_x is not None and half_x[0] is x and close(half_x[1], 0.5) and only_consumer(partner) is first:
        return first.outputs[0], [plus_one, partner.producer(), first]
    raise _Refused("1 + … is not multiplied by x and 0.5")


def _match(anchor: ir.Node) -> _Gelu | None:
    """The GELU around an Erf or Tanh node; None when it is not GELU-shaped at all."""
    head = _erf_head(anchor) if anchor.op_type == "Erf" else _tanh_head(anchor)
    if head is None:
        return None
    x, head_nodes = head
    if not is_float(x):
        raise _Refused(f"x is {x.dtype}, not a floating-point tensor")
    output, tail_nodes = _tail(anchor, x)
    nodes = [*head_nodes, anchor, *tail_nodes]
    if not in_graph(anchor.graph, *nodes):
        return None
    leak = leaking_node(nodes, output)
    if leak is not None:
        raise _Refused(f"{leak.op_type} {leak.name!r}'s output is also used outside the GELU")
    return _Gelu(x, output, nodes, "none" if anchor.op_type == "Erf" else "tanh")


def _bias(x: ir.Value, users: set[ir.Node]) -> tuple[ir.Value, ir.Value, ir.Node] | None:
    """(h, b, Add) when x = h + b with b a constant vector over x's last axis, read only by `users`."""
    add = x.producer()
    pair = operands(add, "Add")
    if pair is None or x.is_graph_output() or any(use.node not in users for use in x.uses()):
        return None
    if not in_graph(next(iter(users)).graph, add):
        return None
    for h, b in (pair, pair[::-1]):
        values = vector(b)
        # BiasGelu/FastGelu add b along h's own last axis: h must already have that width.
        last = h.shape.dims[-1] if h.shape is not None and len(h.shape) else None
        if values is not None and h.const_value is None and isinstance(last, int) and values.shape[0] == last:
            return h, b, add
    return None


@register("fuse_gelu")
class FuseGelu(Pass):
    """Fuse erf/tanh GELU formulas into Gelu (opset 20), or com.microsoft Gelu/FastGelu/BiasGelu for ort.

    Below opset 20 the ONNX Gelu is refused with the reason (convert with `--opset 20`, or use
    `--target ort` for float32). Near misses are reported with the step that failed: another
    constant (x/2 for x/√2, 0.04·x³, + 2, a scale other than √(2/π)), an intermediate also read
    outside the GELU, a non-float x. The folded bias must be a constant vector of h's last dim.
    """

    target_aware = True

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        infer_types(self, model)
        counts: dict[str, int] = {}
        for graph, node in anchors(model, "Erf", "Tanh", "Gelu"):
            fused = None
            if node.op_type != "Gelu":
                fused = self._fuse_formula(model, graph, node)
            elif self.target == "ort":
                fused = self._fuse_bias_into_gelu(model, graph, node)
            if fused:
                counts[fused] = counts.get(fused, 0) + 1
        for op_type, count in counts.items():
            self.changed(f"{count} {op_type}")
        return ir.passes.PassResult(model, modified=bool(counts))

    def _fuse_formula(self, model: ir.Model, graph: ir.Graph, anchor: ir.Node) -> str | None:
        try:
            gelu = _match(anchor)
        except _Refused as refusal:
            self.skip(f"{anchor.op_type} {anchor.name!r} not fused into a Gelu: {refusal}")
            return None
        if gelu is None:
            return None
        if self.target == "ort" and gelu.x.dtype == ir.DataType.FLOAT:
            return self._emit_ort(model, graph, gelu.x, gelu.nodes, gelu.output, gelu.approximate)
        opset = model.opset_imports.get("", 1)
        if opset < GELU_OPSET:
            hint = ("; the com.microsoft kernels --target ort uses are float32, x is " + str(gelu.x.dtype)
                    if self.target == "ort" else ", or use --target ort")
            self.skip(f"{anchor.op_type} {anchor.name!r} not fused: ONNX Gelu needs opset {GELU_OPSET}, "
                      f"the model has {opset} (convert with --opset {GELU_OPSET}{hint})")
            return None
        attributes = [ir.AttrString("approximate", gelu.approximate)] if gelu.approximate == "tanh" else []
        node = ir.Node("", "Gelu", [gelu.x], attributes, name=_name(graph, gelu.output, "Gelu"))
        ir.convenience.replace_nodes_and_values(graph, gelu.nodes[-1], gelu.nodes, [node],
                                                [gelu.output], [node.outputs[0]])
        return "Gelu"

    def _fuse_bias_into_gelu(self, model: ir.Model, graph: ir.Graph, gelu: ir.Node) -> str | None:
        approximate = gelu.attributes.get_string("approximate", "none")
        x = gelu.inputs[0] if gelu.inputs else None
        if x is None or x.dtype != ir.DataType.FLOAT or _bias(x, {gelu}) is None:
            return None
        return self._emit_ort(model, graph, gelu.inputs[0], [gelu], gelu.outputs[0], approximate)

    def _emit_ort(self, model: ir.Model, graph: ir.Graph, x: ir.Value, nodes: list[ir.Node],
                  output: ir.Value, approximate: str) -> str:
        """com.microsoft Gelu/FastGelu over x, with x's bias Add folded in when it has one."""
        bias = _bias(x, set(nodes))
        inputs = [bias[0], bias[1]] if bias else [x]
        op_type = "FastGelu" if approximate == "tanh" else ("BiasGelu" if bias else "Gelu")
        removed = [bias[2], *nodes] if bias else nodes
        node = ir.Node(MS_DOMAIN, op_type, inputs, name=_name(graph, output, op_type))
        model.opset_imports.setdefault(MS_DOMAIN, 1)
        ir.convenience.replace_nodes_and_values(graph, nodes[-1], removed, [node], [output], [node.outputs[0]])
        return op_type


def _name(graph: ir.Graph, output: ir.Value, op_type: str) -> str:
    return fresh_node_name(graph, f"{output.name or 'gelu'}/{op_type}")
