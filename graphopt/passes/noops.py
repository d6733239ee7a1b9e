"""Eliminate nodes that compute nothing: each rule proves out(node) == x exactly, then forwards x.

Identity, Dropout in inference, Cast/CastLike to the same type, Reshape to the same shape,
identity Transpose, and Expand/Pad/Slice/Concat/Split/Tile/Sum-like nodes that do nothing,
plus x+0, x-0, x*1, x/1, x^1 with exact constants whose broadcast keeps x's shape.
onnxscript's own x+0 rule also matches constants within 1e-8 of zero, so it would delete the
`var + 1e-12` epsilon of a decomposed LayerNorm; these rules accept exact values only.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import MatchResult, RewriteRuleClassBase
from onnxscript.rewriter.rules.common import no_op_cast_rule, no_op_transpose_rule

from graphopt.passes._rewrite import apply_rules, indexed_rule_set
from graphopt.passes.registry import Pass, register

_MAX_CHECKED_ELEMENTS = 1 << 16
_INT_END = 2**31 - 1


def constant_array(value: ir.Value | None, max_elements: int = _MAX_CHECKED_ELEMENTS) -> np.ndarray | None:
    """The value's constant contents, or None when it is not a true (non-overridable) constant."""
    if value is None or value.is_graph_input():
        return None
    tensor = value.const_value
    if tensor is None or tensor.size > max_elements:
        return None
    return tensor.numpy()


def _known_dims(value: ir.Value) -> tuple[int | ir.SymbolicDim, ...] | None:
    return None if value.shape is None else tuple(value.shape.dims)


def _broadcast_keeps_shape(x: ir.Value, other_shape: tuple[int, ...]) -> bool:
    """True when broadcasting x against a tensor of other_shape leaves x's shape unchanged."""
    if len(other_shape) == 0:
        return True
    dims = _known_dims(x)
    if dims is None or len(other_shape) > len(dims):
        return False
    for other, mine in zip(reversed(other_shape), reversed(dims)):
        if other != 1 and other != mine:
            return False
    return True


def _onnx_opset(context) -> int:
    return context.model.opset_imports.get("", context.model.opset_imports.get("ai.onnx", 1))


class _ForwardInput(RewriteRuleClassBase):
    """Base of the rules whose replacement is the data input itself."""

    def rewrite(self, op, x, **_):
        return op.Identity(x)


class _ArithmeticIdentity(_ForwardInput):
    """x <op> c where every element of c is the neutral element and c does not widen x."""

    neutral: int

    def check(self, context, x, c, **_) -> MatchResult:
        result = MatchResult()
        array = constant_array(c)
        if array is None:
            return result.fail("operand is not a small constant")
        if not np.all(array == self.neutral):
            return result.fail(f"constant is not exactly {self.neutral}")
        if not _broadcast_keeps_shape(x, array.shape):
            return result.fail("broadcasting the constant would change the shape")
        return result


class AddZero(_ArithmeticIdentity):
    neutral = 0

    def pattern(self, op, x, c):
        return op.Add(x, c)


class SubZero(_ArithmeticIdentity):
    neutral = 0

    def pattern(self, op, x, c):
        return op.Sub(x, c)


class MulOne(_ArithmeticIdentity):
    neutral = 1

    def pattern(self, op, x, c):
        return op.Mul(x, c)


class DivOne(_ArithmeticIdentity):
    neutral = 1

    def pattern(self, op, x, c):
        return op.Div(x, c)


class PowOne(_ArithmeticIdentity):
    neutral = 1

    def pattern(self, op, x, c):
        return op.Pow(x, c)


class DropoutInference(_ForwardInput):
    """Dropout outside training returns its input unchanged."""

    def pattern(self, op, x):
        return op.Dropout(x, _allow_other_inputs=True)

    def check(self, context, x, **_) -> MatchResult:
        result = MatchResult()
        node = context.root
        if _onnx_opset(context) < 7:
            return result.fail("Dropout before opset 7 depends on is_test")
        if len(node.inputs) > 2 and node.inputs[2] is not None:
            training = constant_array(node.inputs[2])
            if training is None or bool(training.reshape(-1)[0]):
                return result.fail("training_mode is not a constant false")
        return result


class CastLikeIdentity(_ForwardInput):
    def pattern(self, op, x, like):
        return op.CastLike(x, like)

    def check(self, context, x, like, **_) -> MatchResult:
        result = MatchResult()
        if x.dtype is None or x.dtype != like.dtype:
            return result.fail("input and target types differ or are unknown")
        return result


class ReshapeIdentity(_ForwardInput):
    """Reshape whose target resolves, dim by dim, to the input's own shape."""

    def pattern(self, op, x, shape):
        return op.Reshape(x, shape)

    def check(self, context, x, shape, **_) -> MatchResult:
        result = MatchResult()
        target = constant_array(shape)
        dims = _known_dims(x)
        if target is None or dims is None:
            return result.fail("target shape or input shape unknown")
        if len(target) != len(dims):
            return result.fail("rank changes")
        allowzero = context.root.attributes.get_int("allowzero", 0)
        unresolved = 0
        for wanted, mine in zip(target.tolist(), dims):
            if wanted == mine or (wanted == 0 and not allowzero):
                continue
            if wanted == -1:
                unresolved += 1
                continue
            return result.fail(f"dimension {mine} becomes {wanted}")
        if unresolved > 1:
            return result.fail("more than one inferred dimension")
        return result


class ExpandIdentity(_ForwardInput):
    """Expand to a shape the input already covers (every target dim is 1 or the input's)."""

    def pattern(self, op, x, shape):
        return op.Expand(x, shape)

    def check(self, context, x, shape, **_) -> MatchResult:
        result = MatchResult()
        target = constant_array(shape)
        if target is None:
            return result.fail("target shape is not a constant")
        if not _broadcast_keeps_shape(x, tuple(int(d) for d in target.tolist())):
            return result.fail("expansion changes the shape")
        return result


class PadIdentity(_ForwardInput):
    """Pad by zero on every side."""

    def pattern(self, op, x):
        return op.Pad(x, _allow_other_inputs=True)

    def check(self, context, x, **_) -> MatchResult:
        result = MatchResult()
        node = context.root
        if len(node.inputs) > 1:
            pads = constant_array(node.inputs[1])
            pads = None if pads is None else pads.tolist()
        else:
            pads = node.attributes.get_ints("pads", None)
        if pads is None:
            return result.fail("pads are not constant")
        if any(p != 0 for p in pads):
            return result.fail("pads are not all zero")
        return result


class SliceIdentity(_ForwardInput):
    """Slice that starts at 0 and ends past the end with step 1 on every sliced axis."""

    def pattern(self, op, x):
        return op.Slice(x, _allow_other_inputs=True)

    def check(self, context, x, **_) -> MatchResult:
        result = MatchResult()
        node = context.root
        dims = _known_dims(x)
        if dims is None:
            return result.fail("input rank unknown")
        params = _slice_params(node)
        if params is None:
            return result.fail("slice parameters are not constant")
        starts, ends, axes, steps = params
        for start, end, axis, step in zip(starts, ends, axes, steps):
            if step != 1:
                return result.fail("step is not 1")
            if not -len(dims) <= axis < len(dims):
                return result.fail("axis out of range")
            dim = dims[axis]
            if not (start == 0 or (isinstance(dim, int) and start <= -dim)):
                return result.fail("slice does not start at 0")
            if not (end >= _INT_END or (isinstance(dim, int) and end >= dim)):
                return result.fail("slice may end before the last element")
        return result


def _slice_params(node: ir.Node):
    if len(node.inputs) == 1:
        starts = node.attributes.get_ints("starts", None)
        ends = node.attributes.get_ints("ends", None)
        if starts is None or ends is None:
            return None
        axes = node.attributes.get_ints("axes", list(range(len(starts))))
        return list(starts), list(ends), list(axes), [1] * len(starts)
    arrays = [constant_array(v) if v is not None else None for v in node.inputs[1:5]]
    arrays += [None] * (4 - len(arrays))
    starts, ends, axes, steps = arrays
    if starts is None or ends is None:
        return None
    if (len(node.inputs) > 3 and node.inputs[3] is not None and axes is None) or (
        len(node.inputs) > 4 and node.inputs[4] is not None and steps is None
    ):
        return None
    count = len(starts)
    axes = list(range(count)) if axes is None else axes.tolist()
    steps = [1] * count if steps is None else steps.tolist()
    return starts.tolist(), ends.tolist(), axes, steps


class _SingleInputSingleOutput(_ForwardInput):
    """A node that, with one data input and one output, returns that input."""

    def check(self, context, x, **_) -> MatchResult:
        result = MatchResult()
        node = context.root
        if len(node.outputs) != 1:
            return result.fail("node has several outputs")
        if sum(v is not None for v in node.inputs) != 1:
            return result.fail("node has several data inputs")
        return result


class ConcatSingle(_SingleInputSingleOutput):
    def pattern(self, op, x):
        return op.Concat(x)


class SplitSingle(_SingleInputSingleOutput):
    def pattern(self, op, x):
        return op.Split(x, _allow_other_inputs=True)

    def check(self, context, x, **_) -> MatchResult:
        result = MatchResult()
        if len(context.root.outputs) != 1:
            return result.fail("split has several outputs")
        return result


class SumSingle(_SingleInputSingleOutput):
    def pattern(self, op, x):
        return op.Sum(x)


class MeanSingle(_SingleInputSingleOutput):
    def pattern(self, op, x):
        return op.Mean(x)


class MaxSingle(_SingleInputSingleOutput):
    def pattern(self, op, x):
        return op.Max(x)


class MinSingle(_SingleInputSingleOutput):
    def pattern(self, op, x):
        return op.Min(x)


class TileOnes(_ForwardInput):
    def pattern(self, op, x, repeats):
        return op.Tile(x, repeats)

    def check(self, context, x, repeats, **_) -> MatchResult:
        result = MatchResult()
        array = constant_array(repeats)
        if array is None or not np.all(array == 1):
            return result.fail("repeats are not all 1")
        return result


def _rules():
    commutative = [AddZero, MulOne]
    one_sided = [
        SubZero, DivOne, PowOne, DropoutInference, CastLikeIdentity, ReshapeIdentity,
        ExpandIdentity, PadIdentity, SliceIdentity, ConcatSingle, SplitSingle, SumSingle,
        MeanSingle, MaxSingle, MinSingle, TileOnes,
    ]
    rules = [no_op_cast_rule, no_op_transpose_rule]
    for rule_class in commutative:
        rules.extend(rule_class.rule().commute())
    rules.extend(rule_class.rule() for rule_class in one_sided)
    return rules


@register("eliminate_noops")
class EliminateNoops(Pass):
    """Remove Identity, inference Dropout, same-type Cast and shape ops that change nothing.

    The shape ops and their no-op forms: Reshape to x's own dims (0 copies a dim unless allowzero,
    at most one -1), Expand to a shape x's broadcast keeps, Pad by zeros on every side, Slice from
    0 to the end with step 1 on every sliced axis, Concat, Sum, Mean, Max and Min of one input,
    Split into one output, Tile by all-1 repeats. Dropout is removed from opset 7 on, with no
    training_mode or a constant false one.
    """

    def __init__(self) -> None:
        super().__init__()
        self._rule_set = indexed_rule_set(_rules())

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        rewritten = apply_rules(model, self._rule_set, owner=self)
        identities = 0
        for graph_like in (model.graph, *model.functions.values()):
            nodes = list(ir.traversal.RecursiveGraphIterator(graph_like))
            identities += sum(_eliminate_identity(node) for node in nodes)
        return ir.passes.PassResult(model, modified=rewritten or bool(identities))


def _eliminate_identity(node: ir.Node) -> bool:
    """Forward y = Identity(x) to x; when y is a graph output, x takes y's name instead.

    onnx-ir's IdentityEliminationPass also renames x when x is already a graph output (two
    outputs then share one value) or lives in an enclosing graph (renaming it there); an
    If/Scan/Loop body returning a rewritten value computed garbage. We keep those Identities.
    """
    if node.op_type != "Identity" or node.domain not in ("", "ai.onnx") or len(node.outputs) != 1:
        return False
    x, y = (node.inputs[0] if node.inputs else None), node.outputs[0]
    if x is None:
        return False
    graph = node.graph
    y_is_output = y.is_graph_output()
    if y_is_output:
        producer = x.producer()
        if producer is None or producer.graph is not graph or x.is_graph_output():
            return False
    if x.type is None:
        x.type = y.type
    if x.shape is None:
        x.shape = y.shape
    ir.convenience.replace_all_uses_with(y, x, replace_graph_outputs=True)
    if y_is_output:
        x.name = y.name
    graph.remove(node, safe=True)
    return True
