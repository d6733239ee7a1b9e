"""Symbolic dims carried through the ops transformer graphs use, where the op proves them.

ONNX's shape inference leaves a dim anonymous when it cannot name it (behind a Reshape whose
target is computed, say); a fusion that must prove two shapes equal then cannot. This pass
names such dims from the op's semantics alone: elementwise ops keep their input's dims,
broadcasting keeps a dim only where the rules force it (never assuming two symbols equal or
a symbol not 1), MatMul, Transpose, Gather(Elements), Conv and pooling (batch and channels), Unsqueeze, Squeeze, Range, Slice,
Expand and Reshape (targets built from constants and Shape slices, 0 copies a dim, -1 is solved
when the other dims cancel, the exporters' `Where(Equal(shape, -1), 1, shape)`) map them
exactly. A slice [0:s] of a dim d is `Min(d, s)`, as the dynamo exporter writes it; broadcast
against s it gives s (a run where they differ and neither is 1 fails in the original too).
Only anonymous dims (and ONNX's made-up `unk__N`) are filled in; nothing known is replaced.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator, Sequence

import onnx_ir as ir

Dim = int | str | None  # a size, a symbol, or unknown

_SAME_SHAPE = frozenset({
    "Relu", "Gelu", "Erf", "Tanh", "Sigmoid", "Cast", "Neg", "Abs", "Sqrt", "Exp", "Log", "Identity",
    "Softmax", "LogSoftmax", "LayerNormalization", "Dropout", "Not", "IsNaN", "Reciprocal", "CastLike",
    "BiasGelu", "FastGelu", "SkipLayerNormalization", "LeakyRelu", "HardSigmoid", "HardSwish", "Clip",
})
# Ops over [N, C, spatial…] that keep the batch dim (and the channels, for pooling).
_SPATIAL = frozenset({"Conv", "FusedConv", "ConvTranspose", "MaxPool", "AveragePool", "GlobalAveragePool",
                      "GlobalMaxPool", "LpPool", "BatchNormalization", "InstanceNormalization"})
_BROADCAST = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Where", "And", "Or", "Xor", "Equal", "Less",
                        "Greater", "LessOrEqual", "GreaterOrEqual", "Max", "Min", "Mod"})


def dims_of(value: ir.Value | None) -> list[Dim] | None:
    if value is None or value.shape is None:
        return None
    return [dim if isinstance(dim, int) else dim.value for dim in value.shape.dims]


def shape_text(shape: ir.Shape | None) -> str:
    """`[batch, seq, 384]`, or `unknown` for a value without a shape."""
    if shape is None:
        return "unknown"
    return "[" + ", ".join(str(dim if isinstance(dim, int) else dim.value) for dim in shape.dims) + "]"


def broadcast(shapes: Sequence[list[Dim]]) -> list[Dim]:
    """Numpy broadcasting over symbolic dims, keeping only what the rules force."""
    rank = max(len(shape) for shape in shapes)
    result: list[Dim] = []
    for position in range(rank):
        column = [shape[len(shape) - rank + position] for shape in shapes if len(shape) - rank + position >= 0]
        result.append(_broadcast_dim(column))
    return result


def _broadcast_dim(column: list[Dim]) -> Dim:
    sizes = {dim for dim in column if isinstance(dim, int)}
    symbols = {dim for dim in column if isinstance(dim, str)}
    if None in column:
        return max(sizes) if sizes and max(sizes) > 1 else None  # an unknown dim broadcasts to a size > 1
    if sizes - {1}:
        return max(sizes)  # a valid model has every other dim equal to it or 1
    if len(symbols) == 1:
        return next(iter(symbols))  # the symbol, or 1 when it is 1
    if len(symbols) == 2:
        first, second = sorted(symbols)
        for bound, whole in ((first, second), (second, first)):
            if whole in _min_operands(bound):
                return whole  # max(s, min(d, s)) is s
    return 1 if not symbols else None  # two symbols: either may be 1, nothing is proven


_MIN = re.compile(r"^Min\((.+), (.+)\)$")


def _min_operands(symbol: str) -> tuple[str, ...]:
    match = _MIN.match(symbol)
    return match.groups() if match else ()


def shape_contents(value: ir.Value | None, cache: dict | None = None) -> list[Dim] | None:
    """What a 1-D int64 tensor holds when it describes a shape: constants, Shape slices, their Concat."""
    if value is None:
        return None
    cache = {} if cache is None else cache
    if id(value) not in cache:
        cache[id(value)] = None  # a cycle, should one exist, reads as unknown
        cache[id(value)] = _shape_contents(value, cache)
    return cache[id(value)]


def _integer_vector(tensor: ir.TensorProtocol) -> list[int] | None:
    """A 0-d or 1-d integer tensor's values; None for anything else, decided before reading it (weights)."""
    if len(tensor.shape) > 1 or not tensor.dtype.is_integer():
        return None
    return [int(item) for item in tensor.numpy().reshape(-1)]


def _shape_contents(value: ir.Value, cache: dict) -> list[Dim] | None:
    if value.const_value is not None:
        return _integer_vector(value.const_value)
    node = value.producer()
    if node is None or node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type == "Constant" and "value" in node.attributes:
        return _integer_vector(node.attributes["value"].as_tensor())
    inputs = [shape_contents(input_, cache) for input_ in node.inputs]
    if node.op_type == "Shape":
        dims = dims_of(node.inputs[0])
        if dims is None:
            return None
        start = node.attributes.get_int("start", 0)
        end = node.attributes.get_int("end", len(dims))
        return dims[slice(start, end)]
    if node.op_type == "ConstantOfShape" and inputs and inputs[0] is not None and len(inputs[0]) == 1 \
            and isinstance(inputs[0][0], int):
        fill = node.attributes["value"].as_tensor().numpy().reshape(-1)[0] if "value" in node.attributes else 0
        return [int(fill)] * inputs[0][0] if fill.dtype.kind in "iu" or fill == 0 else None
    if node.op_type == "Mul" and len(inputs) == 2 and None not in inputs:
        return _elementwise(inputs[0], inputs[1], _times)
    if node.op_type == "Where" and len(inputs) == 3 and None not in inputs[1:]:
        return _where_equal(node, inputs[1], inputs[2], cache)
    if node.op_type == "Concat" and all(part is not None for part in inputs):
        return [dim for part in inputs for dim in part]
    if node.op_type in ("Unsqueeze", "Squeeze", "Identity", "Cast") and inputs and inputs[0] is not None:
        return inputs[0]
    if node.op_type == "Gather" and inputs[0] is not None and len(inputs) > 1 and inputs[1] is not None:
        try:
            return [inputs[0][index] for index in inputs[1]]
        except IndexError:
            return None
    if node.op_type == "Slice" and inputs[0] is not None and all(part is not None and len(part) == 1
                                                                  for part in inputs[1:3]):
        steps = inputs[4] if len(inputs) > 4 and inputs[4] is not None else [1]
        axes = inputs[3] if len(inputs) > 3 and inputs[3] is not None else [0]
        if axes not in ([0], [-1]) or not all(isinstance(part[0], int) for part in (*inputs[1:3], steps)):
            return None
        return inputs[0][slice(inputs[1][0], inputs[2][0], steps[0])]
    return None


def _elementwise(first: list[Dim], second: list[Dim], combine) -> list[Dim] | None:
    """Combine two shape vectors element by element, a 1-element one broadcasting."""
    if len(first) != len(second) and 1 not in (len(first), len(second)):
        return None
    length = max(len(first), len(second))
    return [combine(first[index % len(first)], second[index % len(second)]) for index in range(length)]


def _times(first: Dim, second: Dim) -> Dim:
    if isinstance(first, int) and isinstance(second, int):
        return first * second
    return second if first == 1 else first if second == 1 else None


def _where_equal(node: ir.Node, picked: list[Dim], other: list[Dim], cache: dict) -> list[Dim] | None:
    """`Where(Equal(x, y), a, b)` element by element, where equality is decided: equal sizes or
    one symbol, and a symbol (a dim, never negative) against a negative size."""
    condition = node.inputs[0].producer() if node.inputs[0] is not None else None
    if condition is None or condition.op_type != "Equal" or condition.domain not in ("", "ai.onnx"):
        return None
    compared = [shape_contents(value, cache) for value in condition.inputs]
    if None in compared:
        return None
    equal = _elementwise(*compared, _equal)
    if equal is None or len(equal) not in (len(picked), 1) or len(other) not in (len(equal), 1):
        return None
    chosen = []
    for index, verdict in enumerate(equal):
        if verdict is None:
            return None
        chosen.append((picked if verdict else other)[index % len(picked if verdict else other)])
    return chosen


def _equal(first: Dim, second: Dim) -> bool | None:
    if first is None or second is None:
        return None
    if isinstance(first, int) and isinstance(second, int):
        return first == second
    if first == second:
        return True
    size = first if isinstance(first, int) else second if isinstance(second, int) else None
    return False if size is not None and size < 0 else None


def _reshape(data: list[Dim], target: list[Dim], allowzero: bool) -> list[Dim]:
    out = [data[index] if dim == 0 and not allowzero and index < len(data) else dim for index, dim in enumerate(target)]
    if -1 in out and out.count(-1) == 1:
        out[out.index(-1)] = _solve(data, [dim for dim in out if dim != -1])
    return [dim if dim != -1 else None for dim in out]


def _solve(data: list[Dim], known: list[Dim]) -> Dim:
    """The size that makes prod(known) · x == prod(data), when the symbols cancel."""
    remaining_data, remaining_known = list(data), []
    for dim in known:
        if isinstance(dim, str) and dim in remaining_data:
            remaining_data.remove(dim)
        else:
            remaining_known.append(dim)
    remaining_known = [dim for dim in remaining_known if dim != 1]
    if not remaining_known and len(remaining_data) == 1:
        return remaining_data[0]  # x = the one dim left over, a size or a symbol
    if not all(isinstance(dim, int) for dim in remaining_data + remaining_known):
        return None
    numerator, denominator = math.prod(remaining_data), math.prod(remaining_known)
    return numerator // denominator if denominator and numerator % denominator == 0 else None


def _outputs_dims(node: ir.Node, cache: dict) -> list[list[Dim] | None]:
    """The dims each output of `node` must have, as far as the op proves them."""
    op = node.op_type
    ins = [dims_of(value) for value in node.inputs]
    first = ins[0] if ins else None
    if op in _SAME_SHAPE and first is not None:
        return [first] + [None] * (len(node.outputs) - 1) if op != "SkipLayerNormalization" else \
            [first, None, None, first][:len(node.outputs)]
    if op in _BROADCAST and ins and all(shape is not None for shape in ins):
        return [broadcast(ins)]
    if op == "MatMul" and len(ins) == 2 and all(shape is not None and len(shape) >= 2 for shape in ins):
        a, b = ins
        return [broadcast([a[:-2], b[:-2]]) + [a[-2], b[-1]]]
    if op == "Transpose" and first is not None:
        perm = list(node.attributes.get_ints("perm", list(reversed(range(len(first))))))
        return [[first[index] for index in perm]] if sorted(perm) == list(range(len(first))) else [None]
    if op == "Reshape" and first is not None and len(node.inputs) > 1:
        target = shape_contents(node.inputs[1], cache)
        return [_reshape(first, target, bool(node.attributes.get_int("allowzero", 0)))] if target else [None]
    if op == "Expand" and first is not None and len(node.inputs) > 1:
        target = shape_contents(node.inputs[1], cache)
        return [broadcast([first, target])] if target else [None]
    if op == "Gather" and first is not None and len(ins) > 1 and ins[1] is not None:
        axis = node.attributes.get_int("axis", 0) % len(first)
        return [first[:axis] + ins[1] + first[axis + 1:]]
    if op in _SPATIAL and first is not None and len(first) >= 3:
        channels = ins[1][0] if op in ("Conv", "FusedConv") and len(ins) > 1 and ins[1] else first[1]
        return [[first[0], channels if op != "ConvTranspose" else None] + [None] * (len(first) - 2)] + \
            [None] * (len(node.outputs) - 1)
    if op == "Split" and first is not None:
        return _split(node, first, cache)
    if op == "GatherElements" and len(ins) > 1 and ins[1] is not None:
        return [ins[1]]
    if op in ("Unsqueeze", "Squeeze") and first is not None:
        return [_unsqueeze(node, first, cache)]
    if op == "Range":
        return [_range(node, cache)]
    if op == "Slice" and first is not None:
        return [_slice(node, first, cache)]
    return [None] * len(node.outputs)


def _axes(node: ir.Node, cache: dict) -> list[Dim] | None:
    """An op's axes, from its second input (opset 13 on) or its attribute."""
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        return shape_contents(node.inputs[1], cache)
    return list(node.attributes.get_ints("axes", [])) if "axes" in node.attributes else None


def _unsqueeze(node: ir.Node, first: list[Dim], cache: dict) -> list[Dim] | None:
    axes = _axes(node, cache)
    if axes is None or not all(isinstance(axis, int) for axis in axes):
        return None
    if node.op_type == "Squeeze":
        if not axes:
            return None  # every 1 goes, and which dims are 1 may not be known
        drop = {axis % len(first) for axis in axes}
        return [dim for index, dim in enumerate(first) if index not in drop]
    rank = len(first) + len(axes)
    inserted = {axis % rank for axis in axes}
    rest = iter(first)
    return [1 if index in inserted else next(rest) for index in range(rank)]


def _split(node: ir.Node, first: list[Dim], cache: dict) -> list[list[Dim] | None]:
    """Split keeps every dim but the split axis, whose parts are the given sizes (or equal parts)."""
    axis = node.attributes.get_int("axis", 0) % len(first)
    count = len(node.outputs)
    sizes = shape_contents(node.inputs[1], cache) if len(node.inputs) > 1 and node.inputs[1] is not None else None
    if sizes is None and "split" in node.attributes:
        sizes = list(node.attributes.get_ints("split"))
    if sizes is None and isinstance(first[axis], int) and first[axis] % count == 0:
        sizes = [first[axis] // count] * count
    if sizes is None or len(sizes) != count:
        return [None] * count
    return [first[:axis] + [size] + first[axis + 1:] for size in sizes]


def _range(node: ir.Node, cache: dict) -> list[Dim] | None:
    """Range(0, n, 1) holds n elements: [n]."""
    parts = [shape_contents(value, cache) for value in node.inputs]
    if len(parts) != 3 or any(part is None or len(part) != 1 for part in parts):
        return None
    (start,), (limit,), (delta,) = parts
    if start != 0 or delta != 1 or limit is None:
        return None
    return [max(limit, 0) if isinstance(limit, int) else limit]


def _slice(node: ir.Node, first: list[Dim], cache: dict) -> list[Dim] | None:
    """Slice with known starts/ends/axes/steps: sizes where all is numeric, [0:s] of d as Min(d, s)."""
    parts = [shape_contents(value, cache) if value is not None else None for value in node.inputs[1:5]]
    starts, ends = parts[0], parts[1] if len(parts) > 1 else None
    if starts is None or ends is None or len(starts) != len(ends):
        return None
    axes = parts[2] if len(parts) > 2 and parts[2] is not None else list(range(len(starts)))
    steps = parts[3] if len(parts) > 3 and parts[3] is not None else [1] * len(starts)
    out = list(first)
    for start, end, axis, step in zip(starts, ends, axes, steps):
        if not isinstance(axis, int):
            return None
        axis %= len(first)
        size = first[axis]
        if all(isinstance(item, int) for item in (start, end, step, size)):
            out[axis] = len(range(*slice(start, end, step).indices(size)))
        elif start == 0 and step == 1 and isinstance(end, int) and end >= 2**62:
            out[axis] = size
        elif start == 0 and step == 1 and isinstance(end, str) and size is not None:
            out[axis] = end if end == size else f"Min({size}, {end})"
        else:
            out[axis] = None
    return out


def name_dims(graph: ir.Graph) -> set[str]:
    """Fill anonymous dims of the graph's values from what their ops prove.

    A dim nothing proves gets a made-up name of its own, so that values read through
    Shape(v) share it with v (torchscript exports leave nearly every dim anonymous). Returns
    the made-up names: forget_dims takes them out again once the caller is done.
    """
    invented: set[str] = set()
    cache: dict = {}
    for value in graph.inputs:
        _invent(value, invented)
    for node in graph:
        for value, dims in zip(node.outputs, _outputs_dims(node, cache)):
            if dims is not None:
                _adopt(value, dims)
            _invent(value, invented)
    return invented


@contextlib.contextmanager
def named(model: ir.Model) -> Iterator[None]:
    """Name the dims of every graph of `model` for the duration (name_dims), then forget the made-up ones."""
    invented = {graph: name_dims(graph) for graph in model.graphs()}
    try:
        yield
    finally:
        for graph, names in invented.items():
            forget_dims(graph, names)


def provably_equal(first: ir.Value, second: ir.Value) -> bool:
    """Same shape: every dim the same size or the same named symbol (an unnamed dim proves nothing)."""
    one, other = dims_of(first), dims_of(second)
    return one is not None and one == other and None not in one


def forget_dims(graph: ir.Graph, invented: set[str]) -> None:
    """Make the dims name_dims made up anonymous again."""
    for value in (*graph.inputs, *(output for node in graph for output in node.outputs)):
        if value.shape is not None and any(isinstance(dim, ir.SymbolicDim) and dim.value in invented
                                           for dim in value.shape.dims):
            value.shape = ir.Shape([ir.SymbolicDim(None) if isinstance(dim, ir.SymbolicDim) and dim.value in invented
                                    else dim for dim in value.shape.dims])


def _anonymous(name: str | None) -> bool:
    """No name, or one ONNX's shape inference made up for a dim it could not name (`unk__7`)."""
    return name is None or name.startswith("unk__")


def _invent(value: ir.Value, invented: set[str]) -> None:
    if value.shape is None or not any(isinstance(dim, ir.SymbolicDim) and dim.value is None
                                      for dim in value.shape.dims):
        return
    named = []
    for dim in value.shape.dims:
        if isinstance(dim, ir.SymbolicDim) and dim.value is None:
            dim = ir.SymbolicDim(f"?{len(invented)}")
            invented.add(dim.value)
        named.append(dim)
    value.shape = ir.Shape(named)


def _adopt(value: ir.Value, dims: list[Dim]) -> bool:
    if value.shape is None:
        if any(dim is None for dim in dims):
            return False
        value.shape = ir.Shape(dims)
        return True
    current = list(value.shape.dims)
    if len(current) != len(dims):
        return False
    gained = False
    for index, (have, proven) in enumerate(zip(current, dims)):
        if isinstance(have, ir.SymbolicDim) and _anonymous(have.value) and proven is not None and proven != have.value:
            current[index] = proven if isinstance(proven, int) else ir.SymbolicDim(proven)
            gained = True
    if gained:
        value.shape = ir.Shape(current)
    return gained
