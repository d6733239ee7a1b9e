"""Symbolic dims carried through the ops transformer graphs use, where the op proves them.

ONNX's shape inference leaves a dim anonymous when it cannot name it (behind a Reshape whose
target is computed, say); a fusion that must prove two shapes equal then cannot. This pass
names such dims from the op's semantics alone: elementwise ops keep their input's dims,
broadcasting keeps a dim only where the rules force it (never assuming two symbols equal or
a symbol not 1), MatMul, Transpose, Gather, Split and Reshape (targets built from constants
and Shape slices, 0 copies a dim, -1 is solved when the other dims cancel) map them exactly.
Only anonymous dims are filled in; nothing known is replaced.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import onnx_ir as ir

Dim = int | str | None  # a size, a symbol, or unknown

_SAME_SHAPE = frozenset({
    "Relu", "Gelu", "Erf", "Tanh", "Sigmoid", "Cast", "Neg", "Abs", "Sqrt", "Exp", "Log", "Identity",
    "Softmax", "LogSoftmax", "LayerNormalization", "Dropout", "Not", "IsNaN", "Reciprocal", "CastLike",
    "BiasGelu", "FastGelu", "SkipLayerNormalization", "LeakyRelu", "HardSigmoid", "HardSwish", "Clip",
})
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
    return 1 if not symbols else None  # two symbols: either may be 1, nothing is proven


def shape_contents(value: ir.Value | None, cache: dict | None = None) -> list[Dim] | None:
    """What a 1-D int64 tensor holds when it describes a shape: constants, Shape slices, their Concat."""
    if value is None:
        return None
    cache = {} if cache is None else cache
    if id(value) not in cache:
        cache[id(value)] = None  # a cycle, should one exist, reads as unknown
        cache[id(value)] = _shape_contents(value, cache)
    return cache[id(value)]


def _shape_contents(value: ir.Value, cache: dict) -> list[Dim] | None:
    if value.const_value is not None:
        array = value.const_value.numpy()
        return [int(item) for item in array.reshape(-1)] if array.dtype.kind in "iu" and array.ndim <= 1 else None
    node = value.producer()
    if node is None or node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type == "Constant" and "value" in node.attributes:
        array = node.attributes["value"].as_tensor().numpy()
        return [int(item) for item in array.reshape(-1)] if array.dtype.kind in "iu" and array.ndim <= 1 else None
    inputs = [shape_contents(input_, cache) for input_ in node.inputs]
    if node.op_type == "Shape":
        dims = dims_of(node.inputs[0])
        if dims is None:
            return None
        start = node.attributes.get_int("start", 0)
        end = node.attributes.get_int("end", len(dims))
        return dims[slice(start, end)]
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
    return [None] * len(node.outputs)


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


def forget_dims(graph: ir.Graph, invented: set[str]) -> None:
    """Make the dims name_dims made up anonymous again."""
    for value in (*graph.inputs, *(output for node in graph for output in node.outputs)):
        if value.shape is not None and any(isinstance(dim, ir.SymbolicDim) and dim.value in invented
                                           for dim in value.shape.dims):
            value.shape = ir.Shape([ir.SymbolicDim(None) if isinstance(dim, ir.SymbolicDim) and dim.value in invented
                                    else dim for dim in value.shape.dims])


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
        if isinstance(have, ir.SymbolicDim) and have.value is None and proven is not None:
            current[index] = proven if isinstance(proven, int) else ir.SymbolicDim(proven)
            gained = True
    if gained:
        value.shape = ir.Shape(current)
    return gained
