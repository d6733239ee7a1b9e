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


def test_the_references_own_fp32_noise_widens_fp32_up_to_four_times_it():
    a = np.full(1000, 0.02, np.float32)
    a[0] = 8.0  # the output's largest value bounds the allowance: rtol of it
    b = a.copy()
    b[1] += 3e-5  # beyond atol 1e-5 + rtol 1e-4 of 0.02
    plain = compare("boxes", a, b, tolerance("fp32"))
    assert not plain.passed and plain.outside == 1 and plain.noise is None
    assert plain.reason == "1 of 1,000 elements outside rtol=0.0001 atol=1e-05"  # not "0.10%", not "0.00%"
    assert compare("boxes", a, b, tolerance("fp32"), noise=1e-5).passed  # 3e-5 <= 4 x 1e-5
    tight = compare("boxes", a, b, tolerance("fp32"), noise=5e-6)
    assert not tight.passed and tight.noise == 5e-6 and "or 4x the reference's own fp32 noise (5e-06)" in tight.reason
    b[1] = 0.02 + 2e-3  # noise of 1.0 would allow it, but not beyond rtol x 8.0 = 8e-4
    assert not compare("boxes", a, b, tolerance("fp32"), noise=1.0).passed


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
