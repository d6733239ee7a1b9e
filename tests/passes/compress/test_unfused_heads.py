"""prune_heads on an unfused attention as PyTorch's dynamo exporter writes it (--target portable): a packed
QKV projection split in three, each split into heads by a Reshape whose shape is concatenated from the
input's Shape and constants, Kᵀ through a 3-D batch (Reshape, Transpose, Reshape), the heads merged back
by another computed Reshape. collapse_shape_ops makes Kᵀ one Transpose; the channel graph joins each
head's Q, K and V channels through the batched MatMuls, so a head goes whole."""

from __future__ import annotations

import itertools

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import graphopt
from graphopt import model as model_io
from graphopt.passes import create_pass
from graphopt.pipeline import PassManager
from tests.helpers import run

HEADS, SIZE = 4, 8
WIDTH = HEADS * SIZE
_RNG = np.random.default_rng(31)
_QKV = _RNG.standard_normal((WIDTH, 3 * WIDTH)).astype(np.float32) * 0.3
_QKV_BIAS = _RNG.standard_normal(3 * WIDTH).astype(np.float32) * 0.1
_OUT = _RNG.standard_normal((WIDTH, WIDTH)).astype(np.float32) * 0.3
_OUT_BIAS = _RNG.standard_normal(WIDTH).astype(np.float32) * 0.1
WEAK = (1, 3)  # heads whose Q, K and V columns are ten times smaller: the least important by their norms
for _head in WEAK:
    for _part in range(3):
        _QKV[:, _part * WIDTH + _head * SIZE:_part * WIDTH + (_head + 1) * SIZE] *= 0.1


def _attention() -> onnx.ModelProto:
    """y = Attention(x) with a mask bias, as the dynamo exporter writes it (opset 18), shapes declared."""
    def const(name, values):
        return numpy_helper.from_array(np.asarray(values, np.int64), name)

    nodes = [
        helper.make_node("MatMul", ["x", "qkv_w"], ["qkv_mm"], name="qkv"),
        helper.make_node("Add", ["qkv_mm", "qkv_b"], ["qkv_out"], name="qkv_bias"),
        helper.make_node("Split", ["qkv_out", "thirds"], ["q", "k", "v"], name="split", axis=-1),
        helper.make_node("Shape", ["x"], ["batch"], name="batch_dim", start=0, end=1),
        helper.make_node("Shape", ["x"], ["seq"], name="seq_dim", start=1, end=2),
        helper.make_node("Concat", ["batch", "seq", "minus_one", "head_size"], ["head_shape"], name="heads", axis=0),
        *[node for name in "qkv" for node in (
            helper.make_node("Reshape", [name, "head_shape"], [f"{name}_split"], name=f"{name}_split"),
            helper.make_node("Transpose", [f"{name}_split"], [f"{name}_t"], name=f"{name}_t", perm=[0, 2, 1, 3]))],
        helper.make_node("Concat", ["minus_one", "seq", "head_size"], ["batch_shape"], name="batch_shape", axis=0),
        helper.make_node("Reshape", ["k_t", "batch_shape"], ["k_batch"], name="k_batch"),
        helper.make_node("Transpose", ["k_batch"], ["k_batch_t"], name="k_batch_t", perm=[0, 2, 1]),
        helper.make_node("Concat", ["batch", "head_count", "head_size", "seq"], ["kt_shape"], name="kt_shape", axis=0),
        helper.make_node("Reshape", ["k_batch_t", "kt_shape"], ["k_tt"], name="k_tt"),
        helper.make_node("Mul", ["q_t", "scale"], ["q_scaled"], name="q_scale"),
        helper.make_node("MatMul", ["q_scaled", "k_tt"], ["scores"], name="scores"),
        helper.make_node("Add", ["scores", "mask"], ["masked"], name="mask_add"),
        helper.make_node("Softmax", ["masked"], ["probs"], name="softmax", axis=-1),
        helper.make_node("MatMul", ["probs", "v_t"], ["context"], name="context"),
        helper.make_node("Transpose", ["context"], ["context_t"], name="context_t", perm=[0, 2, 1, 3]),
        helper.make_node("Concat", ["batch", "seq", "minus_one"], ["merged_shape"], name="merged_shape", axis=0),
        helper.make_node("Reshape", ["context_t", "merged_shape"], ["merged"], name="merge"),
        helper.make_node("MatMul", ["merged", "out_w"], ["out_mm"], name="out"),
        helper.make_node("Add", ["out_mm", "out_b"], ["y"], name="out_bias"),
    ]
    shapes = {"qkv_mm": ["B", "S", 3 * WIDTH], "qkv_out": ["B", "S", 3 * WIDTH], "q": ["B", "S", WIDTH],
              "k": ["B", "S", WIDTH], "v": ["B", "S", WIDTH], "batch": [1], "seq": [1], "head_shape": [4],
              **{f"{name}_split": ["B", "S", HEADS, SIZE] for name in "qkv"},
              **{f"{name}_t": ["B", HEADS, "S", SIZE] for name in "qkv"},
              "batch_shape": [3], "k_batch": [None, "S", SIZE], "k_batch_t": [None, SIZE, "S"], "kt_shape": [4],
              "k_tt": ["B", HEADS, SIZE, "S"], "q_scaled": ["B", HEADS, "S", SIZE], "scores": ["B", HEADS, "S", "S"],
              "masked": ["B", HEADS, "S", "S"], "probs": ["B", HEADS, "S", "S"], "context": ["B", HEADS, "S", SIZE],
              "context_t": ["B", "S", HEADS, SIZE], "merged_shape": [3], "merged": ["B", "S", WIDTH],
              "out_mm": ["B", "S", WIDTH]}
    types = {"batch": TensorProto.INT64, "seq": TensorProto.INT64, "head_shape": TensorProto.INT64,
             "batch_shape": TensorProto.INT64, "kt_shape": TensorProto.INT64, "merged_shape": TensorProto.INT64}
    graph = helper.make_graph(
        nodes, "unfused_attention",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", WIDTH]),
         helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["B", 1, 1, "S"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "S", WIDTH])],
        [numpy_helper.from_array(_QKV, "qkv_w"), numpy_helper.from_array(_QKV_BIAS, "qkv_b"),
         numpy_helper.from_array(_OUT, "out_w"), numpy_helper.from_array(_OUT_BIAS, "out_b"),
         const("thirds", [WIDTH] * 3), const("minus_one", [-1]), const("head_size", [SIZE]),
         const("head_count", [HEADS]), numpy_helper.from_array(np.array(SIZE ** -0.5, np.float32), "scale")],
        value_info=[helper.make_tensor_value_info(name, types.get(name, TensorProto.FLOAT), dims)
                    for name, dims in shapes.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    return model


def _feeds(batch: int = 2, seq: int = 5) -> dict[str, np.ndarray]:
    mask = np.zeros((batch, 1, 1, seq), np.float32)
    mask[0, ..., -1] = -1e4  # the first sentence's last token is padding
    return {"x": _RNG.standard_normal((batch, seq, WIDTH)).astype(np.float32), "mask": mask}


def _heads_only(feeds: dict[str, np.ndarray], kept: tuple[int, ...]) -> np.ndarray:
    """The attention computed in numpy with only the `kept` heads (and all of the output bias)."""
    x, mask = feeds["x"].astype(np.float64), feeds["mask"].astype(np.float64)
    qkv = x @ _QKV + _QKV_BIAS
    y = np.zeros(x.shape[:2] + (WIDTH,)) + _OUT_BIAS
    for head in kept:
        q, k, v = (qkv[..., part * WIDTH + head * SIZE:part * WIDTH + (head + 1) * SIZE] for part in range(3))
        scores = q @ np.swapaxes(k, -1, -2) * SIZE ** -0.5 + mask[:, 0]
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        y += (probs @ v) @ _OUT[head * SIZE:(head + 1) * SIZE]
    return y


def test_the_model_computes_the_attention_it_is_meant_to():
    feeds = _feeds()
    np.testing.assert_allclose(run(_attention(), feeds)[0], _heads_only(feeds, tuple(range(HEADS))), rtol=1e-4,
                               atol=1e-4)


def test_collapse_shape_ops_makes_the_transpose_through_a_batch_one_transpose():
    model = model_io.from_proto(_attention())
    PassManager([create_pass("collapse_shape_ops"), create_pass("remove_unused")]).run(model)
    ops = [node.op_type for node in model.graph]
    # the 3-D batch's Reshapes are gone, and its Transpose composed with K's own into one
    assert ops.count("Reshape") == 4 and ops.count("Transpose") == 4 and ops.count("Shape") == 2
    scores = next(node for node in model.graph if node.name == "scores")
    k_transpose = scores.inputs[1].producer()
    assert k_transpose.op_type == "Transpose" and list(k_transpose.attributes["perm"].value) == [0, 2, 3, 1]
    feeds = _feeds()
    np.testing.assert_allclose(run(model, feeds)[0], run(_attention(), feeds)[0], rtol=1e-5, atol=1e-6)


def test_the_weakest_heads_go_whole_from_q_k_v_and_the_output_projection():
    feeds = _feeds()
    result = graphopt.optimize(_attention(), passes=["collapse_shape_ops", "remove_unused",
                                                     "prune_heads:ratio=0.5:importance=l2:reconstruct=false"],
                               inputs=feeds, check_speed=False, force=True, fallback=False)
    kept = tuple(head for head in range(HEADS) if head not in WEAK)
    np.testing.assert_allclose(run(result.model, feeds)[0], _heads_only(feeds, kept), rtol=1e-4, atol=1e-4)
    shapes = {value.name: tuple(value.const_value.shape) for value in result.model.graph.initializers.values()}
    assert shapes["qkv_w_pruned"] == (WIDTH, 3 * WIDTH // 2) and shapes["out_w_pruned"] == (WIDTH // 2, WIDTH)
    assert [(o.layer, o.form, o.detail) for o in result.outcomes] == [("qkv", "50% of heads removed",
                                                                       "2 of 4 heads removed")]
    # any other pair of heads computes something else: the test tells them apart
    others = [pair for pair in itertools.combinations(range(HEADS), 2) if pair != kept]
    assert all(np.abs(_heads_only(feeds, pair) - _heads_only(feeds, kept)).max() > 1e-2 for pair in others)


def test_the_o3_preset_then_prune_heads_with_the_refit_on_measured_statistics():
    calibration = [_feeds(4, 6) for _ in range(8)]
    result = graphopt.compress(_attention(), prune_heads=0.25, calibration=calibration, check_speed=False,
                               min_cosine=0.5)
    assert result.validation.passed and [o.form for o in result.outcomes if o.changed] == ["25% of heads removed"]
    assert any("refit by least squares" in change for change in result.report.passes[-1].changes)
    feeds = _feeds()
    want, got = run(_attention(), feeds)[0].ravel(), run(result.model, feeds)[0].ravel()
    assert float(want @ got / np.linalg.norm(want) / np.linalg.norm(got)) > 0.9
    # prune_channels leaves the heads to prune_heads, and says so
    channels = graphopt.optimize(_attention(), passes=["collapse_shape_ops", "prune_channels:ratio=0.5"],
                                 inputs=feeds, check_speed=False, force=True, fallback=False)
    reasons = {o.layer: o.reason for o in channels.outcomes}
    assert reasons["qkv"] == ("its channels go in heads (a fused Attention's, or split by a Reshape): "
                              "prune_heads removes them whole")
