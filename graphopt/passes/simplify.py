"""Collapse chains of shape ops into one op, reusing onnxscript's exact rewrite rules.

Reshape(Reshape(x)) -> Reshape(x); Unsqueeze(Unsqueeze(x)) -> Unsqueeze(x) with both axes;
Transpose(Transpose(x)) -> one Transpose with the composed permutation; Reshape(Squeeze(x), [-1])
of a 1-D x -> x; Slices that keep everything -> x; a Reshape whose target shape is computed at
run time but whose output shape is known -> a constant target; Cast(ConstantOfShape) -> one op.
Every rule is exact; none of them touches values, only how shapes are expressed.
"""

from __future__ import annotations

import onnx_ir as ir
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

_RULES = (
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
