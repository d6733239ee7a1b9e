"""Finding scaled dot-product attention in the forms the exporters write it, anchored on Softmax.

    scores = (Q·a) @ (Kᵀ·b) [· c | / c] [+ mask];  p = Softmax(scores, -1) [then Where(IsNaN(p), 0, p)]
    out = p @ V → Transpose(0, 2, 1, 3) → Reshape([B, S, D] or any target without a 0 past its second entry)

with Q, V = Transpose(Reshape(x₃, [B, S, H, Dh]), (0, 2, 1, 3)) of 3-D projections and Kᵀ written
as Transpose(Reshape(k₃), (0, 2, 3, 1)) (TorchScript), Transpose(K, (0, 1, 3, 2)), or the dynamo
exporter's Reshape → Transpose(0, 2, 1) → Reshape over [B·H, S, Dh]. TorchScript's no-op 4-D
Reshape after p @ V is looked through. Every shape is proven from dims (graphopt.dims names
them first): a head split whose batch and sequence dims are not the projection's, a mask that
does not broadcast to [B, H, S, Skv] exactly, a Kᵀ whose merged dims are not (B, H), are refused.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from graphopt import dims
from graphopt.passes.match import is_float, is_op, only_consumer, operands, other_input, scalar


class Refused(Exception):
    """An attention-shaped subgraph that cannot be fused; the message says which step failed."""


@dataclasses.dataclass
class Attention:
    """What a fused attention node needs, and the value it replaces."""

    q: ir.Value          # [B, S, D] projections, D = heads · head_size
    k: ir.Value          # [B, Skv, D]
    v: ir.Value          # [B, Skv, D]
    heads: int
    head_size: int
    scale: float
    mask: ir.Value | None   # additive, broadcasting to [B, H, S, Skv] with dim 2 == S or 1
    mask_dims: list | None
    nan_guard: bool         # the export zeroes NaN probabilities (fully masked rows)
    output: ir.Value        # the value the fused node's [B, S, D] output replaces
    merge: ir.Node           # the Reshape merging the heads: the fused node goes right before it


def _scaled(value: ir.Value) -> tuple[ir.Value, float]:
    """Peel Mul/Div by single-element constants off `value`: (x, factor)."""
    factor = 1.0
    while True:
        producer = value.producer()
        pair = operands(producer, "Mul") or operands(producer, "Div")
        if pair is None or only_consumer(value) is None:
            return value, factor
        first, second = pair
        if producer.op_type == "Div" and scalar(second, first) is not None and scalar(second, first) != 0:
            value, factor = first, factor / float(scalar(second, first))
        elif producer.op_type == "Mul" and scalar(second, first) is not None:
            value, factor = first, factor * float(scalar(second, first))
        elif producer.op_type == "Mul" and scalar(first, second) is not None:
            value, factor = second, factor * float(scalar(first, second))
        else:
            return value, factor


def _perm(node: ir.Node | None) -> tuple[int, ...] | None:
    if not is_op(node, "Transpose") or "perm" not in node.attributes:
        return None
    return tuple(node.attributes.get_ints("perm"))


def _heads(value: ir.Value, role: str, perm: tuple[int, ...]) -> tuple[ir.Value, list]:
    """x₃ for `value` = Transpose(Reshape(x₃, [B, S, H, Dh]), perm): (x₃, [B, S, H, Dh])."""
    transpose = value.producer()
    if is_op(transpose, "Mul", "Div"):
        raise Refused(f"{role} is scaled by {transpose.op_type} {transpose.name!r}, which is not a single constant")
    if _perm(transpose) != perm:
        raise Refused(f"{role} is not a Transpose{perm} of the head split")
    reshape = transpose.inputs[0].producer()
    if not is_op(reshape, "Reshape"):
        raise Refused(f"{role}'s head split is not a Reshape")
    x3 = reshape.inputs[0]
    outer, split = dims.dims_of(x3), dims.dims_of(reshape.outputs[0])
    if outer is None or split is None or len(outer) != 3 or len(split) != 4:
        raise Refused(f"{role}'s head split is not a proven [B, S, D] → [B, S, H, Dh] Reshape "
                      f"({dims.shape_text(x3.shape)} → {dims.shape_text(reshape.outputs[0].shape)})")
    heads, size = split[2], split[3]
    if outer[:2] != split[:2] or None in outer[:2] or not isinstance(heads, int) or not isinstance(size, int) \
            or outer[2] != heads * size:
        raise Refused(f"{role}'s head split {dims.shape_text(x3.shape)} → {dims.shape_text(reshape.outputs[0].shape)} "
                      "does not provably keep the batch and sequence dims and split the last into heads")
    return x3, split


def _key(value: ir.Value) -> tuple[ir.Value, list]:
    """k₃ and its head split for a Kᵀ [B, H, Dh, Skv] in any of the exporters' three forms."""
    producer = value.producer()
    if _perm(producer) == (0, 2, 3, 1):
        return _heads(producer.outputs[0], "Kᵀ", (0, 2, 3, 1))
    if _perm(producer) == (0, 1, 3, 2):
        return _heads(producer.inputs[0], "K", (0, 2, 1, 3))
    if is_op(producer, "Reshape"):
        transposed = producer.inputs[0].producer()
        merged = transposed.inputs[0].producer() if _perm(transposed) == (0, 2, 1) else None
        if is_op(merged, "Reshape"):
            key = merged.inputs[0]
            four = dims.dims_of(key)
            first = dims.shape_contents(merged.inputs[1])
            second = dims.shape_contents(producer.inputs[1])
            if four is not None and len(four) == 4 and None not in four and first == [-1, four[2], four[3]] \
                    and second == [four[0], four[1], four[3], four[2]]:
                return _heads(key, "K", (0, 2, 1, 3))
            raise Refused("Kᵀ is a Reshape → Transpose → Reshape whose targets do not provably merge and "
                          f"restore (B, H) of K {dims.shape_text(key.shape)}")
    raise Refused("Kᵀ is not a transposed head split (Transpose (0,2,3,1), (0,1,3,2) or Reshape-Transpose-Reshape)")


def finite(value: ir.Value, depth: int = 8) -> bool:
    """Whether a mask is provably finite: finite constants, selected by Where, reshaped or cast."""
    tensor = ir.convenience.get_const_tensor(value)
    if tensor is not None:
        array = tensor.numpy()
        return array.dtype.kind != "f" or bool(np.isfinite(array).all())
    producer = value.producer()
    if depth == 0 or producer is None or producer.domain not in ("", "ai.onnx"):
        return False
    if producer.op_type == "Where":
        return all(finite(branch, depth - 1) for branch in producer.inputs[1:])
    if producer.op_type in ("Expand", "Reshape", "Unsqueeze", "Squeeze", "Cast", "Identity", "Transpose"):
        return finite(producer.inputs[0], depth - 1)
    return False


def _probabilities(softmax: ir.Node) -> tuple[ir.Value, bool]:
    """Softmax's output, or the Where(IsNaN(p), 0, p) after it: (value read by p @ V, guarded)."""
    p = softmax.outputs[0]
    users = {use.node.op_type for use in p.uses()}
    if p.is_graph_output() and users & {"IsNaN", "MatMul"}:
        raise Refused("the attention probabilities are also read elsewhere (returned as attention weights?)")
    if users != {"IsNaN", "Where"} or len(p.uses()) != 2:
        return p, False
    isnan = next(use.node for use in p.uses() if use.node.op_type == "IsNaN")
    where = only_consumer(isnan.outputs[0])
    if not is_op(where, "Where") or where.inputs[0] is not isnan.outputs[0] or where.inputs[2] is not p \
            or scalar(where.inputs[1], p) != 0:
        raise Refused("the probabilities' NaN guard is not Where(IsNaN(p), 0, p)")
    return where.outputs[0], True


def _data_consumer(value: ir.Value) -> ir.Node | None:
    """The one node reading `value`'s elements; others may read only its shape (TorchScript builds
    the no-op Reshape's target from Shape(p @ V)), which the fused node leaves to dead-code removal."""
    readers = [use.node for use in value.uses() if not is_op(use.node, "Shape")]
    if len(readers) != 1 or value.is_graph_output() or sum(use.node is readers[0] for use in value.uses()) != 1:
        return None
    return readers[0]


def _tail(out4: ir.Value) -> tuple[ir.Value, ir.Node]:
    """The Reshape after p @ V → Transpose(0, 2, 1, 3), looking through a no-op 4-D Reshape."""
    user = _data_consumer(out4)
    if is_op(user, "Reshape") and dims.dims_of(user.outputs[0]) == dims.dims_of(out4) \
            and None not in (dims.dims_of(out4) or [None]):
        user = _data_consumer(user.outputs[0])
    if _perm(user) != (0, 2, 1, 3):
        raise Refused("p @ V is not followed by Transpose (0, 2, 1, 3) (or is read elsewhere)")
    reshape = _data_consumer(user.outputs[0])
    if not is_op(reshape, "Reshape"):
        raise Refused("the transposed heads are not merged by a Reshape (or are read elsewhere)")
    return user.outputs[0], reshape


def match(softmax: ir.Node) -> Attention | None:
    """The attention around `softmax`; None when it is not attention-shaped at all."""
    axis = softmax.attributes.get_int("axis", -1)
    scores = softmax.inputs[0]
    rank = len(scores.shape) if scores is not None and scores.shape is not None else None
    if rank != 4 or axis not in (-1, 3) or not is_float(scores):
        return None
    p, guarded = _probabilities(softmax)
    pv = only_consumer(p)
    if pv is None and any(is_op(use.node, "MatMul") for use in p.uses()):
        raise Refused("the attention probabilities are also read elsewhere (returned as attention weights?)")
    if not is_op(pv, "MatMul") or pv.inputs[0] is not p:
        return None
    mask = None
    summed = operands(scores.producer(), "Add")
    if summed is not None:
        product = [value for value in summed if is_op(_scaled(value)[0].producer(), "MatMul")]
        if not product or only_consumer(product[0]) is None:
            return None
        mask = other_input(scores.producer(), product[0])
        scores = product[0]
    if only_consumer(scores) is None:
        raise Refused("the attention scores are also read elsewhere")
    scores, post_scale = _scaled(scores)
    qk = scores.producer()
    if not is_op(qk, "MatMul"):
        return None
    q4, q_scale = _scaled(qk.inputs[0])
    kt, k_scale = _scaled(qk.inputs[1])
    q, q_split = _heads(q4, "Q", (0, 2, 1, 3))
    k, k_split = _key(kt)
    v, v_split = _heads(pv.inputs[1], "V", (0, 2, 1, 3))
    batch, seq, heads, head_size = q_split
    if k_split[0] != batch or v_split[0] != batch or k_split[1] != v_split[1] or k_split[2:] != [heads, head_size] \
            or v_split[2:] != [heads, head_size]:
        raise Refused(f"Q, K and V head splits {q_split}, {k_split}, {v_split} do not share batch, heads and "
                      "head size, or K and V differ in length")
    mask_dims = _check_mask(mask, scores.dtype, [batch, heads, seq, k_split[1]]) if mask is not None else None
    heads_out, reshape = _tail(pv.outputs[0])
    target = dims.shape_contents(reshape.inputs[1])
    merged = dims.dims_of(reshape.outputs[0])
    full = merged == [batch, seq, heads * head_size]
    allowzero = bool(reshape.attributes.get_int("allowzero", 0))
    if not full and (target is None or (not allowzero and 0 in target[2:])):
        raise Refused(f"the heads are merged to {dims.shape_text(reshape.outputs[0].shape)}, not provably "
                      "[B, S, D], by a target that may copy a head dim")
    if not full and len(heads_out.uses()) > 1:
        raise Refused(f"the heads are merged to {dims.shape_text(reshape.outputs[0].shape)}, not provably "
                      "[B, S, D], and their shape is read too (the unfused attention would stay alive)")
    scale = q_scale * k_scale * post_scale
    if scale == 0:  # the fused ops read a scale of 0 as "use 1/√Dh"
        raise Refused("the scores are scaled by 0")
    # Merged to [B, S, D]: the fused output replaces the merge; otherwise the merge reshapes it
    # as it reshaped the heads (same elements in the same order, no 0 copying a head dim).
    return Attention(q, k, v, heads, head_size, scale, mask, mask_dims, guarded,
                     reshape.outputs[0] if full else heads_out, reshape)


def _check_mask(mask: ir.Value, dtype: ir.DataType, scores: list) -> list:
    """The mask's dims when it provably broadcasts to exactly `scores` ([B, H, S, Skv])."""
    if mask.dtype != dtype:
        raise Refused(f"the mask is {mask.dtype}, not an additive bias of the scores' type {dtype}")
    mask_dims = dims.dims_of(mask)
    if mask_dims is None or len(mask_dims) > 4:
        raise Refused(f"the mask's shape {dims.shape_text(mask.shape)} is not known to be of rank 4 or less")
    mask_dims = [1] * (4 - len(mask_dims)) + mask_dims
    for position, (have, want) in enumerate(zip(mask_dims, scores)):
        if have is None or (have != want and have != 1) or (position == 3 and have != want):
            raise Refused(f"the mask's shape {dims.shape_text(mask.shape)} is not provably [B|1, H|1, S|1, Skv] "
                          f"for scores {scores}")
    return mask_dims
