"""LayerNormalization fusion: the decomposed mean/variance formula becomes one LayerNormalization.

    μ = mean(x),  d = x − μ,  σ² = mean(d²),  y = d / √(σ² + ε) · γ + β

over the trailing axes (ReduceMean axes as an attribute before opset 18, as an input from
18), with d² as Pow(d, 2) or Mul(d, d), the division as Div or Mul by Reciprocal, γ and β
optional and in either operand order. ONNX LayerNormalization needs opset 17; both targets
get it (ONNX Runtime runs the standard op). Refused with a reason: ε outside the square
root, a non-constant ε, γ/β that are not constants over the normalized axes.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from graphopt.passes.match import (
    anchors,
    close,
    fresh_node_name,
    fresh_value_name,
    in_graph,
    infer_types,
    is_float,
    is_op,
    leaking_node,
    only_consumer,
    operands,
    scalar,
    split_constant,
)
from graphopt.passes.registry import Pass, register

LAYERNORM_OPSET = 17


class _Refused(Exception):
    """A LayerNorm-shaped subgraph that cannot become one; the message says why."""


@dataclasses.dataclass
class _LayerNorm:
    x: ir.Value
    axis: int
    epsilon: float
    scale: ir.Value | None
    bias: ir.Value | None
    output: ir.Value
    nodes: list[ir.Node]


def _reduced_axes(node: ir.Node, rank: int | None) -> tuple[int, ...] | None:
    """The axes a keepdims ReduceMean averages over, normalized to negative numbers."""
    if node.attributes.get_int("keepdims", 1) != 1:
        return None
    if "axes" in node.attributes:
        axes = list(node.attributes["axes"].as_ints())
    elif len(node.inputs) > 1 and node.inputs[1] is not None and node.inputs[1].const_value is not None:
        axes = [int(a) for a in node.inputs[1].const_value.numpy().reshape(-1)]
    else:
        return None
    if rank is not None:
        axes = [axis - rank if axis >= 0 else axis for axis in axes]
    if any(axis >= 0 for axis in axes):
        return None
    return tuple(sorted(axes))


def _trailing(axes: tuple[int, ...]) -> bool:
    return axes == tuple(range(-len(axes), 0))


def _squared(value: ir.Value, d: ir.Value) -> ir.Node | None:
    producer = value.producer()
    powered = operands(producer, "Pow")
    if powered is not None and powered[0] is d and close(scalar(powered[1], d), 2.0, rel=1e-6):
        return producer
    multiplied = operands(producer, "Mul")
    if multiplied is not None and multiplied[0] is d and multiplied[1] is d:
        return producer
    return None


def _match(mean: ir.Node) -> _LayerNorm | None:
    """The LayerNorm that starts at `mean` = ReduceMean(x); None when it is not LayerNorm-shaped."""
    x = mean.inputs[0] if mean.inputs else None
    rank = len(x.shape) if x is not None and x.shape is not None else None
    axes = _reduced_axes(mean, rank)
    if x is None or axes is None:
        return None
    subtract = next((use.node for use in mean.outputs[0].uses()
                     if is_op(use.node, "Sub") and use.node.inputs[0] is x and use.node.inputs[1] is mean.outputs[0]),
                    None)
    if subtract is None:
        return None
    d = subtract.outputs[0]
    variance = square = None
    for use in d.uses():
        square = _squared(use.node.outputs[0], d) if use.node.outputs else None
        if square is not None:
            variance = only_consumer(square.outputs[0])
            break
    if variance is None or not is_op(variance, "ReduceMean"):
        return None
    if _reduced_axes(variance, rank) != axes:
        raise _Refused("the variance averages over other axes than the mean")
    if not _trailing(axes):
        raise _Refused(f"it normalizes over axes {list(axes)}, not trailing ones")
    if not is_float(x):
        raise _Refused(f"x is {x.dtype}, not a floating-point tensor")
    std_input = only_consumer(variance.outputs[0])
    if is_op(std_input, "Sqrt"):
        raise _Refused("ε is not added under the square root (√σ² is taken directly)")
    plus_eps = split_constant(std_input, "Add")
    if plus_eps is None:
        if operands(std_input, "Add") is not None:
            raise _Refused("ε is not a constant")
        return None
    epsilon = plus_eps[1]
    root = only_consumer(std_input.outputs[0])
    if not is_op(root, "Sqrt"):
        raise _Refused("σ² + ε is not followed by a square root")
    std = root.outputs[0]
    normalize, nodes = _normalization(std, d)
    nodes = [mean, subtract, square, variance, std_input, root, *nodes]
    output, scale, bias, affine = _affine(normalize.outputs[0], axes, rank)
    nodes += affine
    if not in_graph(mean.graph, *nodes):
        return None
    _check_private(nodes, output)
    return _LayerNorm(x, -len(axes), epsilon, scale, bias, output, nodes)


def _normalization(std: ir.Value, d: ir.Value) -> tuple[ir.Node, list[ir.Node]]:
    """d / std as Div(d, std) or Mul(d, Reciprocal(std))."""
    consumer = only_consumer(std)
    divided = operands(consumer, "Div")
    if divided is not None and divided == (d, std):
        return consumer, [consumer]
    if is_op(consumer, "Reciprocal"):
        multiply = only_consumer(consumer.outputs[0])
        pair = operands(multiply, "Mul")
        if pair is not None and set(map(id, pair)) == {id(d), id(consumer.outputs[0])}:
            return multiply, [consumer, multiply]
    raise _Refused("x − μ is not divided by √(σ² + ε)")


def _affine(normalized: ir.Value, axes: tuple[int, ...], rank: int | None
            ) -> tuple[ir.Value, ir.Value | None, ir.Value | None, list[ir.Node]]:
    """The optional · γ + β after the normalization: (output, γ, β, nodes)."""
    output, scale, bias, nodes = normalized, None, None, []
    for op_type in ("Mul", "Add"):
        consumer = only_consumer(output)
        pair = operands(consumer, op_type)
        if pair is None:
            break
        constant = pair[1] if pair[0] is output else pair[0] if pair[1] is output else None
        if constant is None or constant.const_value is None:
            break
        if not _over_axes(constant, axes, rank):
            raise _Refused(f"{'γ' if op_type == 'Mul' else 'β'} {constant.name!r} is not a constant over the "
                           "normalized axes only")
        if op_type == "Mul":
            scale = constant
        else:
            bias = constant
        output = consumer.outputs[0]
        nodes.append(consumer)
    return output, scale, bias, nodes


def _over_axes(constant: ir.Value, axes: tuple[int, ...], rank: int | None) -> bool:
    """Whether the constant broadcasts over the normalized (trailing) axes only, without
    raising x's rank (a [1, 1, 1, 6] γ on a rank-3 x makes the result rank 4)."""
    dims = list(constant.const_value.shape.numpy())
    if rank is None or len(dims) > rank:
        return False
    while dims and dims[0] == 1 and len(dims) > len(axes):
        dims.pop(0)
    return len(dims) <= len(axes)


def _check_private(nodes: list[ir.Node], output: ir.Value) -> None:
    leak = leaking_node(nodes, output)
    if leak is not None:
        raise _Refused(f"{leak.op_type} {leak.name!r}'s output is also used outside the LayerNorm")


def _parameter(graph: ir.Graph, value: ir.Value | None, size: tuple[int, ...], fill: float, dtype,
               base: str) -> ir.Value:
    """γ or β shaped as the normalized axes (LayerNormalization wants that exact shape)."""
    if value is not None and tuple(value.const_value.shape.numpy()) == size and value.dtype.numpy() == dtype:
        return value
    if value is None:
        array = np.full(size, fill, dtype=dtype)
    else:
        array = value.const_value.numpy().astype(dtype)
        while array.ndim > len(size) and array.shape[0] == 1:
            array = array[0]
        array = np.broadcast_to(array, size).copy()
    name = fresh_value_name(graph, base)
    initializer = ir.Value(name=name, shape=ir.Shape(size), type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
                           const_value=ir.tensor(array, name=name))
    graph.register_initializer(initializer)
    return initializer


@register("fuse_layernorm", min_opset=LAYERNORM_OPSET)
class FuseLayerNorm(Pass):
    """Fuse the decomposed mean/variance formula into LayerNormalization (opset 17).

    Also refused with the reason: a variance over other axes than the mean, non-trailing axes, a
    non-float x, normalized axes of unknown size, γ or β that do not broadcast to them, an
    intermediate also read outside the LayerNorm. MiniLM exported by torchscript at opset 16 and
    converted with `--opset 17`: 13 fused.
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        infer_types(self, model)
        fused = 0
        for graph, node in anchors(model, "ReduceMean"):
            try:
                layernorm = _match(node)
            except _Refused as refusal:
                self.skip(f"ReduceMean {node.name!r} not fused into a LayerNormalization: {refusal}")
                continue
            if layernorm is not None and self._replace(graph, layernorm):
                fused += 1
        if fused:
            self.changed(f"{fused} LayerNormalization")
        return ir.passes.PassResult(model, modified=bool(fused))

    def _replace(self, graph: ir.Graph, layernorm: _LayerNorm) -> bool:
        dims = layernorm.x.shape.dims[layernorm.axis:] if layernorm.x.shape is not None else ()
        if not dims or not all(isinstance(dim, int) for dim in dims):
            self.skip(f"LayerNorm at {layernorm.nodes[0].name!r} not fused: the normalized axes' sizes are unknown")
            return False
        dtype = layernorm.x.dtype.numpy()
        base = layernorm.output.name or "layernorm"
        try:
            inputs = [layernorm.x, _parameter(graph, layernorm.scale, tuple(dims), 1.0, dtype, f"{base}.scale")]
            if layernorm.bias is not None:
                inputs.append(_parameter(graph, layernorm.bias, tuple(dims), 0.0, dtype, f"{base}.bias"))
        except ValueError:
            self.skip(f"LayerNorm at {layernorm.nodes[0].name!r} not fused: γ or β does not broadcast to the "
                      f"normalized shape {list(dims)}")
            return False
        node = ir.Node("", "LayerNormalization", inputs,
                       [ir.AttrInt64("axis", layernorm.axis), ir.AttrFloat32("epsilon", layernorm.epsilon)],
                       name=fresh_node_name(graph, f"{base}/LayerNormalization"))
        ir.convenience.replace_nodes_and_values(graph, layernorm.nodes[-1], layernorm.nodes, [node],
                                                [layernorm.output], [node.outputs[0]])
        return True
