"""Whether a model has attention: what static int8's `auto` scheme asks before choosing its form."""

from __future__ import annotations

import onnx_ir as ir

from graphopt.passes.match import MS_DOMAIN, constant_tensor

ATTENTION_DEPTH = 4  # how far back from a Softmax to look for the scores' MatMul
SCORE_OPS = ("Add", "Sub", "Mul", "Div", "Where", "Cast", "Reshape", "Transpose", "Unsqueeze", "Squeeze")
FUSED = ("Attention", "MultiHeadAttention", "QAttention")


def has_attention(model: ir.Model) -> bool:
    """A fused attention node, or a Softmax reading (through at most ATTENTION_DEPTH elementwise or
    layout ops: scaling, masking) a MatMul of two activations."""
    for node in model.graph:
        if node.domain == MS_DOMAIN and node.op_type in FUSED:
            return True
        if node.op_type != "Softmax" or node.domain not in ("", "ai.onnx"):
            continue
        frontier = [node.inputs[0]]
        for _ in range(ATTENTION_DEPTH):
            producers = [value.producer() for value in frontier if value is not None and value.producer() is not None]
            if any(producer.op_type in ("MatMul", "Einsum") and
                   all(constant_tensor(value) is None for value in producer.inputs) for producer in producers):
                return True
            frontier = [value for producer in producers if producer.op_type in SCORE_OPS for value in producer.inputs]
    return False
