"""The digits-cnn: a small CNN trained on scikit-learn's bundled digits in seconds, then cached.

The 1,797 8x8 images are split once (seeded): 75% train, 25% held out as the test set. The
calibration set is 128 training images (for static quantization). Weights are cached in
$GRAPHOPT_CACHE (default ~/.cache/graphopt) so later exports skip training.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

CACHE_VERSION = 1
_SEED = 0
_EPOCHS = 30
_CALIBRATION_SIZE = 128


def cache_dir() -> Path:
    return Path(os.environ.get("GRAPHOPT_CACHE", Path.home() / ".cache" / "graphopt"))


@dataclasses.dataclass
class DigitsData:
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray

    @property
    def calibration_x(self) -> np.ndarray:
        return self.train_x[:_CALIBRATION_SIZE]


def load_data() -> DigitsData:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    labels = digits.target.astype(np.int64)
    order = np.random.default_rng(_SEED).permutation(len(labels))
    split = int(0.75 * len(labels))
    train, test = order[:split], order[split:]
    return DigitsData(images[train], labels[train], images[test], labels[test])


def _train(model, data: DigitsData) -> None:
    import torch

    torch.manual_seed(_SEED)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    images, labels = torch.from_numpy(data.train_x), torch.from_numpy(data.train_y)
    generator = torch.Generator().manual_seed(_SEED)
    model.train()
    for _ in range(_EPOCHS):
        for batch in torch.randperm(len(labels), generator=generator).split(64):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(images[batch]), labels[batch])
            loss.backward()
            optimizer.step()
    model.eval()


def trained_model():
    """The trained DigitsCNN (from the cache when present)."""
    import torch

    from graphopt.export.nets import DigitsCNN

    torch.manual_seed(_SEED)
    model = DigitsCNN()
    path = cache_dir() / f"digits-cnn-v{CACHE_VERSION}.pt"
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    _train(model, load_data())
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = path.with_suffix(".partial")
    torch.save(model.state_dict(), staged)
    os.replace(staged, path)
    return model.eval()


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(logits, axis=1) == labels))
