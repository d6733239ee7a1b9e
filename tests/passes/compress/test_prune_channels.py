"""prune_channels: whole channels removed through residual adds, depthwise convolutions, Concat,
Flatten and Split, every reader rewritten — ONNX Runtime computes the same where the removed
channels carried nothing, the least-squares refit is numpy's, and a channel the analysis cannot
follow stays, with its reason."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import graphopt
from graphopt import model as model_io
from graphopt.errors import InputError
from graphopt.passes import create_pass
from graphopt.pipeline import PassManager
from tests.helpers import parse, run, statistics

_RNG = np.random.default_rng(5)


def _floats(array: np.ndarray) -> str:
    return ", ".join(repr(float(item)) for item in np.asarray(array).reshape(-1))


def _weights(shape, dead=(), axis=0) -> np.ndarray:
    """Random weights whose `dead` channels (along `axis`) are zero: their layer outputs exactly 0 there."""
    weight = _RNG.standard_normal(shape).astype(np.float32) * 0.5
    index = [slice(None)] * len(shape)
    index[axis] = list(dead)
    weight[tuple(index)] = 0.0
    return weight


# channels 1 and 5 of the residual stream (c1 and c2) and channel 2 of c3 are dead
_C1, _B1 = _weights((8, 3, 3, 3), (1, 5)), _weights((8,), (1, 5))
_C2, _B2 = _weights((8, 8, 1, 1), (1, 5)), _weights((8,), (1, 5))
_DW, _DB = _weights((8, 1, 3, 3)), _weights((8,), (1, 5))
_C3 = _weights((6, 8, 1, 1), (2,))
_SCALE, _SHIFT = _weights((6,)) + 1.0, _weights((6,), (2,))
_FC, _FB = _weights((4, 14)), _weights((4,))


def _cnn() -> onnx.ModelProto:
    """conv → relu → 1x1 conv + residual → depthwise conv → 1x1 conv → BN → concat with the depthwise
    output → global pool → flatten → Gemm."""
    model = parse(f"""<ir_version: 9, opset_import: ["" : 18]>
        g (float[N, 3, 8, 8] x) => (float[N, 4] y) <
            float[8, 3, 3, 3] c1 = {{{_floats(_C1)}}}, float[8] b1 = {{{_floats(_B1)}}},
            float[8, 8, 1, 1] c2 = {{{_floats(_C2)}}}, float[8] b2 = {{{_floats(_B2)}}},
            float[8, 1, 3, 3] dw = {{{_floats(_DW)}}}, float[8] db = {{{_floats(_DB)}}},
            float[6, 8, 1, 1] c3 = {{{_floats(_C3)}}},
            float[6] scale = {{{_floats(_SCALE)}}}, float[6] shift = {{{_floats(_SHIFT)}}},
            float[6] mean = {{{_floats(np.zeros(6))}}}, float[6] var = {{{_floats(np.ones(6))}}},
            float[4, 14] fc = {{{_floats(_FC)}}}, float[4] fb = {{{_floats(_FB)}}}> {{
            h1 = Conv <pads = [1, 1, 1, 1]> (x, c1, b1)
            r1 = Relu(h1)
            h2 = Conv(r1, c2, b2)
            a1 = Add(h2, r1)
            d1 = Conv <group = 8, pads = [1, 1, 1, 1]> (a1, dw, db)
            e1 = Relu(d1)
            h3 = Conv(e1, c3)
            n3 = BatchNormalization(h3, scale, shift, mean, var)
            r3 = Relu(n3)
            both = Concat <axis = 1> (e1, r3)
            pooled = GlobalAveragePool(both)
            flat = Flatten(pooled)
            y = Gemm <transB = 1> (flat, fc, fb) }}""")
    for node, name in zip(model.graph.node, ["c1", "r1", "c2", "add", "dw", "e1", "c3", "bn", "r3", "cat", "pool",
                                             "flat", "fc"]):
        node.name = name
    return model


def _prune(model: onnx.ModelProto, **options):
    ir_model = model_io.from_proto(model)
    report = PassManager([create_pass("prune_channels", {"importance": "l1", "reconstruct": False, "round_to": 1,
                                                         **options})]).run(ir_model)
    return ir_model, report.passes[0]


def _shapes(model) -> dict[str, tuple]:
    return {name: tuple(value.const_value.shape) for name, value in model.graph.initializers.items()}


def test_dead_channels_go_through_residual_depthwise_concat_and_flatten_and_the_output_stays():
    model, report = _prune(_cnn(), ratio=0.25)
    x = _RNG.standard_normal((2, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(run(model, {"x": x})[0], run(_cnn(), {"x": x})[0], rtol=1e-5, atol=1e-5)
    shapes = _shapes(model)
    # the residual family (c1, c2, and the depthwise conv between them and c3) lost channels 1 and 5,
    # c3 lost channel 2: 6 + 5 of the Gemm's 14 inputs are left
    assert shapes["c1_pruned"] == (6, 3, 3, 3) and shapes["c2_pruned"] == (6, 6, 1, 1)
    assert shapes["dw_pruned"] == (6, 1, 3, 3) and shapes["c3_pruned"] == (5, 6, 1, 1)
    assert all(shapes[f"{name}_pruned"] == (5,) for name in ("scale", "shift", "mean", "var"))
    assert shapes["fc_pruned"] == (4, 11) and "c1" not in shapes
    assert [node.attributes["group"].value for node in model.graph if node.name == "dw"] == [6]
    assert [(o.layer, o.form, o.detail) for o in report.outcomes if o.changed] == [
        ("c1", "25% of channels removed", "2 of 8 channels removed from each of 2 layers joined by adds, "
                                          "depthwise convolutions or Concat"),
        ("c3", "25% of channels removed", "1 of 6 channels removed")]
    assert [(o.layer, o.reason) for o in report.outcomes if not o.changed] == [
        ("fc", "it reaches the graph output 'y'")]


def test_flatten_before_a_gemm_removes_each_channels_block_of_rows():
    model = parse(f"""<ir_version: 9, opset_import: ["" : 18]>
        g (float[N, 3, 4, 4] x) => (float[N, 5] y) <float[4, 3, 1, 1] w = {{{_floats(_weights((4, 3, 1, 1), (0,)))}}},
            float[5, 64] fc = {{{_floats(_weights((5, 64)))}}}> {{
            h = Conv(x, w)
            r = Relu(h)
            flat = Reshape(r, shape)
            y = Gemm <transB = 1> (flat, fc) }}""".replace("Reshape(r, shape)", "Flatten(r)"))
    pruned, _ = _prune(model, ratio=0.25)
    assert _shapes(pruned)["fc_pruned"] == (5, 48)  # channel 0's 16 positions gone
    x = _RNG.standard_normal((2, 3, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(run(pruned, {"x": x})[0], run(model, {"x": x})[0], rtol=1e-5, atol=1e-5)


def test_a_packed_projection_split_in_three_keeps_its_split_sizes_in_step():
    w = _weights((8, 12), (1, 2, 9), axis=1)  # dead: two columns of the first part, one of the third
    model = parse(f"""<ir_version: 9, opset_import: ["" : 18]>
        g (float[N, 8] x) => (float[N, 2] y) <float[8, 12] w = {{{_floats(w)}}}, float[3] sizes = {{4, 4, 4}},
            float[4, 2] o1 = {{{_floats(_weights((4, 2)))}}}, float[4, 2] o2 = {{{_floats(_weights((4, 2)))}}},
            float[4, 2] o3 = {{{_floats(_weights((4, 2)))}}}> {{
            h = MatMul(x, w)
            a, b, c = Split <axis = 1, num_outputs = 3> (h)
            ra = MatMul(a, o1)
            rb = MatMul(b, o2)
            rc = MatMul(c, o3)
            s = Add(ra, rb)
            y = Add(s, rc) }}""".replace("float[3] sizes = {4, 4, 4}, ", ""))
    pruned, report = _prune(model, ratio=0.25)
    assert _shapes(pruned)["w_pruned"] == (8, 9)
    split = next(node for node in pruned.graph if node.op_type == "Split")
    assert split.inputs[1].const_value.numpy().tolist() == [2, 4, 3] and "num_outputs" not in split.attributes
    x = _RNG.standard_normal((3, 8)).astype(np.float32)
    np.testing.assert_allclose(run(pruned, {"x": x})[0], run(model, {"x": x})[0], rtol=1e-5, atol=1e-5)


def test_channels_the_analysis_cannot_follow_stay_with_the_reason():
    model = parse(f"""<ir_version: 9, opset_import: ["" : 18]>
        g (float[N, 8] x, float[N, 8] skip) => (float[N, 2, 4] heads, float[N, 8] added, float[N, 8] normed) <
            float[8, 8] w1 = {{{_floats(_weights((8, 8)))}}}, float[8, 8] w2 = {{{_floats(_weights((8, 8)))}}},
            float[8, 8] w3 = {{{_floats(_weights((8, 8)))}}}, int64[3] split_heads = {{0, 2, 4}},
            float[8] gamma = {{{_floats(np.ones(8))}}}> {{
            h1 = MatMul(x, w1)
            heads = Reshape(h1, split_heads)
            h2 = MatMul(x, w2)
            added = Add(h2, skip)
            h3 = MatMul(x, w3)
            normed = LayerNormalization <axis = -1> (h3, gamma) }}""")
    for node, name in zip(model.graph.node, ["p1", "reshape", "p2", "add", "p3", "norm"]):
        node.name = name
    graph_model = model_io.from_proto(model)
    with pytest.raises(graphopt.errors.NothingChanged, match="pruned 0 of 3 layers"):
        graphopt.optimize(graph_model, passes=["prune_channels:importance=l1:reconstruct=false"], check_speed=False)
    _, report = _prune(model, ratio=0.5)
    assert {o.layer: o.reason for o in report.outcomes} == {
        "p1": "its channels go in heads (a fused Attention's, or split by a Reshape): prune_heads removes them "
              "whole",
        "p2": "Add 'add' combines them with 'skip', which no layer here makes (a residual stream from a "
              "normalization or a graph input)",
        "p3": "LayerNormalization 'norm' computes over the channels"}


_UP = _RNG.standard_normal((16, 32)).astype(np.float32)
_DOWN = _RNG.standard_normal((32, 8)).astype(np.float32)
_BIAS = _RNG.standard_normal(8).astype(np.float32)


def _mlp() -> onnx.ModelProto:
    model = parse(f"""<ir_version: 9, opset_import: ["" : 18]>
        g (float[N, 16] x) => (float[N, 8] y) <float[16, 32] w1 = {{{_floats(_UP)}}},
            float[32, 8] w2 = {{{_floats(_DOWN)}}}, float[8] b2 = {{{_floats(_BIAS)}}}> {{
            h = MatMul(x, w1)
            r = Relu(h)
            z = MatMul(r, w2)
            y = Add(z, b2) }}""")
    for node, name in zip(model.graph.node, ["up", "relu", "down", "bias"]):
        node.name = name
    return model


def test_the_reader_is_refit_by_least_squares_on_the_measured_statistics():
    x = _RNG.standard_normal((4000, 16)).astype(np.float32)
    r = np.maximum(x @ _UP, 0).astype(np.float64)
    gram, mean = r.T @ r / len(r), r.mean(0)
    pass_ = create_pass("prune_channels", {"ratio": 0.5, "round_to": 1})
    pass_.statistics = statistics(grams={"r": gram}, mean_squares={"r": np.diag(gram)})
    pass_.statistics.channels["r"].mean, pass_.statistics.channels["r"].count = mean, len(r)
    model = model_io.from_proto(_mlp())
    PassManager([pass_]).run(model)
    # activation importance: E[r_c²]·‖w2_c‖²; the 16 least important neurons go
    kept = np.sort(np.argsort(np.diag(gram) * np.square(_DOWN.astype(np.float64)).sum(1))[16:])
    design = np.hstack([r[:, kept], np.ones((len(r), 1))])
    ridge = np.mean(np.diag(gram)) * 16 / len(r)
    penalty = np.diag([ridge] * 16 + [0.0])
    solved = np.linalg.solve(design.T @ design / len(r) + penalty,
                             design.T @ (r @ _DOWN) / len(r) + np.vstack([ridge * _DOWN[kept], np.zeros((1, 8))]))
    weights = {name: value.const_value.numpy() for name, value in model.graph.initializers.items()}
    np.testing.assert_allclose(weights["w1_pruned"], _UP[:, kept], rtol=1e-6)
    np.testing.assert_allclose(weights["w2_pruned"], solved[:16], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(weights["b2_pruned"], _BIAS + solved[16], rtol=1e-4, atol=1e-5)
    held_out = _RNG.standard_normal((256, 16)).astype(np.float32)
    want = run(_mlp(), {"x": held_out})[0]
    sliced, _ = _prune(_mlp(), ratio=0.5, importance="activation")
    error = {name: np.linalg.norm(run(pruned, {"x": held_out})[0] - want) for name, pruned in
             (("refit", model), ("sliced", sliced))}
    assert error["refit"] < 0.6 * error["sliced"], error


def test_the_lossy_pipeline_measures_the_statistics_and_the_budget_backs_families_off():
    calibration = [{"x": _RNG.standard_normal((64, 3, 8, 8)).astype(np.float32)} for _ in range(4)]
    refit = graphopt.optimize(_cnn(), passes=["prune_channels:ratio=0.5:round_to=1"], calibration=calibration,
                              validate=True, force=True, fallback=False, check_speed=False)
    sliced = graphopt.optimize(_cnn(), passes=["prune_channels:ratio=0.5:round_to=1:reconstruct=false"],
                               calibration=calibration, validate=True, force=True, fallback=False,
                               check_speed=False)
    cosine = {name: min(o.cosine for s in result.validation.input_sets for o in s.outputs)
              for name, result in (("refit", refit), ("sliced", sliced))}
    assert cosine["refit"] > cosine["sliced"], cosine
    held = graphopt.optimize(_cnn(), passes=["prune_channels:ratio=0.5:round_to=1:reconstruct=false"],
                             calibration=calibration, validate=True, min_cosine=0.9999, check_speed=False)
    assert held.validation.passed and held.fallback.met
    assert set(held.fallback.backed_off.values()) <= {"25% of channels removed", "dense"}


@pytest.mark.parametrize("options, message", [
    ({"ratio": 1.0}, "ratio must be between 0 and 1"),
    ({"ratio": 0.0}, "ratio must be between 0 and 1"),
    ({"importance": "taylor"}, "importance 'taylor': choose from activation, l1, l2"),
    ({"round_to": 0}, "round_to must be 1 or more"),
])
def test_bad_options_are_clear_errors(options, message):
    with pytest.raises(InputError, match=message):
        create_pass("prune_channels", options)


def _attention(dead_head: int = 2) -> onnx.ModelProto:
    """ONNX Runtime's fused Attention (4 heads of 4) and an output projection; one head's V columns and bias zero."""
    weight, bias = _weights((16, 48)), _weights((48,))
    columns = slice(32 + 4 * dead_head, 32 + 4 * dead_head + 4)  # its V columns
    weight[:, columns], bias[columns] = 0.0, 0.0
    model = parse(f"""<ir_version: 9, opset_import: ["" : 18, "com.microsoft" : 1]>
        g (float[N, 6, 16] x) => (float[N, 6, 16] y) <float[16, 48] w = {{{_floats(weight)}}},
            float[48] b = {{{_floats(bias)}}}, float[16, 16] wo = {{{_floats(_weights((16, 16)))}}}> {{
            a = com.microsoft.Attention <num_heads = 4> (x, w, b)
            y = MatMul(a, wo) }}""")
    model.graph.node[0].name, model.graph.node[1].name = "attention", "out"
    return model


def test_a_dead_attention_head_is_removed_whole_and_the_output_stays():
    x, model = _RNG.standard_normal((2, 6, 16)).astype(np.float32), _attention()
    result = graphopt.optimize(model, passes=["prune_heads:ratio=0.25:reconstruct=false"], target="ort",
                               inputs={"x": x}, validate=True, check_speed=False)
    assert result.validation.passed  # fp32: the dead head carried nothing
    attention = next(node for node in result.model.graph if node.op_type == "Attention")
    assert attention.attributes["num_heads"].value == 3
    assert tuple(attention.inputs[1].const_value.shape) == (16, 36) and tuple(attention.inputs[2].const_value.shape) == (36,)
    assert [(o.layer, o.form, o.detail) for o in result.outcomes] == [("attention", "25% of heads removed",
                                                                       "1 of 4 heads removed")]
    np.testing.assert_allclose(run(result.model, {"x": x})[0], run(model, {"x": x})[0], rtol=1e-4, atol=1e-5)
    # prune_channels leaves heads to prune_heads
    with pytest.raises(graphopt.errors.NothingChanged):
        graphopt.optimize(_attention(), passes=["prune_channels:ratio=0.5"], target="ort", check_speed=False)


def test_a_reader_without_a_bias_gets_its_shift_in_an_add_and_the_graph_output_keeps_its_name():
    model = parse(f"""<ir_version: 9, opset_import: ["" : 18]>
        g (float[N, 16] x) => (float[N, 8] y) <float[16, 32] w1 = {{{_floats(_UP)}}},
            float[32, 8] w2 = {{{_floats(_DOWN)}}}> {{
            h = MatMul(x, w1)
            r = Relu(h)
            y = MatMul(r, w2) }}""")
    calibration = [{"x": _RNG.standard_normal((512, 16)).astype(np.float32)} for _ in range(4)]
    result = graphopt.optimize(model, passes=["prune_channels:ratio=0.5:round_to=1"], calibration=calibration,
                               validate=True, force=True, fallback=False, check_speed=False)
    assert [value.name for value in result.model.graph.outputs] == ["y"]
    assert [node.op_type for node in result.model.graph] == ["MatMul", "Relu", "MatMul", "Add"]
    x = _RNG.standard_normal((64, 16)).astype(np.float32)
    sliced, _ = _prune(model, ratio=0.5, importance="activation")
    want = run(model, {"x": x})[0]
    assert np.linalg.norm(run(result.model, {"x": x})[0] - want) < np.linalg.norm(run(sliced, {"x": x})[0] - want)
