"""Attention fusion: scaled dot-product attention becomes one node.

For ort: com.microsoft Attention when Q, K and V are projections of one input (three
MatMul [+ bias], or one packed MatMul/Gemm split three ways, as GPT-2's c_attn), with the
weights packed [D_in, 3·D] and the bias [3·D]; MultiHeadAttention over Q, K, V otherwise.
For portable: ONNX Attention (opset 23) over Q, K, V. The exporters' additive mask is the
attention bias, shared by every layer as the exporter computed it once; a mask over keys only
([B, 1, 1, Skv]) is expanded over the queries once per mask. The softmax's NaN guard
(Where(IsNaN(p), 0, p), fully masked rows read 0) is dropped when the mask is provably finite
(then no row is NaN) or absent; otherwise it is kept on the fused output, where it gives the
same zeros. What the matcher proves and refuses: graphopt.passes.fusion._attention_match.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from graphopt import dims
from graphopt.passes.fusion._attention_match import Attention, Refused, finite, match
from graphopt.passes.match import (
    MS_DOMAIN,
    anchors,
    fresh_node_name,
    infer_types,
    is_op,
    new_initializer,
    operands,
    vector,
)
from graphopt.passes.registry import Pass, register

ATTENTION_OPSET = 23


def _projection(value: ir.Value) -> tuple[ir.Value, np.ndarray, np.ndarray | None] | None:
    """(x, W, b) when `value` = x @ W [+ b] with constant 2-D W and 1-D b."""
    producer = value.producer()
    bias = None
    pair = operands(producer, "Add")
    if pair is not None:
        for product, candidate in (pair, pair[::-1]):
            if is_op(product.producer(), "MatMul") and vector(candidate) is not None:
                value, bias = product, vector(candidate)
                break
        else:
            return None
    matmul = value.producer()
    if not is_op(matmul, "MatMul") or matmul.inputs[1].const_value is None:
        return None
    weight = matmul.inputs[1].const_value.numpy()
    if weight.ndim != 2 or (bias is not None and bias.shape != (weight.shape[1],)):
        return None
    return matmul.inputs[0], weight, bias


def _packed_projection(found: Attention) -> tuple[ir.Value, np.ndarray, np.ndarray | None] | None:
    """(x, W [D_in, 3D], b [3D]) when Q, K, V are the three equal parts of one projection of x."""
    split = found.q.producer()
    if not is_op(split, "Split") or [found.q, found.k, found.v] != list(split.outputs):
        return None
    packed = split.inputs[0]
    rank = len(packed.shape) if packed.shape is not None else 0
    if rank != 3 or split.attributes.get_int("axis", 0) % rank != 2:
        return None
    sizes = dims.shape_contents(split.inputs[1]) if len(split.inputs) > 1 and split.inputs[1] is not None else None
    if sizes is not None and len(set(sizes)) != 1:
        return None
    direct = _projection(packed)
    if direct is not None:
        return direct
    # GPT-2: Reshape(Gemm(Reshape(x, [-1, D_in]), W, b), [B, S, 3D]).
    reshape = packed.producer()
    gemm = reshape.inputs[0].producer() if is_op(reshape, "Reshape") else None
    flatten = gemm.inputs[0].producer() if is_op(gemm, "Gemm") else None
    if not is_op(flatten, "Reshape") or gemm.inputs[1].const_value is None:
        return None
    x = flatten.inputs[0]
    if dims.dims_of(x) is None or dims.dims_of(x)[:2] != dims.dims_of(packed)[:2] or None in dims.dims_of(x)[:2] \
            or dims.shape_contents(flatten.inputs[1]) != [-1, dims.dims_of(x)[2]]:
        return None
    attrs = gemm.attributes
    if attrs.get_int("transA", 0) or attrs.get_float("alpha", 1.0) != 1.0 or attrs.get_float("beta", 1.0) != 1.0:
        return None
    weight = gemm.inputs[1].const_value.numpy()
    weight = weight.T if attrs.get_int("transB", 0) else weight
    bias = vector(gemm.inputs[2]) if len(gemm.inputs) > 2 and gemm.inputs[2] is not None else None
    if bias is None and len(gemm.inputs) > 2 and gemm.inputs[2] is not None:
        return None
    if weight.ndim != 2 or weight.shape[0] != dims.dims_of(x)[2] or (bias is not None and bias.shape != (weight.shape[1],)):
        return None
    return x, weight, bias


def _packed(found: Attention) -> tuple[ir.Value, np.ndarray, np.ndarray] | None:
    """x and the packed weights and bias when Q, K and V are projections of the same x."""
    packed = _packed_projection(found)
    if packed is not None:
        x, weight, bias = packed
    else:
        parts = [_projection(value) for value in (found.q, found.k, found.v)]
        if None in parts or not parts[0][0] is parts[1][0] is parts[2][0]:
            return None
        x = parts[0][0]
        weight = np.concatenate([part[1] for part in parts], axis=1)
        bias = np.concatenate([part[2] if part[2] is not None else np.zeros(part[1].shape[1], part[1].dtype)
                               for part in parts])
    if weight.dtype != np.float32 or dims.dims_of(x) is None or len(dims.dims_of(x)) != 3:
        return None
    bias = bias if bias is not None else np.zeros(weight.shape[1], weight.dtype)
    return x, weight, bias.astype(weight.dtype)


@register("fuse_attention")
class FuseAttention(Pass):
    """Fuse scaled dot-product attention into com.microsoft Attention/MultiHeadAttention (ort) or ONNX Attention (opset 23).

    Matched as both exporters write it: Q and Kᵀ each scaled by a constant, Kᵀ as torchscript's
    Transpose(0,2,3,1), a Transpose(0,1,3,2) or dynamo's Reshape-Transpose-Reshape, an additive mask
    or none, the softmax's NaN guard, torchscript's no-op Reshape after p @ V. Every shape is proven
    from dims: the head split keeps batch and sequence, the mask broadcasts to [B, H, S, Skv]
    exactly. The NaN guard goes when the mask is provably finite (dynamo's finfo.min) and stays on
    the fused output otherwise (torchscript's −inf: fully masked rows still read 0). ort fuses
    float32 only (its CPU attention kernels); below opset 23 portable is refused with the reason
    (`--opset 23` converts). Refused with the reason: non-constant or zero scales, head splits that
    do not keep batch and sequence, unproven mask shapes, probabilities or scores also read
    elsewhere (attention weights returned as outputs). Validated on exports: MiniLM 6/6, GPT-2 12/12
    (dynamo and torchscript), BERT-base 12/12, ViT-base 12/12.
    """

    target_aware = True

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        infer_types(self, model)
        self._expanded: dict[tuple, ir.Value] = {}
        counts: dict[str, int] = {}
        with dims.named(model):
            for graph, node in anchors(model, "Softmax"):
                try:
                    found = match(node)
                    fused = self._fuse(model, graph, found) if found is not None else None
                except Refused as refusal:
                    self.skip(f"Softmax {node.name!r} not fused into attention: {refusal}")
                    continue
                if fused:
                    counts[fused] = counts.get(fused, 0) + 1
        if counts:
            ir.passes.common.RemoveUnusedNodesPass()(model)
        for op_type, count in counts.items():
            self.changed(f"{count} {op_type}")
        return ir.passes.PassResult(model, modified=bool(counts))

    def _fuse(self, model: ir.Model, graph: ir.Graph, found: Attention) -> str:
        dtype = found.q.dtype
        if self.target == "ort" and dtype != ir.DataType.FLOAT:
            raise Refused(f"Q is {dtype}; ONNX Runtime's CPU attention kernels are float32")
        opset = model.opset_imports.get("", 1)
        if self.target == "portable" and opset < ATTENTION_OPSET:
            raise Refused(f"ONNX Attention needs opset {ATTENTION_OPSET}, the model has {opset} "
                          f"(convert with --opset {ATTENTION_OPSET}, or use --target ort)")
        nodes: list[ir.Node] = []
        packed = _packed(found) if self.target == "ort" else None
        # The queries' length is read from a value the fused node keeps alive.
        queries = packed[0] if packed is not None else found.q
        mask = self._mask(graph, found, queries, nodes) if found.mask is not None else None
        base = fresh_node_name(graph, f"{found.output.name or 'attention'}/Attention")
        scale = ir.AttrFloat32("scale", found.scale)
        if self.target == "portable":
            op_type, domain = "Attention", ""
            inputs = [found.q, found.k, found.v, mask]
            attributes = [ir.AttrInt64("q_num_heads", found.heads), ir.AttrInt64("kv_num_heads", found.heads), scale]
        else:
            domain = MS_DOMAIN
            model.opset_imports.setdefault(MS_DOMAIN, 1)
            attributes = [ir.AttrInt64("num_heads", found.heads), scale]
            if packed is not None:
                op_type, (x, weight, bias) = "Attention", packed
                inputs = [x, new_initializer(graph, weight, f"{base}/qkv_weight"),
                          new_initializer(graph, bias, f"{base}/qkv_bias"), None, None, mask]
            else:
                op_type = "MultiHeadAttention"
                inputs = [found.q, found.k, found.v, None, None, mask]
        while inputs[-1] is None:
            inputs.pop()
        attention = ir.Node(domain, op_type, inputs, attributes, name=base)
        nodes.append(attention)
        result = attention.outputs[0]
        result.shape, result.dtype = found.q.shape, found.q.dtype  # [B, S, H·Dh], as ONNX cannot infer it
        if found.nan_guard and found.mask is not None and not finite(found.mask):
            result = self._guard(graph, result, nodes, base)
        graph.insert_before(found.merge, nodes)
        if found.output is found.merge.outputs[0]:
            result.shape, result.dtype = found.output.shape, found.output.dtype
            result.name, found.output.name = found.output.name, None
            ir.convenience.replace_all_uses_with(found.output, result, replace_graph_outputs=True)
        else:
            found.merge.replace_input_with(0, result)
        return op_type

    def _mask(self, graph: ir.Graph, found: Attention, queries: ir.Value, nodes: list[ir.Node]) -> ir.Value:
        """The mask as the fused ops want it, 4-D [B|1, H|1, S, Skv]: a mask over keys only is
        expanded over S (the length of `queries`), a lower-rank one gets its leading 1s; once per mask."""
        seq = dims.dims_of(found.q)[1]
        over_queries = found.mask_dims[2] == 1 and seq != 1
        if not over_queries and len(dims.dims_of(found.mask)) == 4:
            return found.mask
        key = (id(found.mask), seq if over_queries else None, graph)
        if key not in self._expanded:
            name = fresh_node_name(graph, f"{found.mask.name or 'mask'}/Expand")
            if over_queries:
                length = ir.Node("", "Shape", [queries], [ir.AttrInt64("start", 1), ir.AttrInt64("end", 2)],
                                 name=f"{name}/Shape")
                ones = new_initializer(graph, np.ones(2, np.int64), f"{name}/ones")
                one = new_initializer(graph, np.ones(1, np.int64), f"{name}/one")
                target = ir.Node("", "Concat", [ones, length.outputs[0], one], [ir.AttrInt64("axis", 0)],
                                 name=f"{name}/Concat")
                nodes.extend([length, target])
                shape = target.outputs[0]
            else:
                shape = new_initializer(graph, np.ones(4, np.int64), f"{name}/rank4")
            expand = ir.Node("", "Expand", [found.mask, shape], name=name)
            nodes.append(expand)
            self._expanded[key] = expand.outputs[0]
        return self._expanded[key]

    def _guard(self, graph: ir.Graph, value: ir.Value, nodes: list[ir.Node], base: str) -> ir.Value:
        """Where(IsNaN(y), 0, y): the zeros the export's guard gave fully masked rows."""
        isnan = ir.Node("", "IsNaN", [value], name=f"{base}/IsNaN")
        zero = new_initializer(graph, np.zeros((), np.float32), f"{base}/zero")
        where = ir.Node("", "Where", [isnan.outputs[0], zero, value], name=f"{base}/NaNToZero")
        where.outputs[0].shape, where.outputs[0].dtype = value.shape, value.dtype
        nodes.extend([isnan, where])
        return where.outputs[0]
