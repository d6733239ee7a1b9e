"""hardswish and hardsigmoid written out (paddle2onnx's MobileNetV3 blocks) become HardSwish / HardSigmoid."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import op_types, optimize_and_compare, parse


def _model(opset: int, order: str) -> str:
    """x · clip(x + 3, 0, 6) / 6 with the Mul before the Div (paddle2onnx) or after it, and a
    hardsigmoid clip(x + 3, 0, 6) / 6 of x gating it."""
    body = {"mul_first": "m = Mul(x, c)\n            h = Div(m, six)",
            "div_first": "d = Div(c, six)\n            h = Mul(d, x)"}[order]
    return f"""<ir_version: 8, opset_import: ["" : {opset}]>
        g (float[N, 4, 8, 8] x) => (float[N, 4, 8, 8] y) <float three = {{3.0}}, float zero = {{0.0}},
          float six = {{6.0}}> {{
            a = Add(x, three)
            c = Clip(a, zero, six)
            {body}
            a2 = Add(x, three)
            c2 = Clip(a2, zero, six)
            gate = Div(c2, six)
            y = Mul(h, gate) }}"""


def _feeds():  # over the whole range: below -3, the ramp, above 3
    return {"x": np.random.default_rng(0).uniform(-6, 6, (2, 4, 8, 8)).astype(np.float32)}


@pytest.mark.parametrize("order", ["mul_first", "div_first"])
def test_written_out_hardswish_becomes_one_node_at_opset_14(order):
    result = optimize_and_compare(parse(_model(17, order)), _feeds(), passes="fuse_hardswish")
    assert sorted(op_types(result.model)) == ["HardSigmoid", "HardSwish", "Mul"]
    assert any("HardSwish: 1" in change for entry in result.report.passes for change in entry.changes)


def test_below_opset_14_it_becomes_x_times_hardsigmoid():
    result = optimize_and_compare(parse(_model(13, "mul_first")), _feeds(), passes="fuse_hardswish")
    assert sorted(op_types(result.model)) == ["HardSigmoid", "HardSigmoid", "Mul", "Mul"]  # x · hs(x) · hs(x)


def test_other_constants_are_left_alone():
    model = _model(17, "mul_first").replace("float three = {3.0}", "float three = {2.0}")
    result = optimize_and_compare(parse(model), _feeds(), passes="fuse_hardswish")
    assert "HardSwish" not in op_types(result.model) and "Clip" in op_types(result.model)


def test_it_runs_after_the_cleanup_on_both_targets():
    model = _model(17, "mul_first").replace("a2 = Add(x, three)", "a2 = Add(h, three)")
    for target in ("portable", "ort"):
        result = optimize_and_compare(parse(model), _feeds(), passes="fold_constants,eliminate_common_subexpressions,"
                                      "fuse_hardswish", target=target)
        assert op_types(result.model) == ["HardSwish", "HardSwish"], target


def test_x_times_its_hardsigmoid_is_hardswish():
    model = _model(17, "mul_first").replace("a2 = Add(x, three)", "a2 = Add(h, three)")  # h · hardsigmoid(h)
    result = optimize_and_compare(parse(model), _feeds(), passes="fuse_hardswish")
    assert op_types(result.model) == ["HardSwish", "HardSwish"]
