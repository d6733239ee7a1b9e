"""validate: passes a model against itself and its O1 version, fails a perturbed copy and
names the node that consumes the perturbed weight."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import graphopt
from graphopt.errors import InputError
from graphopt.runtime.providers import SessionConfig, create_session
from graphopt.runtime.validate import Validator
from tests.runtime.models import fixed_reshape, hardswish_stack, perturbed, text_classifier


@pytest.fixture
def model_path(tmp_path):
    path = tmp_path / "classifier.onnx"
    onnx.save(text_classifier(), path)
    return path


def test_model_validates_against_itself_at_two_shapes(model_path):
    result = graphopt.validate(model_path, model_path)
    assert result.passed
    assert [run.shapes["input_ids"] for run in result.input_sets] == [[2, 16], [1, 7]]
    logits = result.input_sets[0].outputs[0]
    assert logits.top1_agreement == 1.0 and logits.max_abs_error == 0.0


def test_model_validates_against_its_o1_version(model_path, tmp_path):
    out = tmp_path / "o1.onnx"
    graphopt.optimize(model_path, out)
    assert graphopt.validate(model_path, out).passed


@pytest.mark.parametrize("weight, node", [("w1", "dense"), ("b1", "dense_bias"), ("w2", "classifier")])
def test_perturbed_weight_fails_and_names_its_consumer(model_path, tmp_path, weight, node):
    broken = tmp_path / "broken.onnx"
    onnx.save(perturbed(text_classifier(), weight, delta=3.0), broken)
    result = graphopt.validate(model_path, broken)
    assert not result.passed
    assert result.divergence is not None
    assert result.divergence.node == node
    assert "first divergence" in result.summary() and node in result.summary()


def test_divergence_is_found_after_optimization_renamed_things(model_path, tmp_path):
    broken = tmp_path / "broken.onnx"
    onnx.save(perturbed(text_classifier(), "w1", delta=3.0), broken)
    optimized = tmp_path / "broken.o1.onnx"
    graphopt.optimize(broken, optimized)
    result = graphopt.validate(model_path, optimized)
    assert not result.passed and result.divergence.op_type == "MatMul"


def test_a_reused_name_for_another_value_is_not_blamed(tmp_path):
    """A rewrite may give a new value a name the reference uses for something else (onnx-ir's
    val_N): a value of another shape under the same name is not the place the outputs diverged."""
    reference = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
        g (float[2, 4] x) => (float[2, 4] y) {
            val_6 = Relu(x)
            y = Mul(val_6, x)
        }""")
    candidate = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
        g (float[2, 4] x) => (float[2, 4] y) {
            val_6 = ReduceSum<keepdims = 1>(x)
            r = Relu(x)
            three = Constant<value = float {3.0}>()
            m = Mul(r, x)
            y = Mul(m, three)
        }""")
    divergence = graphopt.validate(reference, candidate).divergence
    assert divergence.value == "y" and divergence.op_type == "Mul"


def test_user_inputs_from_npz(model_path, tmp_path):
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, input_ids=np.array([[1, 2, 3]], np.int64), attention_mask=np.ones((1, 3), np.int64))
    result = graphopt.validate(model_path, model_path, inputs=inputs)
    assert result.passed and [run.shapes["input_ids"] for run in result.input_sets] == [[1, 3]]


def test_candidate_with_other_outputs_fails_cleanly(model_path, tmp_path):
    other = text_classifier()
    other.graph.output[0].name = "scores"
    other.graph.node[-1].output[0] = "scores"
    path = tmp_path / "other.onnx"
    onnx.save(other, path)
    result = graphopt.validate(model_path, path)
    assert not result.passed and "outputs" in result.problem


def test_cuda_request_is_one_clear_error(model_path):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has the CUDA provider")
    with pytest.raises(InputError, match="CUDA execution provider is not available"):
        create_session(model_path, SessionConfig(ep="cuda"))
    assert create_session(model_path, SessionConfig(ep="auto")).ep == "cpu"


def test_divergence_names_the_weight_that_differs(model_path, tmp_path):
    broken = tmp_path / "broken.onnx"
    onnx.save(perturbed(text_classifier(), "w2", delta=3.0), broken)
    divergence = graphopt.validate(model_path, broken).divergence
    assert divergence.node == "classifier"
    assert divergence.differing_weights == ["w2 (max abs difference 3)"]
    assert "w2" not in divergence.matching_inputs and "act" in divergence.matching_inputs
    assert "weights that differ from the reference's: w2" in divergence.inputs_summary()


def test_validation_compares_graphs_as_written_by_default(model_path):
    result = graphopt.validate(model_path, model_path)
    assert result.opt_level == "disable" and "graphs as written" in result.summary()
    assert result.to_dict()["ort_graph_optimization_level"] == "disable"
    optimized = graphopt.validate(model_path, model_path, runtime=graphopt.RuntimeOptions(opt_level="all"))
    assert optimized.opt_level == "all" and "'all' graph optimizations" in optimized.summary()


def test_conflicting_shapes_are_caught_before_any_session(model_path, monkeypatch):
    import importlib

    validate_module = importlib.import_module("graphopt.runtime.validate")

    def no_session(*args, **kwargs):
        raise AssertionError("a session was created")

    monkeypatch.setattr(validate_module, "create_session", no_session)
    with pytest.raises(InputError, match="shapes disagree on dimension 'seq': input_ids=1x8 makes it 8, "
                                         "attention_mask=1x4 makes it 4"):
        graphopt.validate(model_path, model_path, shapes={"input_ids": (1, 8), "attention_mask": (1, 4)})
    with pytest.raises(InputError, match="outside the 50 rows of the embedding table 'embedding'"):
        graphopt.validate(model_path, model_path, input_ranges={"input_ids": (0, 60)})


def test_user_inputs_are_checked_before_any_session(model_path, tmp_path):
    past_vocabulary = tmp_path / "past.npz"
    np.savez(past_vocabulary, input_ids=np.array([[1, 2, 55]], np.int64), attention_mask=np.ones((1, 3), np.int64))
    with pytest.raises(InputError, match="'input_ids' holds 55, outside the 50 rows"):
        graphopt.validate(model_path, model_path, inputs=past_vocabulary)
    disagreeing = tmp_path / "disagree.npz"
    np.savez(disagreeing, input_ids=np.ones((1, 3), np.int64), attention_mask=np.ones((1, 5), np.int64))
    with pytest.raises(InputError, match="inputs disagree on dimension 'seq'"):
        graphopt.validate(model_path, model_path, inputs=disagreeing)
    with pytest.raises(InputError, match="holds -51"):
        graphopt.validate(model_path, model_path, inputs={"input_ids": np.array([[-51]], np.int64),
                                                          "attention_mask": np.ones((1, 1), np.int64)})


def test_runtime_failure_on_synthesized_inputs_is_one_error(tmp_path):
    path = tmp_path / "fixed.onnx"
    onnx.save(fixed_reshape(), path)
    with pytest.raises(InputError, match=r"failed running .*fixed.onnx on x \[1, 4\].*synthesized"):
        graphopt.validate(path, path)


def test_a_candidate_onnx_runtime_cannot_run_fails_validation(tmp_path):
    reference = tmp_path / "relu.onnx"
    onnx.save(onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
        g (float[N, 4] x) => (float[N, 4] y) { y = Relu(x) }"""), reference)
    candidate = tmp_path / "fixed.onnx"
    onnx.save(fixed_reshape(), candidate)
    result = graphopt.validate(reference, candidate)
    assert not result.passed and result.problem.startswith("the candidate fails in ONNX Runtime: ")
    assert "Reshape" in result.problem


def test_o3_passes_fp32_within_the_references_own_noise_and_a_changed_weight_does_not():
    model = hardswish_stack()
    feeds = [{"x": np.random.default_rng(seed).standard_normal((1, 16, 32, 32)).astype(np.float32) * 2}
             for seed in range(2)]
    fused = graphopt.optimize(model, preset="O3").model
    assert "HardSwish" in [node.op_type for node in fused.graph]
    validator = Validator(model, feed_sets=feeds)
    result = validator.validate(fused)
    assert result.passed, result.summary()
    for run in result.input_sets:  # judged plainly, or beyond atol and then within the measured noise
        for output in run.outputs:
            assert output.noise is None or 0 < output.max_abs_error <= 4 * output.noise
    # ~750-large outputs: the fused model misses atol=1e-5 by ~7e-4, while ONNX Runtime's own graph
    # optimizations move the reference by ~1e-3 (its NCHWc convolutions sum in another order)
    noisy = [output for run in result.input_sets for output in run.outputs if output.noise]
    assert noisy and f"({len(noisy)} within 4x the reference's own fp32 noise)" in result.summary()
    changed = validator.validate(perturbed(model, "w15", delta=0.01), locate=False)
    assert not changed.passed and "elements outside rtol=0.0001 atol=1e-05 or 4x the reference's own fp32 noise" \
        in changed.summary()
