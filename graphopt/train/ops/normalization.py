"""Normalizations: BatchNormalization (its running statistics frozen, as fine-tuning an inference
graph wants), LayerNormalization, InstanceNormalization, GroupNormalization."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from graphopt.train.ops import Node, op


@op("BatchNormalization")
def batch_norm(node: Node, x, scale, bias, mean, variance):
    if node.get("training_mode", 0) or node.outputs > 1:
        raise node.unsupported("training_mode=1")
    return F.batch_norm(x, mean, variance, scale, bias, training=False, eps=node.get("epsilon", 1e-5))


@op("LayerNormalization")
def layer_norm(node: Node, x, scale, bias=None):
    axis = node.get("axis", -1) % x.dim()
    epsilon = node.get("epsilon", 1e-5)
    shape = tuple(x.shape[axis:])
    if node.outputs == 1 and tuple(scale.shape) == shape and (bias is None or tuple(bias.shape) == shape):
        return F.layer_norm(x, shape, scale, bias, epsilon)
    dims = tuple(range(axis, x.dim()))
    mean = x.mean(dims, keepdim=True)
    inverse = torch.rsqrt((x - mean).pow(2).mean(dims, keepdim=True) + epsilon)
    result = (x - mean) * inverse * scale
    result = result if bias is None else result + bias
    return (result, mean, inverse)[:node.outputs] if node.outputs > 1 else result


@op("InstanceNormalization")
def instance_norm(node: Node, x, scale, bias):
    return F.instance_norm(x, weight=scale, bias=bias, eps=node.get("epsilon", 1e-5))


@op("GroupNormalization")
def group_norm(node: Node, x, scale, bias):
    groups, channels = node.get("num_groups"), x.shape[1]
    if scale.numel() != channels:  # opset 18: a scale and a bias per group
        scale, bias = scale.repeat_interleave(channels // groups), bias.repeat_interleave(channels // groups)
    return F.group_norm(x, groups, scale, bias, node.get("epsilon", 1e-5))
