"""CNN fusions: what the exporters leave around convolutions and linear layers becomes one node.

fuse_pad: a constant-mode Pad over spatial axes only, read only by a Conv, AveragePool or
MaxPool, becomes that node's own pads when it pads with what the node's padding reads as (zeros
for Conv and AveragePool, which then counts them; -inf for MaxPool): HF MobileNetV2's TF-style
padding, ResNet's explicit pooling pads.
fuse_conv_activation (ort): Conv [+ a residual Add of the same shape] + Relu / Clip /
LeakyRelu / Sigmoid / Tanh / HardSigmoid becomes com.microsoft.FusedConv, whose kernel applies
the activation (and adds the residual, input Z) while the output is in cache.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from graphopt import dims
from graphopt.passes.match import (
    MS_DOMAIN,
    anchors,
    constant_array,
    fresh_node_name,
    in_graph,
    infer_types,
    is_op,
    only_consumer,
    operands,
)
from graphopt.passes.registry import Pass, register



@register("fuse_pad")
class FusePad(Pass):
    """Fold a constant Pad over spatial axes into the Conv, AveragePool or MaxPool that reads it.

    Refused with the reason: reflect, edge or wrap modes, pads or a pad value that are not constant
    (or a Pad naming its axes), another pad value, padding of the batch or channel axis, negative
    pads (crops), a node with auto_pad, ceil_mode pooling (its windows may overhang the padding),
    an AveragePool whose own pads are not counted (count_include_pad 0). An AveragePool without pads
    of its own gets count_include_pad 1.
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        fused = sum(self._fuse(graph, node) for graph, node in anchors(model, "Conv", "AveragePool", "MaxPool"))
        if fused:
            self.changed(f"{fused} Pad into Conv/pooling")
        return ir.passes.PassResult(model, modified=bool(fused))

    def _fuse(self, graph: ir.Graph, node: ir.Node) -> bool:
        pad = node.inputs[0].producer() if node.inputs and node.inputs[0] is not None else None
        if not is_op(pad, "Pad") or only_consumer(pad.outputs[0]) is not node or not in_graph(graph, pad):
            return False
        refusal = self._refusal(pad, node)
        if refusal is not None:
            self.skip(f"Pad {pad.name!r} not folded into {node.op_type} {node.name!r}: {refusal}")
            return False
        pads, _ = _pad_constants(pad)
        rank = len(pads) // 2
        spatial = rank - 2
        current = np.array(node.attributes.get_ints("pads", [0] * (2 * spatial)))
        merged = current + np.concatenate([pads[2:rank], pads[rank + 2:]])
        node.attributes["pads"] = ir.AttrInt64s("pads", [int(item) for item in merged])
        if node.op_type == "AveragePool":
            node.attributes["count_include_pad"] = ir.AttrInt64("count_include_pad", 1)
        node.replace_input_with(0, pad.inputs[0])
        graph.remove(pad, safe=True)
        return True

    @staticmethod
    def _refusal(pad: ir.Node, node: ir.Node) -> str | None:
        if pad.attributes.get_string("mode", "constant") != "constant":
            return "mode is not constant"
        pads, value = _pad_constants(pad)
        if pads is None or value is None or value.size != 1:
            return "pads or pad value not constant, or it names its axes"
        value = float(value.reshape(-1)[0])
        # What the node's own padding reads as: Conv and (counted) AveragePool zeros, MaxPool -inf.
        wanted = -np.inf if node.op_type == "MaxPool" else 0.0
        if value != wanted:
            return f"it pads with {value}, not the {wanted} that {node.op_type}'s own padding reads as"
        rank = len(pads) // 2
        if rank < 3 or pads[[0, 1, rank, rank + 1]].any() or (pads < 0).any():
            return "it pads the batch or channel axis, or crops"
        if node.attributes.get_string("auto_pad", "NOTSET") != "NOTSET":
            return f"the {node.op_type} uses auto_pad"
        if node.op_type != "Conv" and node.attributes.get_int("ceil_mode", 0):
            return "ceil_mode windows may overhang the padding"
        if node.op_type == "AveragePool" and not node.attributes.get_int("count_include_pad", 0) \
                and any(node.attributes.get_ints("pads", [])):
            return "the AveragePool's own padding is not counted, the Pad's zeros are"
        return None


def _pad_constants(pad: ir.Node) -> tuple[np.ndarray | None, np.ndarray | None]:
    """A Pad's pads and pad value when both are constants (None when it names its axes)."""
    if "pads" in pad.attributes:  # opset < 11
        return np.array(pad.attributes.get_ints("pads")), np.array(pad.attributes.get_float("value", 0.0))
    if len(pad.inputs) > 3 and pad.inputs[3] is not None:
        return None, None
    pads = constant_array(pad.inputs[1] if len(pad.inputs) > 1 else None)
    value = constant_array(pad.inputs[2]) if len(pad.inputs) > 2 and pad.inputs[2] is not None else np.array(0.0)
    return pads, value


# Activations FusedConv applies, with the parameters it takes (in its activation_params order).
def _activation(node: ir.Node) -> tuple[str, list[float]] | None:
    if is_op(node, "Relu", "Sigmoid", "Tanh"):
        return node.op_type, []
    if is_op(node, "LeakyRelu"):
        return "LeakyRelu", [node.attributes.get_float("alpha", 0.01)]
    if is_op(node, "HardSigmoid"):
        return "HardSigmoid", [node.attributes.get_float("alpha", 0.2), node.attributes.get_float("beta", 0.5)]
    if is_op(node, "Clip"):
        if "min" in node.attributes or "max" in node.attributes:  # opset < 11
            return "Clip", [node.attributes.get_float("min", float(np.finfo(np.float32).min)),
                            node.attributes.get_float("max", float(np.finfo(np.float32).max))]
        bounds = [constant_array(value) if value is not None else None for value in node.inputs[1:3]]
        if any(value is not None and constant_array(value) is None for value in node.inputs[1:3]):
            return None
        low = float(bounds[0]) if len(bounds) > 0 and bounds[0] is not None else float(np.finfo(np.float32).min)
        high = float(bounds[1]) if len(bounds) > 1 and bounds[1] is not None else float(np.finfo(np.float32).max)
        return "Clip", [low, high]
    return None


@register("fuse_conv_activation", targets=("ort",))
class FuseConvActivation(Pass):
    """Fuse Conv [+ residual Add] + Relu/Clip/LeakyRelu/Sigmoid/Tanh/HardSigmoid into com.microsoft FusedConv.

    Only float32 (the CPU kernel). The residual's other operand must be provably of the Conv
    output's shape; each intermediate must be read only by the next node; Clip needs constant
    bounds. ResNet-18: 17 FusedConv, 49 → 24 nodes.
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        infer_types(self, model)
        with dims.named(model):
            fused = sum(self._fuse(model, graph, node) for graph, node in anchors(model, "Conv"))
        if fused:
            self.changed(f"{fused} FusedConv")
        return ir.passes.PassResult(model, modified=bool(fused))

    def _fuse(self, model: ir.Model, graph: ir.Graph, conv: ir.Node) -> bool:
        out = conv.outputs[0]
        if out.dtype != ir.DataType.FLOAT:
            return False  # the CPU kernel is float32
        user = only_consumer(out)
        residual, add = None, None
        pair = operands(user, "Add")
        if pair is not None and in_graph(graph, user):
            other = pair[1] if pair[0] is out else pair[0]
            if other is not out and dims.provably_equal(other, out) and only_consumer(user.outputs[0]) is not None:
                residual, add = other, user
                user = only_consumer(user.outputs[0])
        activation = _activation(user) if in_graph(graph, user) else None
        if activation is None:
            return False
        kind, params = activation
        attributes = [attr for attr in conv.attributes.values()]
        attributes.append(ir.AttrString("activation", kind))
        if params:
            attributes.append(ir.AttrFloat32s("activation_params", params))
        inputs = list(conv.inputs) + [None] * (3 - len(conv.inputs))
        if residual is not None:
            inputs.append(residual)
        while inputs[-1] is None:
            inputs.pop()
        fused = ir.Node(MS_DOMAIN, "FusedConv", inputs, attributes,
                        name=fresh_node_name(graph, f"{conv.name or 'conv'}/FusedConv"))
        model.opset_imports.setdefault(MS_DOMAIN, 1)
        removed = [node for node in (conv, add, user) if node is not None]
        ir.convenience.replace_nodes_and_values(graph, user, removed, [fused], [user.outputs[0]], [fused.outputs[0]])
        return True

