"""Collapse chains of shape ops into one op, reusing onnxscript's exact rewrite rules.

Reshape(Reshape(x)) -> Reshape(x); Unsqueeze(Unsqueeze(x)) -> Unsqueeze(x) with both axes;
Transpose(Transpose(x)) -> one Transpose with the composed permutation; Reshape(Squeeze(x), [-1])
of a 1-D x -> x; Slices that keep everything -> x; a Reshape whose target shape is computed at
run time but whose output shape is known -> a constant target; Cast(ConstantOfShape) -> one op;
and our own: Reshape(Transpose(Reshape(x, [b·h, s, d]), [0, 2, 1]), [b, h, d, s]) -> Transpose(x,
[0, 1, 3, 2]), the three ops (and the Shape/Slice/Concat computing their shapes) PyTorch's dynamo
exporter writes for an attention's Kᵀ. Every rule is exact; none of them touches values, only how
shapes are expressed.
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.rewriter import MatchResult, RewriteRuleClassBase
from onnxscript.rewriter.rules.common import (
    cast_constant_of_shape_rule,
    cast_constant_of_shape_without_value_rule,
    collapse_slice2_rule,
    collapse_slice_rule,
    materialize_reshape_shape_rule,
    reshape_reshape_rule,
    squeeze_reshape_1d_rule,
    transpose_transpose_rule,
    unsqueeze_unsqueeze_rule,
)

from graphopt.passes._rewrite import apply_rules, indexed_rule_set
from graphopt.passes.registry import Pass, register


class SwapLastTwoThroughABatch(RewriteRuleClassBase):
    """A 4-D x's last two axes swapped by way of a 3-D batch: its first two axes merged, the last two
    transposed, the first split again. Exact when the shapes say so: the 3-D value keeps x's last two
    dims and the result is x's with the last two swapped (row-major, so the merged axis is b·h)."""

    def pattern(self, op, x, merge_shape, split_shape):
        merged = op.Reshape(x, merge_shape, _allow_other_attributes=True, _outputs=["merged"])
        swapped = op.Transpose(merged, perm=[0, 2, 1])
        return op.Reshape(swapped, split_shape, _allow_other_attributes=True)

    def check(self, context, x, merged, **_) -> MatchResult:
        result = MatchResult()
        source, middle, target = _dims(x), _dims(merged), _dims(context.root.outputs[0])
        if source is None or middle is None or target is None or (len(source), len(middle), len(target)) != (4, 3, 4):
            return result.fail("the shapes are not known as 4-D, 3-D, 4-D")
        if not (_same(middle[1], source[2]) and _same(middle[2], source[3])):
            return result.fail("the 3-D value does not keep x's last two dims")
        if not all(_same(a, b) for a, b in zip(target, (source[0], source[1], source[3], source[2]))):
            return result.fail("the result is not x with its last two dims swapped")
        return result

    def rewrite(self, op, x, **_):
        return op.Transpose(x, perm=[0, 1, 3, 2])


def _dims(value: ir.Value) -> tuple | None:
    return None if value.shape is None else tuple(value.shape.dims)


def _same(first, second) -> bool:
    """Two dims known to be equal: the same int, or the same named symbol."""
    if isinstance(first, int) or isinstance(second, int):
        return isinstance(first, int) and isinstance(second, int) and first == second
    return first.value is not None and first.value == second.value


_RULES = (
    SwapLastTwoThroughABatch.rule(),
    reshape_reshape_rule,
    unsqueeze_unsqueeze_rule,
    transpose_transpose_rule,
    squeeze_reshape_1d_rule,
    collapse_slice_rule,
    collapse_slice2_rule,
    materialize_reshape_shape_rule,
    cast_constant_of_shape_rule,
    cast_constant_of_shape_without_value_rule,
)


# The rules build Reshape with allowzero and Unsqueeze with an axes input: opset 14 forms.
@register("collapse_shape_ops", min_opset=14)
class CollapseShapeOps(Pass):
    """Merge chains of Reshape/Unsqueeze/Transpose/Slice into one op and make known shapes constant.

    Opset 14 and up: the rules emit Reshape with allowzero and Unsqueeze with an axes input.
    """

    def __init__(self) -> None:
        super().__init__()
        self._rule_set = indexed_rule_set(_RULES)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        return ir.passes.PassResult(model, modified=apply_rules(model, self._rule_set, owner=self))
