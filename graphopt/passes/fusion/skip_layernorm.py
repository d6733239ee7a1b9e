"""The residual Add feeding a LayerNormalization: SkipLayerNormalization, or a Sum ONNX Runtime leaves alone.

fuse_skip_layernorm (ort, by request):
    y = LayerNorm(a + b [+ bias]) over the last axis  →  com.microsoft.SkipLayerNormalization(a, b, γ, β, bias)
residual_sum (both targets, in the presets):
    y = LayerNorm(a + b [+ bias])  →  LayerNorm(Sum(a, b [, bias]))
ONNX Runtime fuses Add + LayerNormalization into SkipLayerNormalization at load by itself, and
its CPU kernel is slower than Sum + LayerNormalization (residual_sum gives the measurements).
Sum computes the same sum and no ORT fusion matches it.

The sum stays available (output 3) when the residual path reads it too, as pre-LayerNorm
transformers (GPT-2) do. ONNX Runtime's kernel wants input and skip of one shape [B, S, D]:
the fusion proves it from the two operands' dims (equal numbers or the same named symbol),
naming anonymous dims first from what the ops between prove (graphopt.dims), and refuses,
saying so, when it cannot (a position embedding of batch 1, say).
"""

from __future__ import annotations

import onnx_ir as ir

from graphopt import dims
from graphopt.passes.match import MS_DOMAIN, anchors, fresh_node_name, in_graph, infer_types, operands, vector
from graphopt.passes.registry import Pass, register


def _same_shape(first: ir.Value, second: ir.Value) -> bool:
    """Provably equal 3-D shapes."""
    return first.shape is not None and len(first.shape) == 3 and dims.provably_equal(first, second)


def _split_bias(value: ir.Value, width: int, graph: ir.Graph) -> tuple[ir.Value, ir.Value | None, ir.Node | None]:
    """(h, bias, Add) when `value` = Add(h, bias) with a [width] constant bias used only here."""
    add = value.producer()
    pair = operands(add, "Add")
    if pair is None or value.is_graph_output() or len(value.uses()) != 1 or not in_graph(graph, add):
        return value, None, None
    for h, bias in (pair, pair[::-1]):
        values = vector(bias)
        if values is not None and values.shape == (width,) and h.const_value is None:
            return h, bias, add
    return value, None, None


def _residual_add(graph: ir.Graph, layernorm: ir.Node) -> tuple[ir.Node, tuple[ir.Value, ir.Value]] | None:
    """The Add of two computed values (not a constant bias) that feeds `layernorm`, in its graph."""
    total = layernorm.inputs[0]
    add = total.producer() if total is not None else None
    pair = operands(add, "Add")
    if pair is None or any(value.const_value is not None for value in pair) or not in_graph(graph, add):
        return None
    return add, pair


def _anonymous(value: ir.Value) -> bool:
    """Whether a value's shape is unknown or has a dim with neither a size nor a name."""
    return value.shape is None or any(isinstance(dim, ir.SymbolicDim) and dim.value is None
                                      for dim in value.shape.dims)


@register("fuse_skip_layernorm", targets=("ort",))
class FuseSkipLayerNorm(Pass):
    """Fuse a residual Add (+ bias) and LayerNormalization into com.microsoft SkipLayerNormalization.

    Not in the presets: ONNX Runtime's own SkipLayerNormalization CPU kernel is slower than Sum +
    LayerNormalization (residual_sum's measurements), so the presets run residual_sum instead, which
    no ORT fusion matches; run this pass by name (a pass list or recipe). Anonymous dims are named
    without ever assuming two symbols equal, since either may be 1; when input and skip still cannot
    be proven the same [B, S, D] shape, the reason names both shapes. Also refused with the reason:
    a sum that is not float32, a LayerNormalization not over a last axis of known size, γ or β that
    are not constant [D] vectors, a stash_type other than float32, its mean or inverse standard
    deviation outputs read. Validated on exports: MiniLM 12 (dynamo and torchscript), BERT-base 24,
    ViT-base 24, GPT-2 24 (dynamo and torchscript).
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        infer_types(self, model)
        self._invented: dict[ir.Graph, set[str]] | None = None
        fused = 0
        for graph, node in anchors(model, "LayerNormalization"):
            refusal = self._fuse(model, graph, node)
            if refusal is None:
                fused += 1
            elif refusal:
                self.skip(f"LayerNormalization {node.name!r} not fused with its residual Add: {refusal}")
        for graph, invented in (self._invented or {}).items():
            dims.forget_dims(graph, invented)
        if fused:
            self.changed(f"{fused} SkipLayerNormalization")
        return ir.passes.PassResult(model, modified=bool(fused))

    def _fuse(self, model: ir.Model, graph: ir.Graph, layernorm: ir.Node) -> str | None:
        """None when fused, a reason when refused, "" when this LayerNorm has no residual Add."""
        residual = _residual_add(graph, layernorm)
        if residual is None:
            return ""
        add, pair = residual
        total = add.outputs[0]
        if total.dtype != ir.DataType.FLOAT:
            return f"the sum is {total.dtype}; ONNX Runtime's SkipLayerNormalization kernel is float32"
        scale = layernorm.inputs[1] if len(layernorm.inputs) > 1 else None
        beta = layernorm.inputs[2] if len(layernorm.inputs) > 2 else None
        width = total.shape.dims[-1] if total.shape is not None and len(total.shape) else None
        axis = layernorm.attributes.get_int("axis", -1)
        if not isinstance(width, int) or axis not in (-1, len(total.shape) - 1):
            return "it does not normalize over a last axis of known size"
        if any(value is not None and (vector(value) is None or vector(value).shape != (width,))
               for value in (scale, beta)):
            return f"γ and β are not constant [{width}] vectors"
        if layernorm.attributes.get_int("stash_type", 1) != 1:
            return "stash_type is not float32"
        if any(output.uses() or output.is_graph_output() for output in layernorm.outputs[1:]):
            return "its mean or inverse standard deviation outputs are used"
        first, bias, bias_add = _split_bias(pair[0], width, graph)
        second = pair[1]
        if bias is None:
            second, bias, bias_add = _split_bias(pair[1], width, graph)
            first = pair[0]
        if not _same_shape(first, second) and (_anonymous(first) or _anonymous(second)):
            self._name_dims(model)
        if not _same_shape(first, second):
            return (f"the residual operands' shapes {dims.shape_text(first.shape)} and {dims.shape_text(second.shape)} are not "
                    "provably equal")
        if first.shape.dims[-1] != width:
            return f"the residual operands' last dim is {dims.shape_text(first.shape)}, γ and β are [{width}]"
        self._replace(model, graph, layernorm, add, bias_add, [first, second, scale, beta, bias])
        return None

    def _name_dims(self, model: ir.Model) -> None:
        """Name anonymous dims from what the ops prove, once per run, when a proof first needs it."""
        if self._invented is None:
            self._invented = {graph: dims.name_dims(graph) for graph in model.graphs()}

    def _replace(self, model: ir.Model, graph: ir.Graph, layernorm: ir.Node, add: ir.Node,
                 bias_add: ir.Node | None, inputs: list[ir.Value | None]) -> None:
        total = add.outputs[0]
        keeps_sum = total.is_graph_output() or any(use.node is not layernorm for use in total.uses())
        while inputs and inputs[-1] is None:
            inputs.pop()
        epsilon = layernorm.attributes.get_float("epsilon", 1e-5)
        node = ir.Node(MS_DOMAIN, "SkipLayerNormalization", inputs, [ir.AttrFloat32("epsilon", epsilon)],
                       num_outputs=4 if keeps_sum else 1,
                       name=fresh_node_name(graph, f"{layernorm.name or 'layernorm'}/SkipLayerNormalization"))
        model.opset_imports.setdefault(MS_DOMAIN, 1)
        old_values, new_values = [layernorm.outputs[0]], [node.outputs[0]]
        if keeps_sum:
            old_values.append(total)
            new_values.append(node.outputs[3])
        removed = [node_ for node_ in (bias_add, add, layernorm) if node_ is not None]
        # Right after the Add: readers of the sum may come before the LayerNorm in the graph.
        ir.convenience.replace_nodes_and_values(graph, add, removed, [node], old_values, new_values)


@register("residual_sum", min_opset=8)
class ResidualSum(Pass):
    """Write the residual Add (+ bias) before a LayerNormalization as Sum, which ONNX Runtime's slower SkipLayerNormalization fusion does not match.

    Both targets, in O2/O3. The Add of two computed values feeding a LayerNormalization becomes Sum;
    a constant [D] bias Add in front of either operand, read only there, is absorbed as Sum's third
    input. ONNX Runtime's SkipLayerNormalization CPU kernel, which it would otherwise fuse the Add
    and LayerNormalization into at load, runs 3-4x slower than Sum + LayerNormalization (onnxruntime
    1.32, 2 threads: 154 vs 50 µs at [1, 128, 384], 1193 vs 316 µs at [1, 512, 768]). MiniLM at seq
    128 (ORT profiler, `--target ort`, measured on 2026-11-24 when the pass landed, before int8
    attention became QAttention): float O3 15.3 → 13.7 ms, int8 9.7 → 8.3 ms. Measured on the CPU
    EP only.
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        infer_types(self, model)
        rewritten = 0
        for graph, node in anchors(model, "LayerNormalization"):
            residual = _residual_add(graph, node)
            if residual is None:
                continue
            add, (first, second) = residual
            width = first.shape.dims[-1] if first.shape is not None and len(first.shape) else None
            inputs, removed = [first, second], [add]
            if isinstance(width, int):
                for index, value in enumerate(inputs):
                    h, bias, bias_add = _split_bias(value, width, graph)
                    if bias is not None:
                        inputs[index] = h
                        inputs.append(bias)
                        removed.insert(0, bias_add)
                        break
            total = ir.Node("", "Sum", inputs, name=fresh_node_name(graph, f"{add.name or 'add'}/Sum"))
            total.outputs[0].name = add.outputs[0].name
            total.outputs[0].type, total.outputs[0].shape = add.outputs[0].type, add.outputs[0].shape
            ir.convenience.replace_nodes_and_values(graph, add, removed, [total], [add.outputs[0]],
                                                    [total.outputs[0]])
            rewritten += 1
        if rewritten:
            self.changed(f"{rewritten} residual Add → Sum before LayerNormalization")
        return ir.passes.PassResult(model, modified=bool(rewritten))
