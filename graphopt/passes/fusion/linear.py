"""Linear layers in the form each rank runs best: Gemm for 2-D, MatMul (+ bias Add) above.

fuse_matmul_add: MatMul of a 2-D input by a constant 2-D weight, plus a constant [N] bias,
becomes Gemm (one call for runtimes that do not fuse).
unflatten_gemm: Reshape(x, [-1, K]) → Gemm(W, b) → Reshape back to x's leading dims (torch's
Conv1D and addmm on 3-D activations: GPT-2 writes it for every linear layer) becomes
MatMul(x, W) + b over x itself; two Reshapes fewer per layer, and the bias Add is then free to
fuse into what follows (SkipLayerNormalization, FastGelu). Proven from dims: the flatten keeps
the last dim, the restore gives back exactly x's leading dims.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from graphopt import dims
from graphopt.passes.fusion._match import (
    anchors,
    fresh_node_name,
    fresh_value_name,
    in_graph,
    infer_types,
    is_op,
    only_consumer,
    operands,
    vector,
)
from graphopt.passes.registry import Pass, register


@register("fuse_matmul_add")
class FuseMatMulAdd(Pass):
    """Fuse a 2-D MatMul by a constant weight and its constant bias Add into Gemm."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        infer_types(self, model)
        fused = sum(self._fuse(graph, node) for graph, node in anchors(model, "MatMul"))
        if fused:
            self.changed(f"{fused} Gemm")
        return ir.passes.PassResult(model, modified=bool(fused))

    def _fuse(self, graph: ir.Graph, matmul: ir.Node) -> bool:
        a, b = matmul.inputs
        add = only_consumer(matmul.outputs[0])
        pair = operands(add, "Add")
        if pair is None or not in_graph(graph, add) or b.const_value is None or len(b.const_value.shape) != 2:
            return False
        bias = pair[1] if pair[0] is matmul.outputs[0] else pair[0]
        values = vector(bias)
        if values is None or values.shape != (b.const_value.shape[1],):
            return False
        if a.shape is None or len(a.shape) != 2 or a.dtype not in (ir.DataType.FLOAT, ir.DataType.DOUBLE,
                                                                   ir.DataType.FLOAT16):
            return False  # Gemm is 2-D only; a 3-D MatMul stays (ONNX Runtime runs it as one GEMM)
        gemm = ir.Node("", "Gemm", [a, b, bias], name=fresh_node_name(graph, f"{matmul.name or 'matmul'}/Gemm"))
        ir.convenience.replace_nodes_and_values(graph, add, [matmul, add], [gemm], [add.outputs[0]],
                                                [gemm.outputs[0]])
        return True


@register("unflatten_gemm")
class UnflattenGemm(Pass):
    """Turn Reshape to 2-D → Gemm → Reshape back into MatMul + bias Add on the N-D input."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        infer_types(self, model)
        with dims.named(model):
            rewritten = sum(self._rewrite(graph, node) for graph, node in anchors(model, "Gemm"))
        if rewritten:
            self.changed(f"{rewritten} Gemm as MatMul + Add")
        return ir.passes.PassResult(model, modified=bool(rewritten))

    def _rewrite(self, graph: ir.Graph, gemm: ir.Node) -> bool:
        flatten = gemm.inputs[0].producer()
        restore = only_consumer(gemm.outputs[0])
        if not is_op(flatten, "Reshape") or not is_op(restore, "Reshape") or not in_graph(graph, flatten, restore):
            return False
        if only_consumer(flatten.outputs[0]) is not gemm or gemm.inputs[1].const_value is None:
            return False
        attrs = gemm.attributes
        if attrs.get_int("transA", 0) or attrs.get_float("alpha", 1.0) != 1.0 or attrs.get_float("beta", 1.0) != 1.0:
            return False
        x = flatten.inputs[0]
        leading, restored = dims.dims_of(x), dims.dims_of(restore.outputs[0])
        weight = gemm.inputs[1].const_value.numpy()
        weight = weight.T if attrs.get_int("transB", 0) else weight
        bias = gemm.inputs[2] if len(gemm.inputs) > 2 else None
        if leading is None or restored is None or len(leading) < 3 or None in leading or weight.ndim != 2:
            return False
        if dims.shape_contents(flatten.inputs[1]) != [-1, leading[-1]] or weight.shape[0] != leading[-1]:
            return False
        if restored != leading[:-1] + [weight.shape[1]]:
            self.skip(f"Gemm {gemm.name!r} kept: its result is reshaped to {dims.shape_text(restore.outputs[0].shape)}, "
                      f"not provably back to the input's leading dims {dims.shape_text(x.shape)}")
            return False
        if bias is not None and (vector(bias) is None or vector(bias).shape != (weight.shape[1],)):
            return False  # a Gemm C other than a [N] bias broadcasts differently
        name = fresh_node_name(graph, f"{gemm.name or 'gemm'}/MatMul")
        if attrs.get_int("transB", 0):
            w_value = ir.Value(name=fresh_value_name(graph, f"{gemm.inputs[1].name}_t"),
                               const_value=ir.tensor(np.ascontiguousarray(weight)))
            w_value.shape, w_value.dtype = ir.Shape(weight.shape), gemm.inputs[1].dtype
            graph.register_initializer(w_value)
        else:
            w_value = gemm.inputs[1]
        nodes = [ir.Node("", "MatMul", [x, w_value], name=name)]
        if bias is not None:
            nodes.append(ir.Node("", "Add", [nodes[0].outputs[0], bias], name=f"{name}/Add"))
        old_weight = gemm.inputs[1]
        ir.convenience.replace_nodes_and_values(graph, restore, [flatten, gemm, restore], nodes,
                                                [restore.outputs[0]], [nodes[-1].outputs[0]])
        if w_value is not old_weight and not old_weight.uses() and old_weight.name in graph.initializers \
                and not old_weight.is_graph_input() and not old_weight.is_graph_output():
            graph.initializers.pop(old_weight.name)  # only its transpose is read now
        return True
