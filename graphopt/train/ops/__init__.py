"""ONNX operators as differentiable torch code, for students given as ONNX models.

`OPS[(domain, op_type)]` is a function `(node, *inputs)` returning a tensor or a tuple of them
(`node` gives the attributes, the opset and how many outputs are wanted; an absent optional input is
None). Each op computes what ONNX Runtime computes for it (the round trip is checked against ORT
before any training), on any float dtype, with gradients where the math has them. An operator that is
not here, or an attribute combination that is not, raises `Unsupported` naming it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from graphopt.errors import InputError

MICROSOFT = "com.microsoft"
OPS: dict[tuple[str, str], Callable] = {}


class Unsupported(InputError):
    """An operator, or one of its attributes, that the trainable graph cannot compute."""


@dataclasses.dataclass
class Node:
    """What an op function reads: its attributes (Python values, tensors as numpy), the opset of its
    domain, how many outputs the graph wants, and a name for error messages."""

    op_type: str
    name: str
    attributes: dict[str, Any]
    opset: int
    outputs: int

    def get(self, key: str, default=None):
        return self.attributes.get(key, default)

    def unsupported(self, what: str) -> Unsupported:
        return Unsupported(f"node {self.name!r} ({self.op_type}): {what} cannot be made trainable")


def op(*names: str, domain: str = ""):
    def register(function: Callable) -> Callable:
        for name in names:
            OPS[(domain, name)] = function
        return function
    return register


def load_all() -> None:
    from graphopt.train.ops import (  # noqa: F401  (importing registers them)
        attention, elementwise, linear, microsoft, normalization, pooling, recurrent, tensors)
