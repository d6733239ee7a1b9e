"""CNN fusions: Pad into Conv and pooling, Conv [+ residual] + activation into FusedConv."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import op_types, optimize_and_compare, parse

_WEIGHTS = "float[4, 3, 3, 3] w = {" + ", ".join(f"{((i * 7) % 11 - 5) / 10}" for i in range(108)) + "}, " \
           "float[4] b = {0.1, -0.2, 0.3, -0.4}"


def _pad_model(pads: str, mode: str = "constant", value: str = "0.0") -> str:
    return f"""<ir_version: 9, opset_import: ["" : 18]>
        g (float[N, 3, 8, 8] x) => (float[N, 4, 8, 8] y) <{_WEIGHTS}> {{
            pads = Constant<value = int64[8] {{{pads}}}>()
            value = Constant<value = float {{{value}}}>()
            padded = Pad<mode = "{mode}">(x, pads, value)
            y = Conv<kernel_shape = [3, 3]>(padded, w, b) }}"""


def _feeds(shape=(2, 3, 8, 8)):
    return {"x": np.random.default_rng(0).standard_normal(shape).astype(np.float32)}


def test_a_zero_spatial_pad_becomes_the_convs_pads():
    result = optimize_and_compare(parse(_pad_model("0, 0, 1, 1, 0, 0, 1, 1")), _feeds(), passes="fuse_pad")
    assert [op for op in op_types(result.model) if op != "Constant"] == ["Conv"]
    conv = next(node for node in result.model.graph if node.op_type == "Conv")
    assert list(conv.attributes.get_ints("pads")) == [1, 1, 1, 1]


@pytest.mark.parametrize("model, reason", [
    (_pad_model("0, 0, 1, 1, 0, 0, 1, 1", mode="reflect"), "mode is not constant"),
    (_pad_model("0, 0, 1, 1, 0, 0, 1, 1", value="1.0"), "pads with 1.0, not the 0.0"),
], ids=["reflect", "non-zero value"])
def test_pads_a_conv_cannot_express_are_refused(model, reason):
    result = optimize_and_compare(parse(model), _feeds(), passes="fuse_pad")
    assert "Pad" in op_types(result.model)
    assert reason in result.report.passes[0].skipped[0]


def _pool_model(pool: str, value: str) -> str:
    return f"""<ir_version: 9, opset_import: ["" : 18]>
        g (float[N, 3, 8, 8] x) => (float[N, 3, 4, 4] y) {{
            pads = Constant<value = int64[8] {{0, 0, 1, 1, 0, 0, 1, 1}}>()
            value = Constant<value = float {{{value}}}>()
            padded = Pad(x, pads, value)
            y = {pool}(padded) }}"""


@pytest.mark.parametrize("pool, value, attributes", [
    ("AveragePool<kernel_shape = [3, 3], strides = [2, 2]>", "0.0", {"count_include_pad": 1}),
    ("MaxPool<kernel_shape = [3, 3], strides = [2, 2]>", "-inf", {}),
], ids=["average counts the zeros", "max ignores -inf"])
def test_a_pad_the_pooling_would_read_the_same_becomes_its_pads(pool, value, attributes):
    result = optimize_and_compare(parse(_pool_model(pool, value)), _feeds(), passes="fuse_pad")
    node = next(node for node in result.model.graph if node.op_type.endswith("Pool"))
    assert "Pad" not in op_types(result.model)
    assert list(node.attributes.get_ints("pads")) == [1, 1, 1, 1]
    for name, expected in attributes.items():
        assert node.attributes.get_int(name) == expected


@pytest.mark.parametrize("pool, value, reason", [
    ("MaxPool<kernel_shape = [3, 3], strides = [2, 2]>", "0.0", "pads with 0.0, not the -inf"),
    ("AveragePool<kernel_shape = [3, 3], strides = [2, 2], pads = [0, 0, 1, 1]>", "0.0", "not counted"),
    ("AveragePool<kernel_shape = [3, 3], strides = [2, 2], ceil_mode = 1>", "0.0", "ceil_mode"),
], ids=["max of zeros", "uncounted own pads", "ceil mode"])
def test_pads_a_pooling_would_read_differently_are_refused(pool, value, reason):
    model = _pool_model(pool, value).replace("float[N, 3, 4, 4] y", "float[N, 3, ?, ?] y")
    result = optimize_and_compare(parse(model), _feeds(), passes="fuse_pad")
    assert "Pad" in op_types(result.model)
    assert reason in result.report.passes[0].skipped[0]


@pytest.mark.parametrize("activation, expected", [
    ("y = Relu(c)", ("Relu", [])),
    ("low = Constant<value = float {0.0}>()\n high = Constant<value = float {6.0}>()\n y = Clip(c, low, high)",
     ("Clip", [0.0, 6.0])),
    ("y = LeakyRelu<alpha = 0.1>(c)", ("LeakyRelu", [0.1])),
    ("y = HardSigmoid<alpha = 0.25, beta = 0.4>(c)", ("HardSigmoid", [0.25, 0.4])),
    ("y = Sigmoid(c)", ("Sigmoid", [])),
], ids=["relu", "relu6", "leaky", "hardsigmoid", "sigmoid"])
def test_conv_and_activation_become_fused_conv(activation, expected):
    model = parse(f"""<ir_version: 9, opset_import: ["" : 18]>
        g (float[N, 3, 8, 8] x) => (float[N, 4, 6, 6] y) <{_WEIGHTS}> {{
            c = Conv<kernel_shape = [3, 3]>(x, w, b)
            {activation} }}""")
    result = optimize_and_compare(model, _feeds(), passes="fuse_conv_activation", target="ort")
    node = next(node for node in result.model.graph if node.op_type == "FusedConv")
    assert [n.op_type for n in result.model.graph if n.op_type != "Constant"] == ["FusedConv"]
    assert node.domain == "com.microsoft" and node.attributes.get_string("activation") == expected[0]
    params = node.attributes.get_floats("activation_params", [])
    assert list(params) == pytest.approx(expected[1])


def test_a_residual_add_before_the_activation_is_fused_as_z():
    model = parse(f"""<ir_version: 9, opset_import: ["" : 18]>
        g (float[N, 3, 8, 8] x, float[N, 4, 6, 6] skip) => (float[N, 4, 6, 6] y) <{_WEIGHTS}> {{
            c = Conv<kernel_shape = [3, 3]>(x, w, b)
            s = Add(skip, c)
            y = Relu(s) }}""")
    feeds = {**_feeds(), "skip": np.random.default_rng(1).standard_normal((2, 4, 6, 6)).astype(np.float32)}
    result = optimize_and_compare(model, feeds, passes="fuse_conv_activation", target="ort")
    assert op_types(result.model) == ["FusedConv"]
    assert [value.name for value in next(iter(result.model.graph)).inputs] == ["x", "w", "b", "skip"]


def test_a_broadcast_residual_is_not_fused():
    model = parse(f"""<ir_version: 9, opset_import: ["" : 18]>
        g (float[N, 3, 8, 8] x, float[1, 4, 1, 1] skip) => (float[N, 4, 6, 6] y) <{_WEIGHTS}> {{
            c = Conv<kernel_shape = [3, 3]>(x, w, b)
            s = Add(c, skip)
            y = Relu(s) }}""")
    feeds = {**_feeds(), "skip": np.ones((1, 4, 1, 1), np.float32)}
    result = optimize_and_compare(model, feeds, passes="fuse_conv_activation", target="ort")
    assert op_types(result.model) == ["Conv", "Add", "Relu"]
