"""prune_magnitude: the smallest weights become exactly zero, ONNX Runtime computes x·W with the pruned W,
and the lossy pipeline judges it by its budget, backs layers off along 50% → 25% → dense, and guards its size."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import graphopt
import graphopt.render
from graphopt.errors import InputError
from graphopt.passes import create_pass
from graphopt.pipeline import PassManager
from graphopt import model as model_io
from tests.helpers import parse, run


def _floats(array: np.ndarray) -> str:
    return ", ".join(repr(float(item)) for item in array.reshape(-1))


_RNG = np.random.default_rng(7)
_W1 = _RNG.standard_normal((64, 64)).astype(np.float32)
_W2 = (_RNG.standard_normal((64, 16)) * 0.01).astype(np.float32)  # a hundred times smaller than W1
_K = _RNG.standard_normal((8, 3, 3, 3)).astype(np.float32)


def _mlp() -> onnx.ModelProto:
    model = parse(f"""<ir_version: 9, opset_import: ["" : 18]>
        g (float[N, 64] x) => (float[N, 16] y) <float[64, 64] w1 = {{{_floats(_W1)}}},
                                                float[64, 16] w2 = {{{_floats(_W2)}}}> {{
            h = MatMul(x, w1)
            r = Relu(h)
            y = MatMul(r, w2) }}""")
    model.graph.node[0].name, model.graph.node[2].name = "first", "second"
    return model


def _pruned(weight: np.ndarray, sparsity: float) -> np.ndarray:
    limit = np.quantile(np.abs(weight), sparsity)
    return np.where(np.abs(weight) > limit, weight, 0).astype(np.float32)


def _prune(model: onnx.ModelProto, **options):
    ir_model = model_io.from_proto(model)
    report = PassManager([create_pass("prune_magnitude", options)]).run(ir_model)
    return ir_model, report.passes[0]


def test_the_smallest_weights_become_zero_and_onnx_runtime_computes_with_them():
    model, report = _prune(_mlp(), sparsity=0.5)
    x = _RNG.standard_normal((4, 64)).astype(np.float32)
    (got,) = run(model, {"x": x})
    want = np.maximum(x @ _pruned(_W1, 0.5), 0) @ _pruned(_W2, 0.5)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    weights = {name: value.const_value.numpy() for name, value in model.graph.initializers.items()}
    assert sorted(weights) == ["w1_pruned", "w2_pruned"]  # the dense weights are gone
    assert all(abs(np.mean(array == 0) - 0.5) < 0.01 for array in weights.values())
    assert [(o.layer, o.form, o.changed, o.detail) for o in report.outcomes] == [
        ("first", "50% zero", True, "50.0% of its values zero"), ("second", "50% zero", True, "50.0% of its values zero")]


def test_a_global_threshold_prunes_the_layer_of_small_weights_more():
    model, _ = _prune(_mlp(), sparsity=0.5, scope="global")
    weights = {name: value.const_value.numpy() for name, value in model.graph.initializers.items()}
    assert np.mean(weights["w2_pruned"] == 0) == 1.0 and np.mean(weights["w1_pruned"] == 0) < 0.5
    assert abs(np.mean(np.concatenate([w.ravel() for w in weights.values()]) == 0) - 0.5) < 0.01


def test_a_conv_kernel_is_pruned_and_small_or_excluded_layers_stay_dense():
    def conv(kernel: np.ndarray) -> onnx.ModelProto:
        return parse(f"""<ir_version: 9, opset_import: ["" : 18]>
            g (float[1, 3, 8, 8] x) => (float[1, 8, 6, 6] y) <float[8, 3, 3, 3] k = {{{_floats(kernel)}}}> {{
                y = Conv(x, k) }}""")

    model = conv(_K)
    pruned, _ = _prune(model, sparsity=0.5, min_weights=100)
    x = _RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(run(pruned, {"x": x})[0], run(conv(_pruned(_K, 0.5)), {"x": x})[0], rtol=1e-4, atol=1e-5)
    small, report = _prune(model, sparsity=0.5)  # 216 weights: under the default 1,024
    assert not report.modified and not report.outcomes
    excluded, report = _prune(_mlp(), sparsity=0.5, exclude="second")
    assert [(o.layer, o.changed, o.reason) for o in report.outcomes] == [("second", False, "excluded"),
                                                                         ("first", True, "")]


def test_the_budget_backs_layers_off_to_half_the_sparsity_then_dense_and_the_size_guard_judges():
    x = np.random.default_rng(3).standard_normal((64, 64)).astype(np.float32)
    plain = graphopt.optimize(_mlp(), passes=["prune_magnitude:sparsity=0.8"], inputs={"x": x}, validate=True,
                              force=True, fallback=False)
    assert plain.size.result_compressed < 0.6 * plain.size.float_compressed and plain.latency is None
    budget = plain.validation.input_sets[0].outputs[0].cosine + 0.05  # more than 80% zeros allows
    held = graphopt.optimize(_mlp(), passes=["prune_magnitude:sparsity=0.8"], inputs={"x": x}, validate=True,
                             min_cosine=budget)
    assert held.fallback.met and held.validation.passed
    assert set(held.fallback.backed_off.values()) <= {"40% zero", "dense"}
    assert held.size.ratio < 1.0  # still smaller compressed than the float model
    forms = {outcome.layer: outcome.form for outcome in held.outcomes}
    assert all(forms[name] == form for name, form in held.fallback.backed_off.items())
    assert any("held back" in line for line in graphopt.render.lossy_lines(held))


def _two_of_four(weight: np.ndarray, axis: int) -> np.ndarray:
    """Each 4 consecutive entries along `axis` keep their 2 largest magnitudes, independently of the pass."""
    moved = np.moveaxis(weight, axis, -1).copy()
    flat = moved.reshape(-1, 4)
    for block in flat:
        block[np.argsort(np.abs(block))[:2]] = 0
    return np.moveaxis(flat.reshape(moved.shape), -1, axis)


def test_a_two_of_four_pattern_keeps_the_two_largest_of_every_four_inputs_and_onnx_runtime_agrees():
    model, report = _prune(_mlp(), pattern="2:4", min_weights=100)
    x = _RNG.standard_normal((4, 64)).astype(np.float32)
    (got,) = run(model, {"x": x})
    w1, w2 = _two_of_four(_W1, 0), _two_of_four(_W2, 0)
    np.testing.assert_allclose(got, np.maximum(x @ w1, 0) @ w2, rtol=1e-4, atol=1e-6)
    assert np.all((w1 != 0).reshape(16, 4, 64).sum(axis=1) == 2)  # along K, the MatMul's inputs
    assert [(o.layer, o.form) for o in report.outcomes] == [("first", "2:4 pattern"), ("second", "2:4 pattern")]
    assert create_pass("prune_magnitude", {"pattern": "2:4"}).ladder() == ("2:4 pattern", "dense")


def test_a_pattern_groups_a_convs_input_channels_and_keeps_a_layer_whose_inputs_do_not_divide():
    model = parse(f"""<ir_version: 9, opset_import: ["" : 18]>
        g (float[1, 3, 5, 5] image) => (float[1, 8, 3, 3] z) <float[8, 3, 3, 3] k = {{{_floats(_K)}}}> {{
            z = Conv(image, k) }}""")
    model.graph.node[0].name = "conv"
    _, report = _prune(model, pattern="1:2", min_weights=100)  # 3 input channels: no block of 2 fits
    assert [(o.layer, o.changed, o.reason) for o in report.outcomes] == [
        ("conv", False, "its 3 inputs are not a multiple of 2")]
    kernel = np.concatenate([_K, _K[:, :1]], axis=1)  # 4 input channels
    wide = parse(f"""<ir_version: 9, opset_import: ["" : 18]>
        g (float[1, 4, 5, 5] image) => (float[1, 8, 3, 3] z) <float[8, 4, 3, 3] k = {{{_floats(kernel)}}}> {{
            z = Conv(image, k) }}""")
    pruned, _ = _prune(wide, pattern="2:4", min_weights=100)
    image = _RNG.standard_normal((1, 4, 5, 5)).astype(np.float32)
    want = run(parse(f"""<ir_version: 9, opset_import: ["" : 18]>
        g (float[1, 4, 5, 5] image) => (float[1, 8, 3, 3] z)
          <float[8, 4, 3, 3] k = {{{_floats(_two_of_four(kernel, 1))}}}> {{ z = Conv(image, k) }}"""), {"image": image})
    np.testing.assert_allclose(run(pruned, {"image": image})[0], want[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("options, message", [
    ({"pattern": "4:4"}, "give N:M with 0 < N < M"),
    ({"pattern": "2-4"}, "give N:M with 0 < N < M"),
    ({"pattern": "2:4", "sparsity": 0.7}, "zeroes 50% of the weights, not sparsity 0.7"),
    ({"pattern": "2:4", "scope": "global"}, "leave scope out"),
    ({"sparsity": 0.0}, "sparsity must be between 0 and 1"),
    ({"sparsity": 1.0}, "sparsity must be between 0 and 1"),
    ({"scope": "model"}, "scope 'model': choose from layer, global"),
])
def test_bad_options_are_clear_errors(options, message):
    with pytest.raises(InputError, match=message):
        create_pass("prune_magnitude", options)
