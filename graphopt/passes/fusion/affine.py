"""fold_affine_into_linear: a constant per-channel Mul or Add after a linear layer becomes part
of the layer's weights and bias.

  Conv / ConvTranspose (group 1) → Mul(c)   W' = W · c per output channel, B' = B · c
  Conv / ConvTranspose (group 1) → Add(b)   B' = B + b
  Gemm → Mul(c)                             W' = W · c per column, C' = C · c
  Gemm → Add(b)                             C' = C + b / beta
  MatMul(x, W) [→ Add(bias)] → Mul(c)       W' = W · c per column, bias' = bias · c

(ConvNeXt's layer scale after its second linear, decomposed BatchNorms, normalisation folded
by hand.) c and b must broadcast over the output channel only: [C], [1, C, 1, 1], a scalar…
A constant that varies along another axis cannot live in the weights and is refused with the
reason. Exact up to float rounding: the product is reassociated, nothing is approximated.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from graphopt.passes.match import (
    anchors,
    constant_array,
    drop_unused_initializers,
    fresh_node_name,
    in_graph,
    infer_types,
    is_op,
    new_initializer,
    only_consumer,
    operands,
)
from graphopt.passes.registry import Pass, register



def _channel_vector(constant: np.ndarray, rank: int, axis: int, channels: int) -> np.ndarray | None:
    """`constant` as one value per output channel, when broadcasting it against an output of
    `rank` (channel at `axis`) varies along that axis only and keeps the output's shape."""
    if constant.ndim > rank:
        return None
    padded = constant.reshape((1,) * (rank - constant.ndim) + constant.shape)
    if any(size != 1 for index, size in enumerate(padded.shape) if index != axis % rank):
        return None
    if padded.shape[axis] not in (1, channels):
        return None
    return np.broadcast_to(padded.reshape(-1), (channels,))


class _Linear:
    """A linear node with constant weights: where its output channels live."""

    def __init__(self, node: ir.Node, weight: np.ndarray, weight_axis: int, out_axis: int, bias: ir.Value | None):
        self.node, self.weight, self.weight_axis, self.out_axis, self.bias = node, weight, weight_axis, out_axis, bias

    @property
    def channels(self) -> int:
        return self.weight.shape[self.weight_axis]

    def scaled_weight(self, scale: np.ndarray) -> np.ndarray:
        shape = [1] * self.weight.ndim
        shape[self.weight_axis] = -1
        return (self.weight * scale.reshape(shape)).astype(self.weight.dtype)


def _linear(node: ir.Node | None) -> _Linear | str | None:
    """The node as a _Linear, a reason it cannot take a fold, or None when it is not linear."""
    if is_op(node, "Conv", "ConvTranspose"):
        weight = constant_array(node.inputs[1])
        if weight is None:
            return f"{node.op_type} {node.name!r}'s weights are not constant"
        transposed = node.op_type == "ConvTranspose"
        if transposed and node.attributes.get_int("group", 1) != 1:
            return f"ConvTranspose {node.name!r} is grouped"
        bias = node.inputs[2] if len(node.inputs) > 2 else None
        return _Linear(node, weight, 1 if transposed else 0, 1, bias)
    if is_op(node, "Gemm"):
        weight = constant_array(node.inputs[1])
        if weight is None:
            return f"Gemm {node.name!r}'s weights are not constant"
        bias = node.inputs[2] if len(node.inputs) > 2 else None
        return _Linear(node, weight, 0 if node.attributes.get_int("transB", 0) else 1, -1, bias)
    if is_op(node, "MatMul"):
        weight = constant_array(node.inputs[1])
        if weight is None or weight.ndim != 2:
            return None  # activations times activations (attention scores): nothing to fold into
        return _Linear(node, weight, 1, -1, None)
    return None


@register("fold_affine_into_linear")
class FoldAffineIntoLinear(Pass):
    """Fold a constant per-channel Mul or Add after Conv, ConvTranspose, Gemm or MatMul into its weights and bias.

    Also refused with the reason: a Mul by zero in any channel (the weights would hide NaN and inf
    inputs), a grouped ConvTranspose, Conv/Gemm weights or a bias that are not constant. A constant
    Add right after a MatMul is its bias, left to the MatMul + Add fusions.
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        infer_types(self, model)
        folded = sum(self._fold(graph, node) for graph, node in anchors(model, "Mul", "Add"))
        if folded:
            ir.passes.common.RemoveUnusedNodesPass()(model)  # weights that were Constant nodes
            self.changed(f"{folded} Mul/Add into weights")
        return ir.passes.PassResult(model, modified=bool(folded))

    def _fold(self, graph: ir.Graph, node: ir.Node) -> bool:
        pair = operands(node, node.op_type)
        if pair is None:
            return False
        for value, other in (pair, pair[::-1]):
            constant = constant_array(other)
            if constant is None or value.producer() is None or only_consumer(value) is not node:
                continue
            chain = [value.producer()]
            if node.op_type == "Mul" and is_op(chain[0], "Add"):
                chain = self._matmul_bias(chain[0]) or chain
            linear = _linear(chain[0])
            if linear is None or not in_graph(graph, *chain):
                continue
            if isinstance(linear, str):
                self.skip(f"{node.op_type} {node.name!r} not folded: {linear}")
                return False
            if len(chain) == 1 and is_op(chain[0], "MatMul") and node.op_type == "Add":
                return False  # a bias: the MatMul + Add fusions own it
            return self._rewrite(graph, node, constant, linear, chain, value)
        return False

    @staticmethod
    def _matmul_bias(add: ir.Node) -> list[ir.Node] | None:
        """[MatMul, Add] for MatMul(x, W) + constant bias read only by the Mul."""
        pair = operands(add, "Add")
        for value, bias in (pair, pair[::-1]) if pair else ():
            if is_op(value.producer(), "MatMul") and only_consumer(value) is add and constant_array(bias) is not None:
                return [value.producer(), add]
        return None

    def _rewrite(self, graph: ir.Graph, node: ir.Node, constant: np.ndarray, linear: _Linear,
                 chain: list[ir.Node], out: ir.Value) -> bool:
        rank = len(out.shape) if out.shape is not None else None
        if rank is None or out.dtype is None or constant.dtype != out.dtype.numpy():
            return False
        where = f"{node.op_type} {node.name!r} not folded into {linear.node.op_type} {linear.node.name!r}"
        per_channel = _channel_vector(constant, rank, linear.out_axis, linear.channels)
        if per_channel is None:
            self.skip(f"{where}: its constant of shape {list(constant.shape)} is not one value per output channel")
            return False
        if node.op_type == "Mul" and not per_channel.all():
            self.skip(f"{where}: it multiplies by zero (the weights would hide NaN and inf inputs)")
            return False
        inputs = list(linear.node.inputs) + [None] * (3 - len(linear.node.inputs))
        # The bias to change: a separate Add's constant (MatMul + bias), else the node's own.
        bias_add = chain[1] if len(chain) > 1 else None
        bias_in = (bias_add.inputs[1] if bias_add.inputs[0] is linear.node.outputs[0] else bias_add.inputs[0]) \
            if bias_add is not None else inputs[2]
        bias = constant_array(bias_in) if bias_in is not None else None
        if bias_in is not None and bias is None:
            self.skip(f"{where}: the bias is not constant")
            return False
        attributes = list(linear.node.attributes.values())
        base = linear.node.name or linear.node.op_type.lower()
        if node.op_type == "Mul":
            inputs[1] = new_initializer(graph, linear.scaled_weight(per_channel), f"{inputs[1].name}_folded")
            new_bias = None if bias is None else self._channel_op(bias, per_channel, linear, np.multiply)
        else:
            shift = per_channel
            if is_op(linear.node, "Gemm") and bias is not None:
                beta = linear.node.attributes.get_float("beta", 1.0)
                if beta == 0.0:
                    return False
                shift = per_channel / np.asarray(beta, dtype=per_channel.dtype)
            elif is_op(linear.node, "Gemm"):
                attributes = [attr for attr in attributes if attr.name != "beta"]  # the new C enters at 1
            new_bias = shift.copy() if bias is None else self._channel_op(bias, shift, linear, np.add)
        if new_bias is not None:
            new_bias = new_initializer(graph, new_bias, f"{bias_in.name if bias_in is not None else base}_folded")
        if bias_add is None:
            inputs[2] = new_bias
        while inputs[-1] is None:
            inputs.pop()
        replacement = [ir.Node("", linear.node.op_type, inputs, attributes,
                               name=fresh_node_name(graph, f"{base}/folded"))]
        if bias_add is not None:
            replacement.append(ir.Node("", "Add", [replacement[0].outputs[0], new_bias],
                                       name=fresh_node_name(graph, f"{bias_add.name or 'add'}/folded")))
        replaced = [value for value in (linear.node.inputs[1], bias_in) if value is not None]
        ir.convenience.replace_nodes_and_values(graph, node, [*chain, node], replacement, [node.outputs[0]],
                                                [replacement[-1].outputs[0]])
        drop_unused_initializers(graph, replaced)
        return True

    @staticmethod
    def _channel_op(bias: np.ndarray, per_channel: np.ndarray, linear: _Linear, op) -> np.ndarray:
        """bias (a per-channel vector, or for Gemm's C anything it broadcasts from) op the channel values."""
        if bias.ndim <= 1 and bias.size in (1, linear.channels):
            return op(np.broadcast_to(bias.reshape(-1), per_channel.shape), per_channel).astype(bias.dtype)
        return op(bias, per_channel).astype(bias.dtype)  # Gemm's C of [M, N] or [1, N]: scaled along N
