"""fuse_attention: scaled dot-product attention as the exporters write it becomes one node.

The blocks below are written the way the TorchScript and dynamo exporters write them (head
split from Shape slices, Kᵀ in their three forms, Q and Kᵀ each scaled by Dh^-¼, additive mask
from a boolean one, the softmax NaN guard); every fused model is checked against the unfused
one in ONNX Runtime.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.helpers import op_types, optimize_and_compare, run

D, HEADS, DH = 8, 2, 4
FLOAT_MIN = float(np.finfo(np.float32).min)


def _const(name: str, values, dtype=np.int64) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(values, dtype), name))


def _head_split(nodes: list, source: str, x3: str, out: str, perm=(0, 2, 1, 3), batch_dim: bool = True) -> None:
    """Reshape x3 to [B, S, H, Dh] with a target built from Shape(source), then Transpose(perm)."""
    if batch_dim:
        nodes += [helper.make_node("Shape", [source], [f"{out}_b"], start=0, end=1),
                  helper.make_node("Shape", [source], [f"{out}_s"], start=1, end=2),
                  _const(f"{out}_rest", [-1, DH]),
                  helper.make_node("Concat", [f"{out}_b", f"{out}_s", f"{out}_rest"], [f"{out}_shape"], axis=0)]
    else:
        nodes.append(_const(f"{out}_shape", [1, -1, HEADS, DH]))
    nodes += [helper.make_node("Reshape", [x3, f"{out}_shape"], [f"{out}_split"]),
              helper.make_node("Transpose", [f"{out}_split"], [out], perm=list(perm))]


def _key_transposed(nodes: list, form: str, k3: str, source: str) -> None:
    """Kᵀ [B, H, Dh, Skv] as `kt`, in the form `form` exporters write."""
    if form == "torchscript":
        _head_split(nodes, source, k3, "kt", perm=(0, 2, 3, 1))
        return
    _head_split(nodes, source, k3, "k4")
    if form == "transpose":
        nodes.append(helper.make_node("Transpose", ["k4"], ["kt"], perm=[0, 1, 3, 2]))
        return
    nodes += [helper.make_node("Shape", ["k4"], ["k_dims"]),
              _const("k_minus", [-1]), _const("k_a", [-2]), _const("k_b", [-1]), _const("k_c", [2**63 - 1]),
              _const("k_lo", [-2**63]),
              helper.make_node("Slice", ["k_dims", "k_b", "k_c"], ["k_last"]),
              helper.make_node("Slice", ["k_dims", "k_a", "k_b"], ["k_seq"]),
              helper.make_node("Slice", ["k_dims", "k_lo", "k_a"], ["k_lead"]),
              helper.make_node("Concat", ["k_minus", "k_seq", "k_last"], ["k_flat"], axis=0),
              helper.make_node("Reshape", ["k4", "k_flat"], ["k3d"]),
              helper.make_node("Transpose", ["k3d"], ["k3t"], perm=[0, 2, 1]),
              helper.make_node("Concat", ["k_lead", "k_last", "k_seq"], ["k_back"], axis=0),
              helper.make_node("Reshape", ["k3t", "k_back"], ["kt"])]


def _model(key_form: str = "torchscript", mask: str = "inf", projections: str = "separate", guard: bool = True,
           merge: str = "full", opset: int = 17, q_scale="const", mask_shape=None, batch_dim: bool = True,
           probabilities_out: bool = False) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.5, name)
             for name, shape in [("wq", (D, D)), ("wk", (D, D)), ("wv", (D, D)), ("wo", (D, D)),
                                 ("bq", (D,)), ("bk", (D,)), ("bv", (D,))]]
    inits.append(numpy_helper.from_array(np.concatenate([numpy_helper.to_array(i) for i in inits[:3]], axis=1), "wqkv"))
    inits.append(numpy_helper.from_array(np.concatenate([numpy_helper.to_array(i) for i in inits[4:7]]), "bqkv"))
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", D])]
    nodes: list = []
    memory = "x"
    if projections == "cross":  # keys and values from a second sequence: MultiHeadAttention
        memory = "memory"
        inputs.append(helper.make_tensor_value_info("memory", TensorProto.FLOAT, ["batch", "mem", D]))
    if projections == "split":  # GPT-2: one packed projection split three ways
        nodes += [helper.make_node("MatMul", ["x", "wqkv"], ["qkv_mm"]),
                  helper.make_node("Add", ["bqkv", "qkv_mm"], ["qkv"]),
                  _const("sizes", [D, D, D]),
                  helper.make_node("Split", ["qkv", "sizes"], ["q3", "k3", "v3"], axis=2)]
    else:
        for name, source in (("q", "x"), ("k", memory), ("v", memory)):
            nodes += [helper.make_node("MatMul", [source, f"w{name}"], [f"{name}_mm"]),
                      helper.make_node("Add", [f"b{name}", f"{name}_mm"], [f"{name}3"])]
    _head_split(nodes, "x", "q3", "q4", batch_dim=batch_dim)
    _key_transposed(nodes, key_form, "k3", memory)
    _head_split(nodes, memory, "v3", "v4")
    if q_scale == "const":
        nodes.append(_const("scale", DH ** -0.25, np.float32))
    else:
        inputs.append(helper.make_tensor_value_info("scale", TensorProto.FLOAT, []))
    nodes += [helper.make_node("Mul", ["q4", "scale"], ["qs"]),
              _const("kscale", DH ** -0.25, np.float32),
              helper.make_node("Mul", ["kt", "kscale"], ["kts"]),
              helper.make_node("MatMul", ["qs", "kts"], ["scores"])]
    keys = "mem" if projections == "cross" else "seq"
    masked = "masked"
    if mask == "none":
        masked = "scores"
    elif mask == "bias":  # an additive mask given as an input: nothing proves it finite
        shape = mask_shape or ["batch", 1, "seq", keys]
        inputs.append(helper.make_tensor_value_info("bias", TensorProto.FLOAT, shape))
        nodes.append(helper.make_node("Add", ["scores", "bias"], ["masked"]))
    else:  # a boolean mask over the keys turned additive, -inf (TorchScript) or finfo.min (dynamo)
        inputs.append(helper.make_tensor_value_info("keep", TensorProto.BOOL, ["batch", 1, 1, keys]))
        nodes += [_const("zero", 0.0, np.float32),
                  _const("low", float("-inf") if mask == "inf" else FLOAT_MIN, np.float32),
                  helper.make_node("Where", ["keep", "zero", "low"], ["additive"]),
                  helper.make_node("Add", ["scores", "additive"], ["masked"])]
    nodes.append(helper.make_node("Softmax", [masked], ["p"], axis=-1))
    if guard:
        nodes += [helper.make_node("IsNaN", ["p"], ["p_nan"]),
                  _const("p_zero", [0.0], np.float32),  # TorchScript writes a float32[1]
                  helper.make_node("Where", ["p_nan", "p_zero", "p"], ["pg"])]
    nodes += [helper.make_node("MatMul", ["pg" if guard else "p", "v4"], ["heads"]),
              helper.make_node("Transpose", ["heads"], ["heads_t"], perm=[0, 2, 1, 3])]
    if merge == "full":
        nodes += [helper.make_node("Shape", ["x"], ["m_bs"], start=0, end=2), _const("m_rest", [-1]),
                  helper.make_node("Concat", ["m_bs", "m_rest"], ["m_shape"], axis=0),
                  helper.make_node("Reshape", ["heads_t", "m_shape"], ["merged"]),
                  helper.make_node("MatMul", ["merged", "wo"], ["y"])]
        out_shape = ["batch", "seq", D]
    else:  # GPT-2's Conv1D flattens straight to [B·S, D]
        nodes += [_const("m_shape", [-1, D]),
                  helper.make_node("Reshape", ["heads_t", "m_shape"], ["merged"]),
                  helper.make_node("MatMul", ["merged", "wo"], ["y"])]
        out_shape = [None, D]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)]
    if probabilities_out:
        outputs.append(helper.make_tensor_value_info("p", TensorProto.FLOAT, ["batch", HEADS, "seq", "seq"]))
    graph = helper.make_graph(nodes, "attention", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)


def _feeds(model: onnx.ModelProto, batch: int = 2, seq: int = 5, mem: int = 6, masked_row: bool = False):
    rng = np.random.default_rng(1)
    names = {value.name for value in model.graph.input}
    keys = mem if "memory" in names else seq
    feeds = {"x": rng.standard_normal((batch, seq, D)).astype(np.float32)}
    if "memory" in names:
        feeds["memory"] = rng.standard_normal((batch, mem, D)).astype(np.float32)
    if "keep" in names:
        keep = np.ones((batch, 1, 1, keys), bool)
        keep[0, ..., -2:] = False  # key padding
        if masked_row:
            keep[1] = False  # a sequence with no key at all: the guard's zeros
        feeds["keep"] = keep
    if "bias" in names:
        rank = next(len(value.type.tensor_type.shape.dim) for value in model.graph.input if value.name == "bias")
        feeds["bias"] = np.where(rng.random((batch, 1, seq, keys)[4 - rank:]) < 0.3, -1e4, 0).astype(np.float32)
    if "scale" in names:
        feeds["scale"] = np.array(0.5, np.float32)
    return feeds


def _fuse(model, target="ort", feeds=None, **kwargs):
    return optimize_and_compare(model, feeds or _feeds(model), passes="fuse_attention", target=target, **kwargs)


@pytest.mark.parametrize("key_form", ["torchscript", "dynamo", "transpose"])
@pytest.mark.parametrize("mask", ["none", "finite", "inf", "bias"])
def test_every_key_form_and_mask_fuses_into_packed_attention(key_form, mask):
    model = _model(key_form=key_form, mask=mask)
    result = _fuse(model)
    kept_guard = mask in ("inf", "bias")  # a mask not provably finite keeps the NaN guard, on the output
    ops = op_types(result.model)
    assert ops.count("Attention") == 1 and ops.count("MatMul") == 1  # the output projection is all that is left
    assert not {"Softmax", "Transpose", "Reshape", "Add"} & set(ops)
    assert ("IsNaN" in ops) == kept_guard
    attention = next(node for node in result.model.graph if node.op_type == "Attention")
    assert attention.domain == "com.microsoft" and attention.attributes.get_int("num_heads") == HEADS
    assert attention.attributes.get_float("scale") == pytest.approx(DH ** -0.5)
    assert result.report.passes[0].changes == ["1 Attention"]


def test_a_fully_masked_row_reads_zeros_not_nans_after_fusion():
    model = _model(mask="inf")
    feeds = _feeds(model, masked_row=True)
    assert not np.isnan(run(model, feeds)[0]).any()
    result = _fuse(model, feeds=feeds)  # compares with NaN == NaN: equal means no NaN either
    assert "Attention" in op_types(result.model)


def test_a_keys_only_mask_is_expanded_over_the_queries_once():
    result = _fuse(_model(mask="finite"))
    assert op_types(result.model).count("Expand") == 1


def test_a_lower_rank_mask_gets_its_leading_ones_once():
    result = _fuse(_model(mask="bias", mask_shape=["seq", "seq"]))
    ops = op_types(result.model)
    assert ops.count("Attention") == 1 and ops.count("Expand") == 1


def test_gpt2_style_packed_projection_and_flat_merge():
    result = _fuse(_model(projections="split", merge="flat"))
    ops = op_types(result.model)
    assert "Attention" in ops and "Softmax" not in ops and "Split" not in ops
    assert ops[-2:] == ["Reshape", "MatMul"]  # the [-1, D] merge now reshapes the fused output


def test_cross_attention_becomes_multi_head_attention():
    result = _fuse(_model(projections="cross", mask="finite"))
    ops = op_types(result.model)
    assert "MultiHeadAttention" in ops and "Softmax" not in ops


def test_portable_emits_onnx_attention_from_opset_23():
    result = _fuse(_model(opset=23, mask="finite"), target="portable")
    attention = next(node for node in result.model.graph if node.op_type == "Attention")
    assert attention.domain == "" and attention.attributes.get_int("q_num_heads") == HEADS
    assert {node.domain for node in result.model.graph} == {""}


def test_portable_below_opset_23_is_refused_with_the_way_out():
    result = _fuse(_model(opset=17), target="portable")
    assert "Softmax" in op_types(result.model)
    assert result.report.passes[0].skipped == [
        "Softmax '' not fused into attention: ONNX Attention needs opset 23, the model has 17 "
        "(convert with --opset 23, or use --target ort)"]


@pytest.mark.parametrize("options, reason", [
    ({"q_scale": "input"}, "Q is scaled by Mul '', which is not a single constant"),
    ({"mask": "bias", "mask_shape": ["batch", 1, "seq", "other"]},
     "the mask's shape [batch, 1, seq, other] is not provably [B|1, H|1, S|1, Skv]"),
    ({"batch_dim": False}, "Q's head split [batch, seq, 8] → [1, ?0, 2, 4] does not provably keep the batch"),
    ({"probabilities_out": True}, "the attention probabilities are also read elsewhere"),
], ids=["non-constant-scale", "unproven-mask", "head-split-drops-batch", "probabilities-returned"])
def test_near_misses_are_refused_with_the_reason(options, reason):
    model = _model(**options)
    batch = 1 if not options.get("batch_dim", True) else 2
    feeds = _feeds(model, batch=batch)
    result = _fuse(model, feeds=feeds)
    assert "Softmax" in op_types(result.model)
    assert any(reason in message for message in result.report.passes[0].skipped), result.report.passes[0].skipped
