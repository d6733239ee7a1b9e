"""eliminate_noops: each no-op is removed, near-no-ops are kept, outputs match in ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnxscript
import pytest

from tests.helpers import op_types, optimize_and_compare, parse, random_feeds, run

HEADER = '<ir_version: 8, opset_import: ["" : 17]>'


def _noops(text: str):
    model = parse(HEADER + text)
    return optimize_and_compare(model, passes="eliminate_noops")


@pytest.mark.parametrize("body, kept", [
    ("y = Identity(x)", []),
    ("t = Identity(x)\n y = Relu(t)", ["Relu"]),
    ("y = Dropout(x)", []),
    ("y = Cast<to=1>(x)", []),
    ("t = Cast<to=1>(x)\n y = Relu(t)", ["Relu"]),
    ("y = Transpose<perm=[0,1,2]>(x)", []),
    ("shape = Constant<value=int64[3] {2,3,4}>()\n y = Reshape(x, shape)", []),
    ("shape = Constant<value=int64[3] {0,0,-1}>()\n y = Reshape(x, shape)", []),
    ("shape = Constant<value=int64[2] {3,4}>()\n y = Expand(x, shape)", []),
    ("shape = Constant<value=int64[3] {1,1,1}>()\n y = Expand(x, shape)", []),
    ("pads = Constant<value=int64[6] {0,0,0,0,0,0}>()\n y = Pad(x, pads)", []),
    ("s = Constant<value=int64[1] {0}>()\n e = Constant<value=int64[1] {9223372036854775807}>()\n"
     " a = Constant<value=int64[1] {2}>()\n y = Slice(x, s, e, a)", []),
    ("s = Constant<value=int64[1] {-10}>()\n e = Constant<value=int64[1] {4}>()\n"
     " a = Constant<value=int64[1] {-1}>()\n y = Slice(x, s, e, a)", []),
    ("y = Concat<axis=0>(x)", []),
    ("y = Sum(x)", []),
    ("r = Constant<value=int64[3] {1,1,1}>()\n y = Tile(x, r)", []),
    ("z = Constant<value=float {0.0}>()\n y = Add(x, z)", []),
    ("z = Constant<value=float {0.0}>()\n y = Add(z, x)", []),
    ("z = Constant<value=float[4] {0,0,0,0}>()\n y = Add(x, z)", []),
    ("o = Constant<value=float {1.0}>()\n y = Mul(o, x)", []),
    ("o = Constant<value=float[1,1,4] {1,1,1,1}>()\n y = Div(x, o)", []),
    ("z = Constant<value=float {0.0}>()\n y = Sub(x, z)", []),
])
def test_noop_is_removed(body, kept):
    result = _noops(f"g (float[2,3,4] x) => (float[2,3,4] y) {{ {body} }}")
    remaining = [op for op in op_types(result.model) if op != "Constant"]
    # y = NoOp(x) between a graph input and output must become one Identity: ONNX cannot
    # name one value both x and y.
    assert remaining == (kept or ["Identity"])


@pytest.mark.parametrize("body, op", [
    ("e = Constant<value=float {1e-12}>()\n y = Add(x, e)", "Add"),
    ("o = Constant<value=float {1.000001}>()\n y = Mul(x, o)", "Mul"),
    ("z = Constant<value=float[1,1,1,4] {0,0,0,0}>()\n y = Add(x, z)", "Add"),
    ("c = Cast<to=10>(x)\n y = Cast<to=1>(c)", "Cast"),
    ("y = Transpose<perm=[1,0,2]>(x)", "Transpose"),
    ("shape = Constant<value=int64[3] {3,2,4}>()\n y = Reshape(x, shape)", "Reshape"),
    ("shape = Constant<value=int64[3] {2,3,1}>()\n y = Expand(x, shape)", None),
    ("pads = Constant<value=int64[6] {0,0,1,0,0,0}>()\n y = Pad(x, pads)", "Pad"),
    ("s = Constant<value=int64[1] {1}>()\n e = Constant<value=int64[1] {9223372036854775807}>()\n"
     " a = Constant<value=int64[1] {2}>()\n y = Slice(x, s, e, a)", "Slice"),
    ("s = Constant<value=int64[1] {0}>()\n e = Constant<value=int64[1] {3}>()\n"
     " a = Constant<value=int64[1] {2}>()\n y = Slice(x, s, e, a)", "Slice"),
])
def test_near_noop_is_kept(body, op):
    text = f"g (float[2,3,4] x) => (float y) {{ {body} }}"
    model = parse(HEADER + text)
    feeds = random_feeds(model)
    expected = run(model, feeds)
    result = optimize_and_compare(model, feeds, passes="eliminate_noops")
    if op is not None:
        assert op in op_types(result.model)
    assert expected[0].shape == run(result.model, feeds)[0].shape


def test_identity_chain_to_graph_output_keeps_output_name():
    model = parse(HEADER + """
        g (float[2] x) => (float[2] y) { a = Relu(x)
            b = Identity(a)
            y = Identity(b) }""")
    result = optimize_and_compare(model, passes="eliminate_noops")
    assert op_types(result.model) == ["Relu"]
    assert [v.name for v in result.model.graph.outputs] == ["y"]


def test_identity_between_input_and_output_is_kept():
    model = parse(HEADER + "g (float[2] x) => (float[2] y) { y = Identity(x) }")
    result = optimize_and_compare(model, passes="eliminate_noops")
    assert op_types(result.model) == ["Identity"]


def test_identity_of_another_output_is_kept():
    model = parse(HEADER + """
        g (float[2] x) => (float[2] a, float[2] y) { a = Relu(x)
            y = Identity(a) }""")
    result = optimize_and_compare(model, passes="eliminate_noops")
    assert [v.name for v in result.model.graph.outputs] == ["a", "y"]


def test_identity_in_scan_body_returning_a_state_is_kept():
    # onnx-ir's IdentityEliminationPass made this body return one value twice (wrong sums).
    model = parse("""<ir_version: 8, opset_import: ["" : 16]>
        g (float[2] init, float[3,2] x) => (float[2] y, float[3,2] z) {
            y, z = Scan<num_scan_inputs=1, body=body (float[2] s_in, float[2] nxt) => (float[2] s_out, float[2] scan_out) {
                s_out = Add(s_in, nxt)
                scan_out = Identity(s_out)
            }>(init, x)
        }""")
    optimize_and_compare(model, passes="eliminate_noops")


def test_dropout_with_used_mask_is_kept():
    model = parse(HEADER + """
        g (float[2,3] x) => (float[2,3] y, bool[2,3] m) { y, m = Dropout(x) }""")
    result = optimize_and_compare(model, passes="eliminate_noops")
    assert "Dropout" in op_types(result.model)


def test_dropout_in_training_mode_is_kept():
    model = parse(HEADER + """
        g (float[2,3] x) => (float[2,3] y) {
            r = Constant<value=float {0.0}>()
            t = Constant<value=bool {1}>()
            y = Dropout(x, r, t) }""")
    result = optimize_and_compare(model, passes="eliminate_noops")
    assert "Dropout" in op_types(result.model)


def test_split_with_several_outputs_is_kept():
    model = parse(HEADER.replace('"" : 17', '"" : 18') + """
        g (float[4] x) => (float[2] y) { y, unused = Split<num_outputs=2>(x) }""")
    result = optimize_and_compare(model, passes="eliminate_noops")
    assert "Split" in op_types(result.model)


def test_onnxscript_add_zero_rule_drops_layernorm_epsilon():
    """Why the arithmetic rules are our own: onnxscript treats 1e-12 as 0 and removes it."""
    model = parse(HEADER + """
        g (float[4] v) => (float[4] y) {
            e = Constant<value=float {1e-12}>()
            s = Add(v, e)
            y = Reciprocal(s) }""")
    feeds = {"v": np.zeros(4, np.float32)}
    expected = run(model, feeds)
    peer = onnxscript.optimizer.optimize(model)
    assert np.isinf(run(peer, feeds)[0]).all() and np.isfinite(expected[0]).all()
    result = optimize_and_compare(model, feeds, preset="O1")
    assert np.isfinite(run(result.model, feeds)[0]).all()
