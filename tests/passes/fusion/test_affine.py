"""fold_affine_into_linear: constant per-channel Mul/Add after a linear layer into its weights."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import op_types, optimize_and_compare, parse

_CONV = "float[4, 3, 3, 3] w = {" + ", ".join(f"{((i * 7) % 11 - 5) / 10}" for i in range(108)) + "}, " \
        "float[4] b = {0.1, -0.2, 0.3, -0.4}"
_LINEAR = "float[6, 4] w = {" + ", ".join(f"{((i * 5) % 13 - 6) / 10}" for i in range(24)) + "}, " \
          "float[4] b = {0.1, -0.2, 0.3, -0.4}"


def _conv_model(body: str, bias: str = ", b") -> str:
    return f"""<ir_version: 9, opset_import: ["" : 18]>
        g (float[N, 3, 8, 8] x) => (float[N, 4, 6, 6] y) <{_CONV}> {{
            c = Conv<kernel_shape = [3, 3]>(x, w{bias})
            {body} }}"""


def _feeds(shape=(2, 3, 8, 8)):
    return {"x": np.random.default_rng(0).standard_normal(shape).astype(np.float32)}


def _remaining(model):
    return [op for op in op_types(model) if op != "Constant"]


@pytest.mark.parametrize("body, bias", [
    ("s = Constant<value = float[4, 1, 1] {0.5, 2.0, -1.0, 3.0}>()\n y = Mul(c, s)", ", b"),
    ("s = Constant<value = float[1, 4, 1, 1] {0.5, 2.0, -1.0, 3.0}>()\n y = Mul(s, c)", ""),
    ("s = Constant<value = float {0.25}>()\n y = Mul(c, s)", ", b"),
    ("t = Constant<value = float[4, 1, 1] {1.0, 2.0, 3.0, 4.0}>()\n y = Add(c, t)", ", b"),
    ("t = Constant<value = float[4, 1, 1] {1.0, 2.0, 3.0, 4.0}>()\n y = Add(t, c)", ""),
    ("s = Constant<value = float[4, 1, 1] {0.5, 2.0, -1.0, 3.0}>()\n m = Mul(c, s)\n"
     " t = Constant<value = float[4, 1, 1] {1.0, 2.0, 3.0, 4.0}>()\n y = Add(m, t)", ", b"),
], ids=["mul per channel", "mul before, no bias", "mul scalar", "add", "add, no bias", "decomposed batchnorm"])
def test_per_channel_mul_and_add_after_conv_fold_into_it(body, bias):
    result = optimize_and_compare(parse(_conv_model(body, bias)), _feeds(), passes="fold_affine_into_linear")
    assert _remaining(result.model) == ["Conv"]


def test_a_spatially_varying_constant_is_refused():
    body = "s = Constant<value = float[1, 1, 6] {1.0, 2.0, 3.0, 4.0, 5.0, 6.0}>()\n y = Mul(c, s)"
    result = optimize_and_compare(parse(_conv_model(body)), _feeds(), passes="fold_affine_into_linear")
    assert _remaining(result.model) == ["Conv", "Mul"]
    assert "not one value per output channel" in result.report.passes[0].skipped[0]


def test_a_zero_scale_is_refused():
    body = "s = Constant<value = float[4, 1, 1] {0.5, 0.0, -1.0, 3.0}>()\n y = Mul(c, s)"
    result = optimize_and_compare(parse(_conv_model(body)), _feeds(), passes="fold_affine_into_linear")
    assert "multiplies by zero" in result.report.passes[0].skipped[0]


def test_a_conv_output_read_elsewhere_is_left_alone():
    model = parse(f"""<ir_version: 9, opset_import: ["" : 18]>
        g (float[N, 3, 8, 8] x) => (float[N, 4, 6, 6] y, float[N, 4, 6, 6] c) <{_CONV}> {{
            c = Conv<kernel_shape = [3, 3]>(x, w, b)
            s = Constant<value = float[4, 1, 1] {{0.5, 2.0, -1.0, 3.0}}>()
            y = Mul(c, s) }}""")
    result = optimize_and_compare(model, _feeds(), passes="fold_affine_into_linear")
    assert _remaining(result.model) == ["Conv", "Mul"]


def test_layer_scale_after_a_matmul_and_its_bias_folds_into_both():
    model = parse(f"""<ir_version: 9, opset_import: ["" : 18]>
        g (float[N, 5, 6] x) => (float[N, 5, 4] y) <{_LINEAR}, float[4] gamma = {{0.5, -2.0, 1e-3, 4.0}}> {{
            m = MatMul(x, w)
            a = Add(m, b)
            y = Mul(gamma, a) }}""")
    result = optimize_and_compare(model, _feeds((2, 5, 6)), passes="fold_affine_into_linear")
    assert _remaining(result.model) == ["MatMul", "Add"]
    assert "w" not in result.model.graph.initializers and "gamma" not in str(result.model.graph.initializers)


@pytest.mark.parametrize("bias, attributes, body", [
    (", b", "<transB = 0, beta = 0.5>", "y = Add(c, t)"),
    ("", "<transB = 0>", "y = Add(c, t)"),
    (", b", "<transB = 0>", "y = Mul(c, t)"),
], ids=["add with beta", "add, no C", "mul"])
def test_gemm_takes_the_fold_in_its_weights_and_c(bias, attributes, body):
    model = parse(f"""<ir_version: 9, opset_import: ["" : 18]>
        g (float[N, 6] x) => (float[N, 4] y) <{_LINEAR}, float[1, 4] t = {{0.5, -2.0, 3.0, 4.0}}> {{
            c = Gemm{attributes}(x, w{bias})
            {body} }}""")
    result = optimize_and_compare(model, _feeds((3, 6)), passes="fold_affine_into_linear")
    assert _remaining(result.model) == ["Gemm"]
