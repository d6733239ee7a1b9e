"""Attention: ONNX's Attention (opset 23) and ONNX Runtime's com.microsoft Attention (packed QKV
weights) and MultiHeadAttention, as graphopt's fusion and ONNX Runtime's transformers optimizer write
them."""

from __future__ import annotations

import math

import torch

from graphopt.train.ops import MICROSOFT, Node, op


def _heads(x, count: int):
    """(B, S, N·D) → (B, N, S, D)."""
    batch, length, hidden = x.shape
    return x.reshape(batch, length, count, hidden // count).transpose(1, 2)


def _merge(x):
    """(B, N, S, D) → (B, S, N·D)."""
    batch, heads, length, size = x.shape
    return x.transpose(1, 2).reshape(batch, length, heads * size)


def _attend(q, k, v, scale: float | None, bias=None, causal: bool = False):
    scores = torch.matmul(q, k.transpose(-1, -2)) * (1 / math.sqrt(q.shape[-1]) if scale is None else scale)
    if bias is not None:
        scores = scores + bias
    if causal:
        length, total = scores.shape[-2:]
        allowed = torch.ones(length, total, dtype=torch.bool).tril(total - length)
        scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.matmul(torch.softmax(scores, -1), v)


def _key_mask(node: Node, mask, batch: int, length: int, total: int):
    """com.microsoft's mask_index / key_padding_mask as an additive bias, for the forms the exporters write:
    (B, T) of 1 (attend) and 0, (B, S, T), or (B,) lengths of the unpadded keys."""
    if mask is None:
        return None
    filler = node.get("mask_filter_value", -10000.0)
    if mask.dim() == 1 and mask.shape[0] == batch:
        mask = (torch.arange(total).unsqueeze(0) < mask.unsqueeze(1)).to(torch.int32)
    if mask.dim() == 2:
        return ((1 - mask.float()) * filler)[:, None, None, :]
    if mask.dim() == 3:
        return ((1 - mask.float()) * filler)[:, None, :, :]
    raise node.unsupported(f"a mask_index of shape {list(mask.shape)}")


def _bias(mask, attention_bias):
    if mask is None:
        return attention_bias
    return mask if attention_bias is None else mask + attention_bias


@op("Attention", domain=MICROSOFT)
def packed_attention(node: Node, x, weight, bias=None, mask=None, past=None, attention_bias=None, *rest):
    if past is not None or node.get("do_rotary", 0) or node.get("past_present_share_buffer", 0):
        raise node.unsupported("a past state or rotary embedding")
    count = node.get("num_heads")
    qkv = torch.matmul(x, weight) if bias is None else torch.matmul(x, weight) + bias
    sizes = node.get("qkv_hidden_sizes") or [weight.shape[1] // 3] * 3
    q, k, v = (_heads(part, count) for part in torch.split(qkv, list(sizes), -1))
    batch, _, length, _ = q.shape
    extra = _key_mask(node, mask, batch, length, k.shape[2])
    out = _attend(q, k, v, node.get("scale"), _bias(extra, attention_bias), bool(node.get("unidirectional", 0)))
    return _merge(out)


@op("MultiHeadAttention", domain=MICROSOFT)
def multi_head_attention(node: Node, query, key=None, value=None, bias=None, key_padding_mask=None,
                         attention_bias=None, *rest):
    if key is None or value is None or query.dim() != 3 or key.dim() != 3 or any(part is not None for part in rest):
        raise node.unsupported("packed QKV, 4-d keys or a past state")
    if bias is not None:
        hidden = query.shape[-1]
        query, key, value = query + bias[:hidden], key + bias[hidden:2 * hidden], value + bias[2 * hidden:]
    count = node.get("num_heads")
    q, k, v = _heads(query, count), _heads(key, count), _heads(value, count)
    extra = _key_mask(node, key_padding_mask, q.shape[0], q.shape[2], k.shape[2])
    out = _attend(q, k, v, node.get("scale"), _bias(extra, attention_bias), bool(node.get("unidirectional", 0)))
    return _merge(out)


@op("Attention")
def attention(node: Node, q, k, v, mask=None, past_key=None, past_value=None, *rest):
    """ONNX's Attention (opset 23): 3-d inputs with q_num_heads/kv_num_heads, or 4-d (B, N, S, D); a boolean
    mask (True attends) or an additive one; grouped keys and values repeated over the query heads."""
    if past_key is not None or past_value is not None or node.outputs > 1 or node.get("softcap", 0.0):
        raise node.unsupported("a past state, softcap or the extra outputs")
    three = q.dim() == 3
    if three:
        q, k, v = _heads(q, node.get("q_num_heads")), _heads(k, node.get("kv_num_heads")), _heads(v, node.get(
            "kv_num_heads"))
    if k.shape[1] != q.shape[1]:
        k = k.repeat_interleave(q.shape[1] // k.shape[1], 1)
        v = v.repeat_interleave(q.shape[1] // v.shape[1], 1)
    if mask is not None and mask.dtype == torch.bool:
        mask = torch.zeros(mask.shape, dtype=q.dtype).masked_fill(~mask, float("-inf"))
    out = _attend(q, k, v, node.get("scale"), mask, bool(node.get("is_causal", 0)))
    return _merge(out) if three else out
