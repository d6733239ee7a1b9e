"""--drop-layers: the teacher keeping every K-th layer computes what the same torch model with only
those layers computes, on the export and after graphopt's fusions; models whose layers cannot be
found are refused with one line."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from graphopt import api
from graphopt import model as model_io
from graphopt.errors import InputError
from graphopt.export import from_torch
from graphopt.runtime.providers import create_session
from graphopt.train.drop_layers import drop_layers


class _Encoder(torch.nn.Module):
    def __init__(self, bert) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids, attention_mask):
        return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


@pytest.fixture(scope="module")
def tiny_bert():
    import transformers

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=5, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=64)
    model = transformers.BertModel(config).eval()
    with torch.no_grad():  # trained-looking: a fresh model's LayerNorms and biases are all alike, and O3 merges them
        for name, parameter in model.named_parameters():
            if parameter.dim() == 1:
                parameter.add_(0.1 * torch.randn_like(parameter))
    return model


def _feeds() -> dict[str, np.ndarray]:
    ids = np.random.default_rng(0).integers(0, 100, (2, 12))
    mask = np.ones_like(ids)
    mask[1, 8:] = 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("fused", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["export", "O3-ort"])
def test_the_kept_layers_compute_what_torch_computes_with_only_them(tiny_bert, tmp_path, fused):
    teacher = tmp_path / "teacher.onnx"
    example = tuple(torch.from_numpy(array) for array in _feeds().values())
    from_torch(_Encoder(tiny_bert), example, teacher, input_names=["input_ids", "attention_mask"],
               output_names=["last_hidden_state"],
               dynamic_axes={"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"}})
    if fused:
        api.optimize(teacher, teacher.with_name("fused.onnx"), preset="O3", target="ort")
        teacher = teacher.with_name("fused.onnx")
    model = model_io.load(teacher)
    dropped = drop_layers(model, 2)
    assert dropped.layers == 5 and dropped.kept == [0, 2, 4] and len(dropped.pairs) == 2
    student = tmp_path / "student.onnx"
    model_io.save(model, student)
    smaller = copy.deepcopy(tiny_bert)
    smaller.encoder.layer = torch.nn.ModuleList([smaller.encoder.layer[index] for index in (0, 2, 4)])
    with torch.no_grad():
        expected = _Encoder(smaller)(*example).numpy()
    got = create_session(student).run(_feeds())[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=2e-5)


def test_a_model_without_numbered_layers_is_refused(tmp_path):
    path = tmp_path / "mlp.onnx"
    from_torch(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)),
               (torch.zeros(2, 4),), path, input_names=["x"], output_names=["y"])
    with pytest.raises(InputError, match="--drop-layers: no numbered layers in this model"):
        drop_layers(model_io.load(path), 2)
    with pytest.raises(InputError, match="keep every K-th layer with K >= 2"):
        drop_layers(model_io.load(path), 1)
