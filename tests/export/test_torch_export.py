"""Export: our models and a transformer with dynamic axes, parity at two shapes, fallbacks, errors."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

import graphopt
from graphopt.errors import ValidationFailed
from graphopt.export import ExportFailed, export_zoo, from_torch
from graphopt.runtime.providers import create_session


@pytest.mark.parametrize("name, symbols", [("mlp", 1), ("cnn", 1), ("lstm", 2)])
def test_zoo_models_export_with_parity_at_every_dynamic_shape(tmp_path, name, symbols):
    path = tmp_path / f"{name}.onnx"
    result = export_zoo(name, path)
    assert result.exporter == "dynamo" and path.exists()
    assert len(result.parity) == 1 + symbols  # example shapes, then each symbol grown by one
    assert all(check.passed for check in result.parity)
    assert len({tuple(check.shapes[result.input_names[0]]) for check in result.parity}) == 1 + symbols
    assert result.max_abs_error < 1e-4
    onnx.checker.check_model(onnx.load(path))
    dims = onnx.load(path).graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param  # batch stays dynamic


def _tiny_bert():
    import transformers

    from graphopt.export.nets import TextOutput

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64)
    return TextOutput(transformers.BertModel(config), "last_hidden_state").eval()


def test_transformer_with_dynamic_batch_and_sequence(tmp_path):
    ids = torch.randint(0, 100, (2, 8))
    mask = torch.ones(2, 8, dtype=torch.int64)
    axes = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}}
    result = from_torch(_tiny_bert(), (ids, mask), tmp_path / "bert.onnx",
                        input_names=["input_ids", "attention_mask"], output_names=["hidden"],
                        dynamic_axes=axes)
    shapes = [check.shapes["input_ids"] for check in result.parity]
    assert shapes == [[2, 8], [3, 8], [2, 9]]
    assert all(check.passed for check in result.parity)
    session = create_session(tmp_path / "bert.onnx")
    out = session.run({"input_ids": np.ones((1, 5), np.int64), "attention_mask": np.ones((1, 5), np.int64)})
    assert out[0].shape == (1, 5, 32)


class _DataDependent(torch.nn.Module):
    def forward(self, x):
        if x.sum() > 0:
            return x * 2
        return x * 3


def test_dynamo_failure_falls_back_to_torchscript_and_says_so():
    result = from_torch(_DataDependent(), (torch.rand(2, 3),))
    assert result.exporter == "torchscript"
    assert "falling back to the torchscript exporter" in result.notes[0]
    with pytest.raises(ExportFailed, match="dynamo exporter: GuardOnDataDependentSymNode"):
        from_torch(_DataDependent(), (torch.rand(2, 3),), fallback=False)


class _ShapeDependent(torch.nn.Module):
    def forward(self, x):
        return x * 2 if x.shape[0] > 2 else x * 3


def test_parity_failure_names_exporter_and_opset():
    with pytest.raises(ValidationFailed, match=r"export parity failed \(torchscript exporter, opset 17\)"):
        from_torch(_ShapeDependent(), (torch.rand(2, 3),), exporter="torchscript", fallback=False,
                   dynamic_axes={"x": {0: "batch"}})


class _Unsupported(torch.nn.Module):
    def forward(self, x):
        return torch.linalg.svd(x)[0]


def test_unsupported_op_is_one_clear_error(tmp_path):
    out = tmp_path / "svd.onnx"
    with pytest.raises(ExportFailed, match="svd") as caught:
        from_torch(_Unsupported(), (torch.rand(3, 3),), out)
    assert "\n" not in str(caught.value)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_digits_cnn_is_trained_and_ships_its_data(tmp_path):
    path = tmp_path / "digits.onnx"
    export_zoo("digits-cnn", path)
    test_set = np.load(tmp_path / "digits.test.npz")
    calibration = np.load(tmp_path / "digits.calibration.npz")
    assert calibration["pixels"].shape == (128, 1, 8, 8)
    session = create_session(path)
    logits = session.run({"pixels": test_set["pixels"]})[0]
    assert np.mean(np.argmax(logits, axis=1) == test_set["labels"]) > 0.9
    assert graphopt.validate(path, path, inputs=tmp_path / "digits.test.npz").passed


@pytest.mark.slow
def test_minilm_exports_with_trained_weights(tmp_path):
    result = export_zoo("minilm", tmp_path / "minilm.onnx")
    assert result.exporter == "dynamo" and all(check.passed for check in result.parity)
    assert len(result.model.graph) > 600
