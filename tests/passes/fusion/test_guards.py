"""What the fusions must refuse: each case once changed outputs, crashed ONNX Runtime or the pass.

Every model is run in ONNX Runtime before and after; a refusal is fine, a different output
(or shape) is not.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from tests.helpers import op_types, optimize_and_compare

HEADER = '<ir_version: 9, opset_import: ["" : {opset}]>'
GELU_CONSTANTS = "float sqrt2 = {1.4142135}, float one = {1.0}"


def _model(body: str, opset: int = 20) -> onnx.ModelProto:
    return onnx.parser.parse_model(HEADER.replace("{opset}", str(opset)) + body)


def _rand(*shape):
    return np.random.default_rng(sum(shape)).random(shape).astype(np.float32)


def test_symbols_that_may_broadcast_are_not_assumed_equal():
    model = _model("""
        g (float[B,S,4] x, float[P,S,4] pe) => (float[Q,S,4] y) <float[4] gamma = {1.0, 2.0, 3.0, 4.0},
                                                                float[4] beta = {0.0, 0.1, 0.2, 0.3}> {
            t = Add(x, pe)
            u = Relu(x)
            s = Add(u, t)
            y = LayerNormalization<axis=-1>(s, gamma, beta) }""", opset=17)
    # x of batch 1 broadcasts against pe of batch 2: the residual operands differ in shape.
    result = optimize_and_compare(model, {"x": _rand(1, 3, 4), "pe": _rand(2, 3, 4)},
                                  passes="fuse_skip_layernorm", target="ort")
    assert "SkipLayerNormalization" not in op_types(result.model)


@pytest.mark.parametrize("body, passes", [
    # 0.5 as float[1,1,1] raises the rank of a [N, 4] GELU input
    ("""g (float[N,4] x) => (float[1,N,4] y) <""" + GELU_CONSTANTS + """, float[1,1,1] half = {0.5}> {
        u = Div(x, sqrt2)  e = Erf(u)  a = Add(e, one)  m = Mul(x, a)  y = Mul(m, half) }""", "fuse_gelu"),
    # γ of [1,1,1,4] on a rank-3 x
    ("""g (float[N,2,4] x) => (float[1,N,2,4] y) <float eps = {0.00001}, float two = {2.0},
                                                   float[1,1,1,4] gamma = {1.0, 2.0, 3.0, 4.0}> {
        mu = ReduceMean<axes=[-1]>(x)  d = Sub(x, mu)  sq = Pow(d, two)  var = ReduceMean<axes=[-1]>(sq)
        ve = Add(var, eps)  sd = Sqrt(ve)  n = Div(d, sd)  y = Mul(n, gamma) }""", "fuse_layernorm"),
    # ε of [1,1,1,1] on a rank-3 variance
    ("""g (float[N,2,4] x) => (float[1,N,2,4] y) <float[1,1,1,1] eps = {0.00001}, float two = {2.0}> {
        mu = ReduceMean<axes=[-1]>(x)  d = Sub(x, mu)  sq = Pow(d, two)  var = ReduceMean<axes=[-1]>(sq)
        ve = Add(var, eps)  sd = Sqrt(ve)  y = Div(d, sd) }""", "fuse_layernorm"),
], ids=["gelu-half", "layernorm-gamma", "layernorm-epsilon"])
def test_constants_that_raise_the_rank_are_refused(body, passes):
    model = _model(body, opset=20 if passes == "fuse_gelu" else 17)
    feeds = {"x": _rand(3, 4) if "N,4]" in body.split("=>")[0] else _rand(3, 2, 4)}
    result = optimize_and_compare(model, feeds, passes=passes)
    assert not {"Gelu", "LayerNormalization"} & set(op_types(result.model))


@pytest.mark.parametrize("body", [
    """g (float[N,1] h) => (float[N,4] y) <""" + GELU_CONSTANTS + """, float half = {0.5},
                                           float[4] b = {1.0, 2.0, -1.0, 0.5}> {
        x = Add(h, b)  u = Div(x, sqrt2)  e = Erf(u)  a = Add(e, one)  m = Mul(x, a)  y = Mul(m, half) }""",
    """g (float[N,1] h) => (float[N,4] y) <float[4] b = {1.0, 2.0, -1.0, 0.5}> { x = Add(h, b)  y = Gelu(x) }""",
], ids=["erf-formula", "onnx-gelu"])
def test_a_bias_wider_than_h_stays_outside_biasgelu(body):
    result = optimize_and_compare(_model(body), {"h": _rand(3, 1)}, passes="fuse_gelu", target="ort")
    assert "BiasGelu" not in op_types(result.model)


def test_a_residual_narrower_than_gamma_is_refused():
    model = _model("""
        g (float[B,S,1] p, float[B,S,1] q) => (float[B,S,4] y) <float[4] bb = {1.0, 2.0, 3.0, 4.0},
                                                                float[4] gamma = {1.0, 2.0, 3.0, 4.0}> {
            pb = Add(p, bb)
            t = Add(pb, q)
            y = LayerNormalization<axis=-1>(t, gamma) }""", opset=17)
    result = optimize_and_compare(model, {"p": _rand(2, 3, 1), "q": _rand(2, 3, 1)},
                                  passes="fuse_skip_layernorm", target="ort")
    assert "SkipLayerNormalization" not in op_types(result.model)


@pytest.mark.parametrize("body, passes, target, feeds", [
    ("""g (float[N,4] x, bool c) => (float[N,4] y) <float eps = {0.00001}, float two = {2.0}> {
        mu = ReduceMean<axes=[-1]>(x)
        d = Sub(x, mu)
        y = If(c) <then_branch = g1 () => (float[N,4] y1) {
            sq = Pow(d, two)  var = ReduceMean<axes=[-1]>(sq)  ve = Add(var, eps)  sd = Sqrt(ve)  y1 = Div(d, sd)
        }, else_branch = g2 () => (float[N,4] y2) { y2 = Identity(x) }> }""", "fuse_layernorm", "portable",
     {"x": _rand(3, 4)}),
    ("""g (float[N,4] h, bool c) => (float[N,4] y) <float[4] b = {1.0, 2.0, -1.0, 0.5}, """ + GELU_CONSTANTS
     + """, float half = {0.5}> {
        x = Add(h, b)
        y = If(c) <then_branch = g1 () => (float[N,4] y1) {
            u = Div(x, sqrt2)  e = Erf(u)  a = Add(e, one)  m = Mul(x, a)  y1 = Mul(m, half)
        }, else_branch = g2 () => (float[N,4] y2) { y2 = Identity(x) }> }""", "fuse_gelu", "ort",
     {"h": _rand(3, 4)}),
    ("""g (float[B,S,4] p, float[B,S,4] q, bool c) => (float[B,S,4] y) <float[4] gamma = {1.0, 2.0, 3.0, 4.0}> {
        t = Add(p, q)
        y = If(c) <then_branch = g1 () => (float[B,S,4] y1) { y1 = LayerNormalization<axis=-1>(t, gamma) },
                   else_branch = g2 () => (float[B,S,4] y2) { y2 = Identity(t) }> }""", "fuse_skip_layernorm", "ort",
     {"p": _rand(2, 3, 4), "q": _rand(2, 3, 4)}),
], ids=["layernorm", "gelu-bias", "skip-layernorm"])
def test_matches_never_reach_across_a_subgraph_boundary(body, passes, target, feeds):
    model = _model(body, opset=20 if passes == "fuse_gelu" else 17)
    for branch in (True, False):
        optimize_and_compare(model, {**feeds, "c": np.array(branch)}, passes=passes, target=target)


def test_float16_constants_match_as_closely_as_float16_holds_them():
    model = _model("""
        g (float[N,4] x) => (float[N,4] y) <float sqrt2 = {1.4142135}, float one = {1.0}, float half = {0.5}> {
            u = Div(x, sqrt2)  e = Erf(u)  a = Add(e, one)  m = Mul(x, a)  y = Mul(m, half) }""")
    # The text format has no float16 literals: switch every tensor to float16 (√2 reads 1.41406).
    for tensor in model.graph.initializer:
        array = onnx.numpy_helper.to_array(tensor).astype(np.float16)
        tensor.CopyFrom(onnx.numpy_helper.from_array(array, tensor.name))
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.elem_type = onnx.TensorProto.FLOAT16
    result = optimize_and_compare(model, {"x": _rand(3, 4).astype(np.float16)}, rtol=2e-3, passes="fuse_gelu")
    assert op_types(result.model) == ["Gelu"]
