"""A --student factory for `graphopt distill`: a CNN with a fifth of digits-cnn's parameters.

    graphopt distill --teacher digits/model.onnx --data digits/model.train.npz \
        --student examples/digits_student.py:build -o digits/student.onnx
"""

import torch


def build():
    """No arguments; returns the module and example inputs (as `graphopt export --module` takes)."""
    torch.manual_seed(0)
    layers = torch.nn
    module = layers.Sequential(
        layers.Conv2d(1, 8, 3, padding=1), layers.ReLU(), layers.Conv2d(8, 16, 3, padding=1), layers.ReLU(),
        layers.MaxPool2d(2), layers.Flatten(), layers.Linear(256, 24), layers.ReLU(), layers.Linear(24, 10))
    return module, (torch.zeros(2, 1, 8, 8),)
