"""validate: passes a model against itself and its O1 version, fails a perturbed copy and
names the node that consumes the perturbed weight."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import graphopt
from graphopt.errors import InputError
from graphopt.runtime.providers import SessionConfig, create_session
from tests.runtime.models import perturbed, text_classifier


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
