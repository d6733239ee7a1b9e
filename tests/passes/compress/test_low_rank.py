"""low_rank: x·W becomes x·A·B from a truncated SVD; ONNX Runtime computes what numpy's SVD says, whitening
by the input's Gram matrix changes the output less than plain SVD at the same rank, and the lossy pipeline
backs layers off along r → halfway to the break-even rank → full rank."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import graphopt
from graphopt import model as model_io
from graphopt.errors import InputError
from graphopt.passes import create_pass
from graphopt.pipeline import PassManager
from tests.helpers import op_types, parse, run

_RNG = np.random.default_rng(11)


def _decaying(rows: int, columns: int, length: float = 8.0) -> np.ndarray:
    """A weight whose singular values fall as exp(-i / length), as trained layers' do (random ones' are flat)."""
    u, _ = np.linalg.qr(_RNG.standard_normal((rows, rows)))
    v, _ = np.linalg.qr(_RNG.standard_normal((columns, columns)))
    size = min(rows, columns)
    return ((u[:, :size] * (10 * np.exp(-np.arange(size) / length))) @ v[:, :size].T).astype(np.float32)


_W1, _W2 = _decaying(64, 96), _decaying(96, 32)
_SCALE = np.where(np.arange(64) < 8, 10.0, 0.3).astype(np.float32)  # 8 input channels carry the signal


def _floats(array: np.ndarray) -> str:
    return ", ".join(repr(float(item)) for item in array.reshape(-1))


def _mlp(gemm: bool = False) -> onnx.ModelProto:
    second = "y = Gemm(r, w2t, b2) <transB = 1>" if gemm else "y = MatMul(r, w2)"
    model = parse(f"""<ir_version: 9, opset_import: ["" : 18]>
        g (float[N, 64] x) => (float[N, 32] y) <float[64, 96] w1 = {{{_floats(_W1)}}},
            float[96, 32] w2 = {{{_floats(_W2)}}}, float[32, 96] w2t = {{{_floats(_W2.T)}}},
            float[32] b2 = {{{_floats(np.arange(32, dtype=np.float32))}}}> {{
            h = MatMul(x, w1)
            r = Relu(h)
            {second} }}""")
    model.graph.node[0].name, model.graph.node[2].name = "first", "second"
    return model


def _inputs(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, 64)).astype(np.float32) * _SCALE


def _factor(model: onnx.ModelProto, **options):
    ir_model = model_io.from_proto(model)
    report = PassManager([create_pass("low_rank", {"whiten": False, "min_weights": 1000, **options})]).run(ir_model)
    return ir_model, report.passes[0]


def _truncated(weight: np.ndarray, rank: int) -> np.ndarray:
    u, s, vt = np.linalg.svd(weight.astype(np.float64), full_matrices=False)
    return (u[:, :rank] * s[:rank]) @ vt[:rank]


def test_plain_svd_factors_compute_the_truncated_weight_in_onnx_runtime():
    model, report = _factor(_mlp(), rank_ratio=0.5)
    x = _inputs(8, 0)
    (got,) = run(model, {"x": x})
    # ranks: 0.5 · 64·96/160 = 19 and 0.5 · 96·32/128 = 12
    want = np.maximum(x @ _truncated(_W1, 19), 0) @ _truncated(_W2, 12)
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)
    assert op_types(model) == ["MatMul", "MatMul", "Relu", "MatMul", "MatMul"]
    shapes = {name: tuple(value.const_value.shape) for name, value in model.graph.initializers.items()}
    assert {name: shape for name, shape in shapes.items() if "low_rank" in name} == {
        "first_low_rank_a": (64, 19), "first_low_rank_b": (19, 96), "second_low_rank_a": (96, 12),
        "second_low_rank_b": (12, 32)}
    assert "w1" not in shapes and "w2" not in shapes
    assert [(o.layer, o.form, o.detail.split(",")[0]) for o in report.outcomes] == [
        ("first", "rank r", "rank 19 of 64"), ("second", "rank r", "rank 12 of 32")]
    assert report.outcomes[0].bytes_after == (64 * 19 + 19 * 96) * 4 < report.outcomes[0].bytes_before


def test_energy_picks_the_smallest_rank_that_keeps_that_share_of_sigma_squared():
    u, _ = np.linalg.qr(_RNG.standard_normal((64, 64)))
    v, _ = np.linalg.qr(_RNG.standard_normal((96, 64)))
    sigma = 2.0 ** -np.arange(64) * 100  # each direction a quarter of the energy of the one before
    weight = ((u * sigma) @ v.T).astype(np.float32)
    model, report = _factor(parse(f"""<ir_version: 9, opset_import: ["" : 18]>
        g (float[N, 64] x) => (float[N, 96] y) <float[64, 96] w = {{{_floats(weight)}}}> {{ y = MatMul(x, w) }}"""),
                            energy=0.99)
    # 1 - 4^-3 = 0.984 < 0.99 <= 1 - 4^-4 = 0.996: four directions
    assert report.outcomes[0].detail == "rank 4 of 64, 99.6% of its energy kept"
    x = _inputs(4, 1)
    np.testing.assert_allclose(run(model, {"x": x})[0], x @ _truncated(weight, 4), rtol=1e-3, atol=1e-3)


def test_a_gemm_with_transposed_weight_and_bias_keeps_both():
    model, report = _factor(_mlp(gemm=True), rank_ratio=0.5)
    x = _inputs(8, 2)
    want = np.maximum(x @ _truncated(_W1, 19), 0) @ _truncated(_W2, 12) + np.arange(32)
    np.testing.assert_allclose(run(model, {"x": x})[0], want, rtol=1e-3, atol=1e-3)
    assert op_types(model) == ["MatMul", "MatMul", "Relu", "MatMul", "Gemm"]


def test_a_rank_that_saves_nothing_leaves_the_layer_as_it_is():
    model, report = _factor(_mlp(), energy=0.99999999)  # all but the last few directions
    assert not report.modified and op_types(model) == ["MatMul", "Relu", "MatMul"]
    reasons = [o.reason for o in report.outcomes]
    assert reasons[0].startswith("energy 0.99999999 asks for rank") and "not below 38, where its factors" in reasons[0]


def test_whitening_by_the_inputs_gram_matrix_changes_the_output_less_than_plain_svd():
    calibration = [{"x": _inputs(16, seed)} for seed in range(8)]
    held_out = _inputs(64, 100)
    expected = run(_mlp(), {"x": held_out})[0]
    errors = {}
    for whiten in (False, True):
        result = graphopt.optimize(_mlp(), passes=[f"low_rank:rank_ratio=0.25:whiten={str(whiten).lower()}:"
                                                   "min_weights=1000"], calibration=calibration if whiten else None,
                                   validate=whiten, force=True, fallback=False, check_speed=False)
        assert ("whitened" in result.outcomes[0].detail) == whiten
        errors[whiten] = np.linalg.norm(run(result.model, {"x": held_out})[0] - expected)
    # 8 of 64 input channels carry the signal: the whitened factors spend their rank on them
    assert errors[True] < 0.5 * errors[False], errors


def test_the_budget_backs_layers_off_to_a_halfway_rank_then_full_rank():
    x = _inputs(64, 3)
    held = graphopt.optimize(_mlp(), passes=["low_rank:rank_ratio=0.2:whiten=false:min_weights=1000"],
                             inputs={"x": x}, validate=True, min_cosine=0.98, check_speed=False)
    assert held.fallback.met and held.validation.passed
    assert held.fallback.path[0].score < 0.9  # ranks 7 and 4 alone
    assert held.fallback.backed_off == {"first": "halfway rank", "second": "full rank"} and held.changed == ["first"]
    assert [(o.layer, o.form, o.detail.split(",")[0]) for o in held.outcomes if o.changed] == [
        ("first", "halfway rank", "rank 22 of 64")]  # halfway from rank 7 to the break-even 38


@pytest.mark.parametrize("options, message", [
    ({"energy": 1.0}, "energy must be between 0 and 1"),
    ({"energy": -0.5}, "energy must be between 0 and 1"),
    ({"rank_ratio": 1.0}, "rank_ratio must be between 0 and 1"),
    ({"energy": 0.9, "rank_ratio": 0.5}, "give energy or rank_ratio, not both"),
])
def test_bad_options_are_clear_errors(options, message):
    with pytest.raises(InputError, match=message):
        create_pass("low_rank", options)
