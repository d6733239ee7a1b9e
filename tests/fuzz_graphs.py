"""A hypothesis strategy for random valid ONNX graphs that exercise every cleanup pass.

Graphs are built step by step from rank-3 float inputs [batch, seq, hidden] (batch optionally
dynamic), tracking each value's shape so every op is valid: elementwise ops, ops with exact
0/1 constants (no-op candidates), constant-only subexpressions (folding), duplicate weights
(dedupe), repeated nodes (CSE), MatMul/Gemm, Conv+BatchNorm, Reshape/Transpose/Concat/Split/
Slice/Expand, reductions, Shape arithmetic on the dynamic batch, and decomposed LayerNorm,
GELU and attention blocks in their exporter variants, some of them near misses a fusion must refuse.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import onnx
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

BATCH = "batch"


@dataclasses.dataclass
class _Builder:
    rng: np.random.Generator
    nodes: list = dataclasses.field(default_factory=list)
    inits: list = dataclasses.field(default_factory=list)
    values: dict[str, tuple] = dataclasses.field(default_factory=dict)
    counter: itertools.count = dataclasses.field(default_factory=itertools.count)

    def name(self, prefix: str) -> str:
        return f"{prefix}{next(self.counter)}"

    def node(self, op: str, inputs: list[str], shape: tuple | None, **attrs) -> str:
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], **attrs))
        if shape is not None:
            self.values[out] = shape
        return out

    def init(self, array: np.ndarray, prefix: str = "w") -> str:
        name = self.name(prefix)
        self.inits.append(numpy_helper.from_array(array, name))
        return name

    def constant_node(self, array: np.ndarray) -> str:
        out = self.name("const")
        self.nodes.append(helper.make_node("Constant", [], [out], value=numpy_helper.from_array(array, out)))
        return out

    def floats(self, shape) -> np.ndarray:
        return self.rng.standard_normal(shape).astype(np.float32)


def _static(shape: tuple) -> bool:
    return all(isinstance(d, int) for d in shape)


def _unary(b: _Builder, draw, x, shape):
    op = draw(st.sampled_from(["Relu", "Neg", "Abs", "Tanh", "Sigmoid", "Identity", "Dropout", "Cast"]))
    if op == "Cast":
        return b.node("Cast", [x], shape, to=TensorProto.FLOAT)
    return b.node(op, [x], shape)


def _binary_same(b: _Builder, draw, x, shape):
    partners = [v for v, s in b.values.items() if s == shape]
    y = draw(st.sampled_from(partners))
    return b.node(draw(st.sampled_from(["Add", "Mul", "Sub", "Max", "Min"])), [x, y], shape)


def _binary_const(b: _Builder, draw, x, shape):
    op = draw(st.sampled_from(["Add", "Mul", "Sub", "Div"]))
    shapes = [()]
    if isinstance(shape[-1], int):
        shapes += [(shape[-1],), (1,) * (len(shape) - 1) + (shape[-1],)]
    const_shape = draw(st.sampled_from(shapes))
    exact = draw(st.sampled_from([None, 0.0, 1.0]))
    if exact is not None:
        array = np.full(const_shape, exact, np.float32)
        if op == "Div" and exact == 0.0:
            array[...] = 1.0
    else:
        array = b.floats(const_shape)
        if op == "Div":
            array = np.where(np.abs(array) < 0.5, 0.5, array).astype(np.float32)
    as_node = draw(st.booleans())
    c = b.constant_node(array) if as_node else b.init(array, "c")
    operands = [c, x] if op in ("Add", "Mul") and draw(st.booleans()) else [x, c]
    return b.node(op, operands, shape)


def _folded_constant(b: _Builder, draw, x, shape):
    """A constant-only subexpression applied to x: fold_constants material."""
    if not isinstance(shape[-1], int):
        return _unary(b, draw, x, shape)
    c1 = b.constant_node(b.floats((shape[-1],)))
    c2 = b.init(b.floats((shape[-1],)), "c")
    inner = b.node(draw(st.sampled_from(["Add", "Mul", "Sub"])), [c1, c2], None)
    squashed = b.node("Tanh", [inner], None)
    return b.node("Add", [x, squashed], shape)


def _duplicate_weight(b: _Builder, draw, x, shape):
    if not isinstance(shape[-1], int):
        return _unary(b, draw, x, shape)
    existing = [t for t in b.inits if t.data_type == TensorProto.FLOAT and tuple(t.dims) == (shape[-1],)]
    array = numpy_helper.to_array(existing[0]) if existing else b.floats((shape[-1],))
    twin = b.init(array.copy(), "dup")
    return b.node("Mul", [x, twin], shape)


def _repeat_node(b: _Builder, draw, x, shape):
    first = b.node("Sigmoid", [x], shape)
    second = b.node("Sigmoid", [x], shape)
    return b.node("Add", [first, second], shape)


def _matmul(b: _Builder, draw, x, shape):
    if not isinstance(shape[-1], int):
        return _unary(b, draw, x, shape)
    width = draw(st.sampled_from([4, 6, 8]))
    out_shape = shape[:-1] + (width,)
    y = b.node("MatMul", [x, b.init(b.floats((shape[-1], width)))], out_shape)
    if draw(st.booleans()):
        y = b.node("Add", [y, b.init(b.floats((width,)), "bias")], out_shape)
    return y


def _gemm(b: _Builder, draw, x, shape):
    if len(shape) != 2 or not isinstance(shape[1], int):
        return _matmul(b, draw, x, shape)
    width = draw(st.sampled_from([4, 6]))
    trans_b = draw(st.booleans())
    weight = b.floats((width, shape[1]) if trans_b else (shape[1], width))
    return b.node("Gemm", [x, b.init(weight), b.init(b.floats((width,)), "bias")], (shape[0], width),
                  transB=int(trans_b), alpha=float(draw(st.sampled_from([1.0, 0.5]))))


def _conv_bn(b: _Builder, draw, x, shape):
    if len(shape) != 3 or not _static(shape[1:]):
        return _unary(b, draw, x, shape)
    channels, length = shape[1], shape[2]
    out_channels = draw(st.sampled_from([2, 4]))
    axes = b.init(np.array([3], np.int64), "axes")
    four = b.node("Unsqueeze", [x, axes], None)
    conv = b.node("Conv", [four, b.init(b.floats((out_channels, channels, 1, 1))),
                           b.init(b.floats((out_channels,)), "bias")], None)
    stats = [b.init(b.rng.uniform(0.5, 1.5, out_channels).astype(np.float32), "gamma"),
             b.init(b.floats((out_channels,)), "beta"), b.init(b.floats((out_channels,)), "mean"),
             b.init(b.rng.uniform(0.5, 1.5, out_channels).astype(np.float32), "var")]
    normed = b.node("BatchNormalization", [conv] + stats, None)
    return b.node("Squeeze", [normed, axes], (shape[0], out_channels, length))


def _reshape(b: _Builder, draw, x, shape):
    if len(shape) == 3 and isinstance(shape[1], int) and isinstance(shape[2], int) and draw(st.booleans()):
        target = b.init(np.array([0, -1], np.int64), "shape")
        return b.node("Reshape", [x, target], (shape[0], shape[1] * shape[2]))
    target = b.init(np.array([0] * (len(shape) - 1) + [-1], np.int64), "shape")
    return b.node("Reshape", [x, target], shape)


def _dynamic_flatten(b: _Builder, draw, x, shape):
    """Reshape(x, Concat(Unsqueeze(Gather(Shape(x), 0)), [-1])): shape arithmetic on batch."""
    if len(shape) != 3 or not _static(shape[1:]):
        return _unary(b, draw, x, shape)
    dims = b.node("Shape", [x], None)
    first = b.node("Gather", [dims, b.init(np.array(0, np.int64), "idx")], None, axis=0)
    first1 = b.node("Unsqueeze", [first, b.init(np.array([0], np.int64), "axes")], None)
    target = b.node("Concat", [first1, b.init(np.array([-1], np.int64), "rest")], None, axis=0)
    return b.node("Reshape", [x, target], (shape[0], shape[1] * shape[2]))


def _transpose(b: _Builder, draw, x, shape):
    perm = draw(st.permutations(list(range(len(shape)))))
    return b.node("Transpose", [x], tuple(shape[i] for i in perm), perm=list(perm))


def _concat_split(b: _Builder, draw, x, shape):
    partners = [v for v, s in b.values.items() if s == shape]
    y = draw(st.sampled_from(partners))
    if not isinstance(shape[-1], int):
        return b.node("Add", [x, y], shape)
    joined = b.node("Concat", [x, y], shape[:-1] + (2 * shape[-1],), axis=-1)
    if draw(st.booleans()):
        return joined
    halves = [b.name("half"), b.name("half")]
    sizes = b.init(np.array([shape[-1], shape[-1]], np.int64), "split")
    b.nodes.append(helper.make_node("Split", [joined, sizes], halves, axis=-1))
    b.values[halves[0]] = shape
    b.values[halves[1]] = shape
    return halves[draw(st.integers(0, 1))]


def _slice(b: _Builder, draw, x, shape):
    if not isinstance(shape[-1], int) or shape[-1] < 2:
        return _unary(b, draw, x, shape)
    full = draw(st.booleans())
    end = 2**62 if full else shape[-1] - 1
    starts, ends = b.init(np.array([0], np.int64), "s"), b.init(np.array([end], np.int64), "e")
    axes = b.init(np.array([len(shape) - 1], np.int64), "a")
    return b.node("Slice", [x, starts, ends, axes], shape if full else shape[:-1] + (shape[-1] - 1,))


def _expand(b: _Builder, draw, x, shape):
    target = b.init(np.ones(len(shape), np.int64), "shape")
    return b.node("Expand", [x, target], shape)


def _reduce(b: _Builder, draw, x, shape):
    axes = b.init(np.array([-1], np.int64), "axes")
    reduced = b.node(draw(st.sampled_from(["ReduceSum", "ReduceMean", "ReduceMax"])), [x, axes],
                     shape[:-1] + (1,), keepdims=1)
    return b.node("Sub", [x, reduced], shape)


def _unsqueeze_squeeze(b: _Builder, draw, x, shape):
    axes = b.init(np.array([1], np.int64), "axes")
    up = b.node("Unsqueeze", [x, axes], None)
    return b.node("Squeeze", [up, axes], shape)


def _layernorm(b: _Builder, draw, x, shape):
    """(x − mean)/√(var + ε)·γ + β, with the variations exporters write (and ε outside the root)."""
    inner = shape if draw(st.integers(0, 7)) == 0 else None  # sometimes an intermediate leaks
    two_axes = len(shape) == 3 and _static(shape[1:]) and draw(st.booleans())
    axes = b.init(np.array([-2, -1] if two_axes else [-1], np.int64), "axes")
    reduced = None
    mean = b.node("ReduceMean", [x, axes], reduced, keepdims=1)
    d = b.node("Sub", [x, mean], inner)
    square = (b.node("Pow", [d, b.init(np.array(2.0, np.float32), "two")], None) if draw(st.booleans())
              else b.node("Mul", [d, d], None))
    variance = b.node("ReduceMean", [square, axes], reduced, keepdims=1)
    epsilon = b.init(np.array(draw(st.sampled_from([1e-5, 1e-12])), np.float32), "eps")
    if draw(st.integers(0, 4)):
        std = b.node("Sqrt", [b.node("Add", [variance, epsilon], reduced)], reduced)
    else:
        std = b.node("Add", [b.node("Sqrt", [variance], reduced), epsilon], reduced)
    affine = isinstance(shape[-1], int) and draw(st.booleans())
    bias = affine and draw(st.booleans())
    if draw(st.booleans()):
        normalized = b.node("Div", [d, std], None if affine else shape)
    else:
        normalized = b.node("Mul", [b.node("Reciprocal", [std], None), d], None if affine else shape)
    if affine:
        gamma = b.init(b.floats((shape[-1],)), "gamma")
        operands = [gamma, normalized] if draw(st.booleans()) else [normalized, gamma]
        normalized = b.node("Mul", operands, None if bias else shape)
        if bias:
            normalized = b.node("Add", [normalized, b.init(b.floats((shape[-1],)), "beta")], shape)
    return normalized


def _gelu(b: _Builder, draw, x, shape):
    """0.5·x·(1 + erf(x/√2)) or the tanh form, in the product orders exporters write (or slightly off)."""
    def constant(value: float) -> str:
        off = draw(st.integers(0, 9)) == 0
        return b.init(np.array(value * (1.1 if off else 1.0), np.float32), "k")

    inner = shape if draw(st.integers(0, 7)) == 0 else None  # sometimes an intermediate leaks
    if draw(st.booleans()):
        core = b.node("Erf", [b.node("Div", [x, constant(2 ** 0.5)], None)], None)
    else:
        cube = (b.node("Pow", [x, b.init(np.array(3.0, np.float32), "three")], None) if draw(st.booleans())
                else b.node("Mul", [b.node("Mul", [x, x], None), x], None))
        summed = b.node("Add", [x, b.node("Mul", [cube, constant(0.044715)], None)], None)
        core = b.node("Tanh", [b.node("Mul", [summed, constant((2 / np.pi) ** 0.5)], None)], None)
    plus_one = b.node("Add", [core, constant(1.0)], inner)
    order = draw(st.integers(0, 2))
    if order == 0:
        return b.node("Mul", [b.node("Mul", [x, plus_one], None), constant(0.5)], shape)
    if order == 1:
        return b.node("Mul", [x, b.node("Mul", [constant(0.5), plus_one], None)], shape)
    return b.node("Mul", [b.node("Mul", [x, constant(0.5)], None), plus_one], shape)


def _heads(b: _Builder, draw, x3, source, shape, heads, perm):
    """Reshape [B, S, D] to [B, S, H, D/H] (target constant with 0s, or from Shape slices), then Transpose."""
    if draw(st.booleans()):
        target = b.init(np.array([0, 0, heads, shape[-1] // heads], np.int64), "heads")
    else:
        lead = b.node("Shape", [source], None, start=0, end=2)
        target = b.node("Concat", [lead, b.init(np.array([-1, shape[-1] // heads], np.int64), "tail")], None, axis=0)
    return b.node("Transpose", [b.node("Reshape", [x3, target], None)], None, perm=list(perm))


def _attention(b: _Builder, draw, x, shape):
    """Self-attention as the exporters write it: per-head Q/K/V (three projections or one split
    three ways), Kᵀ in their three forms, scales on Q and Kᵀ or on the scores, an additive causal
    mask (finite or -inf) or none, the softmax NaN guard; sometimes the probabilities leak."""
    if len(shape) != 3 or not isinstance(shape[-1], int) or shape[-1] % 2:
        return x
    hidden, heads = shape[-1], 2
    head = hidden // heads
    bias = draw(st.booleans())
    if draw(st.booleans()):
        packed = b.node("MatMul", [x, b.init(b.floats((hidden, 3 * hidden)))], None)
        if bias:
            packed = b.node("Add", [packed, b.init(b.floats((3 * hidden,)), "b")], None)
        q3, k3, v3 = (b.name("split") for _ in range(3))
        b.nodes.append(helper.make_node("Split", [packed, b.init(np.array([hidden] * 3, np.int64), "sizes")],
                                        [q3, k3, v3], axis=2))
    else:
        q3, k3, v3 = (b.node("MatMul", [x, b.init(b.floats((hidden, hidden)))], None) for _ in range(3))
        if bias:
            q3, k3, v3 = (b.node("Add", [b.init(b.floats((hidden,)), "b"), value], None) for value in (q3, k3, v3))
    q = _heads(b, draw, q3, x, shape, heads, (0, 2, 1, 3))
    form = draw(st.integers(0, 2))
    if form == 0:
        kt = _heads(b, draw, k3, x, shape, heads, (0, 2, 3, 1))
    else:
        kt = b.node("Transpose", [_heads(b, draw, k3, x, shape, heads, (0, 2, 1, 3))], None, perm=[0, 1, 3, 2])
    v = _heads(b, draw, v3, x, shape, heads, (0, 2, 1, 3))
    if draw(st.booleans()):
        quarter = b.init(np.array(head ** -0.25, np.float32), "scale")
        scores = b.node("MatMul", [b.node("Mul", [q, quarter], None), b.node("Mul", [kt, quarter], None)], None)
    else:
        scores = b.node("Div", [b.node("MatMul", [q, kt], None), b.init(np.array(head ** 0.5, np.float32), "root")],
                        None)
    mask = draw(st.sampled_from(["none", "finite", "inf"]))
    if mask != "none" and isinstance(shape[1], int):
        low = np.float32(np.finfo(np.float32).min if mask == "finite" else -np.inf)
        causal = np.where(np.tril(np.ones((shape[1], shape[1]), bool)), np.float32(0), low)[None, None]
        scores = b.node("Add", [scores, b.init(causal.astype(np.float32), "mask")], None)
    probabilities = b.node("Softmax", [scores], None, axis=-1)
    if draw(st.integers(0, 7)) == 0:
        b.values[probabilities] = (shape[0], heads, shape[1], shape[1])  # may become a graph output
    if draw(st.booleans()):
        isnan = b.node("IsNaN", [probabilities], None)
        probabilities = b.node("Where", [isnan, b.init(np.array([0.0], np.float32), "zero"), probabilities], None)
    merged = b.node("Transpose", [b.node("MatMul", [probabilities, v], None)], None, perm=[0, 2, 1, 3])
    return b.node("Reshape", [merged, b.init(np.array([0, 0, hidden], np.int64), "merge")], shape)


# Hypothesis draws early entries more often: the fusion blocks come first so they appear often.
_STEPS = [_attention, _layernorm, _gelu, _unary, _binary_same, _binary_const, _folded_constant, _duplicate_weight, _repeat_node,
          _matmul, _gemm, _conv_bn, _reshape, _dynamic_flatten, _transpose, _concat_split, _slice,
          _expand, _reduce, _unsqueeze_squeeze]


@st.composite
def onnx_graphs(draw) -> tuple[onnx.ModelProto, bool]:
    """(model, has a dynamic batch dim); opset 18, 20 (ONNX Gelu) or 23 (ONNX Attention, IR 11), IR 9, float32."""
    b = _Builder(np.random.default_rng(draw(st.integers(0, 2**16))))
    dynamic = draw(st.booleans())
    seq, hidden = draw(st.sampled_from([2, 3])), draw(st.sampled_from([4, 6]))
    inputs = []
    for index in range(draw(st.integers(1, 2))):
        name = f"x{index}"
        inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT,
                                                    [BATCH if dynamic else 2, seq, hidden]))
        b.values[name] = (BATCH if dynamic else 2, seq, hidden)
    produced = []
    for _ in range(draw(st.integers(1, 16))):
        step = draw(st.sampled_from(_STEPS))
        source = draw(st.sampled_from(sorted(b.values)))
        produced.append(step(b, draw, source, b.values[source]))
    outputs = [produced[-1]]
    extra = sorted({v for v in produced[:-1] if v in b.values and v != produced[-1]})
    if extra and draw(st.booleans()):
        outputs.append(draw(st.sampled_from(extra)))
    graph = helper.make_graph(b.nodes, "fuzz", inputs,
                              [helper.make_tensor_value_info(v, TensorProto.FLOAT, list(b.values[v]))
                               for v in outputs],
                              b.inits)
    opset = draw(st.sampled_from([18, 20, 23]))  # 20: ONNX Gelu; 23: ONNX Attention
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=11 if opset >= 23 else 9)
    return model, dynamic
