"""Output comparison metrics and tolerance presets."""

from __future__ import annotations

import numpy as np
import pytest

from graphopt.errors import InputError
from graphopt.runtime.compare import compare, tolerance


def test_identical_outputs_pass_with_perfect_metrics():
    a = np.random.default_rng(0).standard_normal((4, 10)).astype(np.float32)
    result = compare("logits", a, a.copy(), tolerance("fp32"))
    assert result.passed and result.max_abs_error == 0 and result.cosine == pytest.approx(1.0)
    assert result.top1_agreement == 1.0 and result.top5_agreement == 1.0


def test_fp32_fails_on_one_bad_element_that_fp16_allows():
    a = np.ones((100, 100), np.float32)
    b = a.copy()
    b[0, 0] = 1.5
    assert not compare("y", a, b, tolerance("fp32")).passed
    assert compare("y", a, b, tolerance("fp16")).mismatch_fraction == pytest.approx(1e-4)
    assert compare("y", a, b, tolerance("fp16")).passed


def test_nan_in_both_is_equal_nan_in_one_is_not():
    a = np.array([1.0, np.nan], np.float32)
    assert compare("y", a, a.copy(), tolerance("fp32")).passed
    assert not compare("y", a, np.array([1.0, 2.0], np.float32), tolerance("fp32")).passed


def test_integers_must_match_exactly_and_shapes_must_agree():
    assert not compare("ids", np.array([1, 2]), np.array([1, 3]), tolerance("fp32")).passed
    assert not compare("y", np.zeros((2, 3)), np.zeros((3, 2)), tolerance("fp32")).passed


def test_int8_judges_top1_agreement():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((50, 10)).astype(np.float32)
    shuffled = logits[:, ::-1].copy()
    result = compare("logits", logits, shuffled, tolerance("int8"))
    assert not result.passed and "top-1" in result.reason


def test_custom_tolerance_needs_a_value():
    with pytest.raises(InputError, match="needs at least one"):
        tolerance("custom")
    assert tolerance("custom", rtol=0.5).rtol == 0.5
    with pytest.raises(InputError, match="unknown tolerance"):
        tolerance("fp64")


@pytest.mark.parametrize("override, message", [
    ({"atol": -1.0}, "--atol -1.0 is out of range"),
    ({"rtol": float("nan")}, "--rtol nan is out of range"),
    ({"min_cosine": 2.0}, "--min-cosine 2.0 is out of range: it must be at least -1 and at most 1"),
    ({"max_mismatch": 1.5}, "--max-mismatch 1.5 is out of range"),
])
def test_nonsense_tolerances_are_refused(override, message):
    with pytest.raises(InputError, match=message):
        tolerance("custom", **override)
