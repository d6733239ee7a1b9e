"""convert_precision: float16/bfloat16 weights and compute, float32 where the EP, the range or the budget
needs it; every result checked against ONNX Runtime's float32 run at the format's tolerance."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import graphopt
from graphopt.errors import InputError
from graphopt.runtime.compare import TOLERANCES, compare
from tests.helpers import op_types, parse, run, to_proto

_RNG = np.random.default_rng(11)
_W1 = (_RNG.standard_normal((32, 64)) * 0.2).astype(np.float32)
_W2 = (_RNG.standard_normal((64, 16)) * 0.2).astype(np.float32)
_HALF = onnx.TensorProto.FLOAT16


def _floats(array: np.ndarray) -> str:
    return ", ".join(repr(float(item)) for item in array.reshape(-1))


def _mlp(scale: float = 1.0) -> onnx.ModelProto:
    """x -> MatMul -> Mul(scale) -> Relu -> MatMul -> Softmax, with a Resize on the side whose scales
    stay float32 and shape math (Shape -> Cast float -> Div -> Cast int64 -> Reshape)."""
    return parse(f"""<ir_version: 9, opset_import: ["" : 18]>
        g (float[N, 32] x, float[1, 1, 4, 4] image) => (float[N, 16] y, float[1, 1, 8, 8] big, float[M] flat)
          <float[32, 64] w1 = {{{_floats(_W1)}}}, float[64, 16] w2 = {{{_floats(_W2)}}},
           float[4] scales = {{1.0, 1.0, 2.0, 2.0}}, float s = {{{scale}}}, float two = {{2.0}},
           int64[1] minus = {{-1}}> {{
            h = MatMul(x, w1)
            k = Mul(h, s)
            r = Relu(k)
            o = MatMul(r, w2)
            y = Softmax <axis = -1> (o)
            big = Resize <mode = "linear"> (image, , scales)
            shape = Shape(x)
            wide = Cast <to = 1> (shape)
            half = Div(wide, two)
            size = Cast <to = 7> (half)
            flat = Reshape(h, minus) }}""")


def _feeds(rows: int = 5) -> dict[str, np.ndarray]:
    return {"x": _RNG.standard_normal((rows, 32)).astype(np.float32),
            "image": _RNG.standard_normal((1, 1, 4, 4)).astype(np.float32)}


def _convert(model: onnx.ModelProto, **options):
    text = ":".join(f"{key}={value}" for key, value in {"min_weights": 256, **options}.items())
    return graphopt.optimize(model, passes=f"convert_precision:{text}", validate=True, check_speed=False)


def _close(model: onnx.ModelProto, result, tolerance: str = "fp16") -> None:
    feeds = _feeds()
    for index, (want, got) in enumerate(zip(run(model, feeds), run(result.model, feeds))):
        assert got.dtype == want.dtype
        assert compare(f"output {index}", want, got, TOLERANCES[tolerance]).passed


def _initializer_types(model) -> dict[str, int]:
    return {tensor.name: tensor.data_type for tensor in to_proto(model).graph.initializer}


def test_on_the_cpu_ep_the_weights_are_stored_in_half_and_widened_at_load():
    """x86 ONNX Runtime has no float16 MatMul: auto stores the weights in half (the file halves),
    Casts widen them (folded at load), and the compute stays float32."""
    model = _mlp()
    result = _convert(model)
    _close(model, result)
    types = _initializer_types(result.model)
    assert [types[name] for name in ("w1", "w2")] == [_HALF, _HALF]
    assert types["scales"] == onnx.TensorProto.FLOAT  # 4 values: under min_weights
    assert op_types(result.model).count("Cast") == 2 + 2  # the model's two, one per weight
    forms = {outcome.layer: outcome.form for outcome in result.outcomes}
    assert set(forms.values()) == {"fp16 weights"} and len(forms) == 2
    assert result.result_bytes < 0.52 * result.float_bytes


def test_compute_all_runs_the_graph_in_half_with_float32_at_its_edges():
    """Every node whose schema allows it computes in float16; the model's inputs and outputs stay
    float32 (an output keeps its name); Resize's scales (fixed float32) and the shape math stay float32."""
    model = _mlp()
    result = _convert(model, compute="all")
    _close(model, result)
    graph = to_proto(result.model).graph
    values = {value.name: value.type.tensor_type.elem_type for value in (*graph.input, *graph.output)}
    assert values == {"x": 1, "image": 1, "y": 1, "big": 1, "flat": 1}
    types = _initializer_types(result.model)
    assert types["w1"] == types["w2"] == types["s"] == _HALF
    assert types["scales"] == types["two"] == onnx.TensorProto.FLOAT
    div = next(node for node in graph.node if node.op_type == "Div")
    assert div.input[0] == "wide"  # shape math untouched
    produced = {output: node for node in graph.node for output in node.output}
    assert produced["y"].op_type == "Cast" and produced[produced["y"].input[0]].op_type == "Softmax"
    assert {outcome.form for outcome in result.outcomes} == {"fp16"}


def test_a_value_beyond_float16s_range_keeps_its_nodes_in_float32():
    """Scaled by 1e6, the hidden layer reaches far beyond 65504: measured on the data, the Mul that
    makes it and the Relu that reads it stay float32; the rest computes in half."""
    model = _mlp(scale=1e6)
    result = graphopt.optimize(model, passes="convert_precision:compute=all:min_weights=256", validate=True,
                               check_speed=False, calibration=[_feeds() for _ in range(4)], fallback=False)
    _close(model, result)
    forms = [(outcome.op_type, outcome.form) for outcome in result.outcomes]
    assert forms == [("MatMul", "fp16"), ("Mul", "float"), ("Relu", "float"), ("MatMul", "fp16 weights"),
                     ("Softmax", "float"), ("Resize", "fp16")]
    assert "was measured up to" in result.outcomes[1].reason and "beyond fp16's range" in result.outcomes[1].reason


def test_a_weight_beyond_the_range_stays_float32_and_is_not_clamped():
    """onnxconverter-common clamps weights to ±1e4; here such a weight stays float32 as it is, said in
    the report, and a model of nothing else is refused with that reason."""
    big = _W1.copy()
    big[0, 0] = 1e6
    alone = parse(f"""<ir_version: 9, opset_import: ["" : 18]>
        g (float[N, 32] x) => (float[N, 64] y) <float[32, 64] w = {{{_floats(big)}}}> {{ y = MatMul(x, w) }}""")
    with pytest.raises(graphopt.NothingChanged, match="beyond fp16's range"):
        _convert(alone)
    model = parse(f"""<ir_version: 9, opset_import: ["" : 18]>
        g (float[N, 32] x) => (float[N, 16] y) <float[32, 64] w = {{{_floats(big)}}},
                                                 float[64, 16] w2 = {{{_floats(_W2)}}}> {{
            h = MatMul(x, w)
            y = MatMul(h, w2) }}""")
    result = _convert(model)
    weights = {tensor.name: tensor for tensor in to_proto(result.model).graph.initializer}
    assert weights["w"].data_type == onnx.TensorProto.FLOAT
    assert onnx.numpy_helper.to_array(weights["w"])[0, 0] == 1e6
    assert weights["w2"].data_type == _HALF
    kept = next(outcome for outcome in result.outcomes if not outcome.changed)
    assert kept.form == "float" and "largest value 1e+06 is beyond fp16's range" in kept.reason
    feeds = {"x": _feeds()["x"]}
    assert compare("y", run(model, feeds)[0], run(result.model, feeds)[0], TOLERANCES["fp16"]).passed


def test_bf16_stores_the_weights_in_bfloat16():
    model = _mlp()
    result = _convert(model, precision="bf16")
    _close(model, result, "bf16")
    assert _initializer_types(result.model)["w1"] == onnx.TensorProto.BFLOAT16


def test_without_keep_io_types_the_inputs_and_outputs_are_half():
    model = _mlp()
    result = _convert(model, compute="all", keep_io_types="false")
    graph = to_proto(result.model).graph
    assert graph.input[0].type.tensor_type.elem_type == _HALF
    assert graph.output[0].type.tensor_type.elem_type == _HALF


def test_if_branches_compute_in_half_and_hand_float32_back():
    """An If's branches are converted like the main graph: Neg reads the half value it captures as it
    is, a branch's weight is stored in half, and each branch hands its output back in float32 (the If
    keeps its types); both branches agree with float32 at the fp16 tolerance."""
    model = parse(f"""<ir_version: 9, opset_import: ["" : 18]>
        g (float[N, 32] x, bool flag) => (float[N, 16] y)
          <float[32, 64] w = {{{_floats(_W1)}}}, int64[1] start = {{0}}, int64[1] end = {{16}}, int64[1] axis = {{1}}> {{
            h = MatMul(x, w)
            r = Relu(h)
            y = If(flag) <then_branch = t () => (float[N, 16] a)
                              <float[64, 16] w2 = {{{_floats(_W2)}}}> {{ n = Neg(r)
                                                                        a = MatMul(n, w2) }},
                          else_branch = e () => (float[N, 16] b) {{ b = Slice(r, start, end, axis) }}> }}""")
    result = _convert(model, compute="all")
    for flag in (True, False):
        feeds = {"x": _feeds()["x"], "flag": np.array(flag)}
        assert compare("y", run(model, feeds)[0], run(result.model, feeds)[0], TOLERANCES["fp16"]).passed
    graph = to_proto(result.model).graph
    branch = next(node for node in graph.node if node.op_type == "If").attribute[0].g
    assert [node.op_type for node in branch.node] == ["Neg", "MatMul", "Cast"]
    assert branch.node[0].input[0] == "r"  # the half Relu's output, read as it is
    assert branch.initializer[0].data_type == _HALF and branch.output[0].type.tensor_type.elem_type == 1
    assert [(outcome.op_type, outcome.form) for outcome in result.outcomes] == \
        [("MatMul", "fp16"), ("Relu", "fp16"), ("Neg", "fp16"), ("MatMul", "fp16")]  # Slice moves data: no layer


def test_sums_and_exponentials_stay_float32_until_real_data_measures_them():
    """Without calibration data the ranges come from synthesized inputs: ReduceSumSquare and Exp (the
    conservative list) stay float32, said in the report; measured on calibration data that fits, they
    compute in half. The same ops inside a body, where nothing is measured, stay float32 either way."""
    model = parse(f"""<ir_version: 9, opset_import: ["" : 18]>
        g (float[N, 32] x, bool flag) => (float[N, 1] y, float[N, 1] z) <float[32, 64] w = {{{_floats(_W1)}}}> {{
            h = MatMul(x, w)
            s = ReduceSumSquare <keepdims = 1> (h, axes)
            t = Neg(s)
            y = Exp(t)
            z = If(flag) <then_branch = t () => (float[N, 1] a) {{ a = ReduceSumSquare <keepdims = 1> (h, axes) }},
                          else_branch = e () => (float[N, 1] b) {{ b = Neg(s) }}> }}""".replace(
        "<float[32, 64] w", "<int64[1] axes = {1}, float[32, 64] w"))
    x = (_RNG.standard_normal((4, 32)) * 0.05).astype(np.float32)
    guessed = graphopt.optimize(model, passes="convert_precision:compute=all:min_weights=256", validate=True,
                                check_speed=False)
    measured = graphopt.optimize(model, passes="convert_precision:compute=all:min_weights=256", validate=True,
                                 check_speed=False, calibration=[{"x": x, "flag": np.array(flag)} for flag in (True, False)] * 2)
    for result in (guessed, measured):
        for flag in (True, False):
            feeds = {"x": x, "flag": np.array(flag)}
            for want, got in zip(run(model, feeds), run(result.model, feeds)):
                assert compare("out", want, got, TOLERANCES["fp16"]).passed

    def forms(result):
        return [(outcome.op_type, outcome.form) for outcome in result.outcomes]

    assert forms(measured) == [("MatMul", "fp16"), ("ReduceSumSquare", "fp16"), ("Neg", "fp16"), ("Exp", "fp16"),
                               ("ReduceSumSquare", "float"), ("Neg", "fp16")]
    assert "inside a body" in measured.outcomes[4].reason
    assert forms(guessed)[:4] == [("MatMul", "fp16"), ("ReduceSumSquare", "float"), ("Neg", "fp16"), ("Exp", "float")]
    assert "synthesized inputs only" in guessed.outcomes[1].reason and "the conservative list" in guessed.outcomes[1].reason
    said = [change for entry in guessed.report.passes for change in entry.changes]
    assert any("value ranges measured on synthesized inputs" in change for change in said)


def test_a_loop_body_computes_in_half_and_carries_float32():
    """A Loop's carried state stays float32 (its body's inputs and outputs keep their types); inside,
    the MatMul with the body's weight and the Tanh compute in half between two Casts."""
    weight = (_RNG.standard_normal((16, 16)) * 0.3).astype(np.float32)
    model = parse(f"""<ir_version: 9, opset_import: ["" : 18]>
        g (float[N, 16] x, int64 steps) => (float[N, 16] y) {{
            y = Loop(steps, , x) <body = step (int64 i, bool go, float[N, 16] state) => (bool go_on, float[N, 16] next)
                <float[16, 16] w = {{{_floats(weight)}}}> {{
                go_on = Identity(go)
                mixed = MatMul(state, w)
                next = Tanh(mixed) }}> }}""")
    result = _convert(model, compute="all")
    feeds = {"x": _RNG.standard_normal((3, 16)).astype(np.float32), "steps": np.array(4, np.int64)}
    assert compare("y", run(model, feeds)[0], run(result.model, feeds)[0], TOLERANCES["fp16"]).passed
    body = next(node for node in to_proto(result.model).graph.node if node.op_type == "Loop").attribute[0].g
    assert [node.op_type for node in body.node] == ["Cast", "Identity", "MatMul", "Tanh", "Cast"]
    assert body.initializer[0].data_type == _HALF
    assert [value.type.tensor_type.elem_type for value in (*body.input[2:], *body.output[1:])] == [1, 1]
    onnx.checker.check_model(to_proto(result.model), full_check=True)


def test_the_fp16_preset_and_compress_precision_give_the_same_file(tmp_path):
    model = _mlp()
    preset = graphopt.optimize(model, tmp_path / "preset.onnx", preset="fp16", validate=True, check_speed=False)
    compressed = graphopt.compress(model, tmp_path / "compress.onnx", precision="fp16", check_speed=False)
    assert (tmp_path / "preset.onnx").read_bytes() == (tmp_path / "compress.onnx").read_bytes()
    assert preset.result_bytes == compressed.result_bytes


def test_reoptimizing_a_half_model_keeps_its_weights_in_half(tmp_path):
    """fold_constants leaves a widening Cast of a weight over 64 KiB to ONNX Runtime (folded, it would
    double the file again)."""
    weight = _RNG.standard_normal((128, 256)).astype(np.float32)
    model = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 128])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 256])],
        [onnx.numpy_helper.from_array(weight, "w")]), opset_imports=[onnx.helper.make_opsetid("", 18)])
    graphopt.optimize(model, tmp_path / "half.onnx", preset="fp16", validate=True, check_speed=False)
    again = graphopt.optimize(tmp_path / "half.onnx", tmp_path / "again.onnx", preset="O3", validate=True)
    assert _initializer_types(again.model) == {"w": _HALF}
    assert (tmp_path / "again.onnx").stat().st_size < 0.6 * weight.nbytes


@pytest.mark.parametrize("settings, message", [
    ({"precision": "fp16", "quantize": "dynamic"}, "both store the weights in fewer bits"),
    ({"precision": "fp16", "cluster_bits": 4}, "both store the weights in fewer bits"),
    ({"precision_compute": "all", "prune_channels": 0.5}, "give --precision"),
])
def test_compress_refuses_precision_combinations_that_cannot_work(settings, message):
    with pytest.raises(InputError, match=message):
        graphopt.compress(_mlp(), **settings)


def test_a_bad_precision_option_is_an_input_error():
    with pytest.raises(InputError, match="precision must be one of fp16, bf16"):
        graphopt.optimize(_mlp(), passes="convert_precision:precision=fp8")


def test_a_table_looked_up_at_shape_derived_positions_is_data_not_shape_math():
    """Position embeddings: Gather(table, Range(0, Shape(x)[1])) reads shape arithmetic, but its result
    is data; the table is stored in half like any weight."""
    table = _RNG.standard_normal((64, 32)).astype(np.float32)
    model = parse(f"""<ir_version: 9, opset_import: ["" : 18]>
        g (float[1, S, 32] x) => (float[1, S, 32] y) <float[64, 32] table = {{{_floats(table)}}},
                                                        int64 zero = {{0}}, int64 one = {{1}}> {{
            shape = Shape(x)
            length = Gather <axis = 0> (shape, one)
            positions = Range(zero, length, one)
            embedded = Gather(table, positions)
            y = Add(x, embedded) }}""")
    result = _convert(model, min_weights=1024)
    assert _initializer_types(result.model)["table"] == _HALF
    feeds = {"x": _RNG.standard_normal((1, 10, 32)).astype(np.float32)}
    assert compare("y", run(model, feeds)[0], run(result.model, feeds)[0], TOLERANCES["fp16"]).passed


def test_an_attention_masks_float32_extreme_becomes_float16s_not_infinity():
    """Exporters write float32's lowest (-3.4e38) for "minus infinity" in a mask: it becomes -65504, not
    -inf (0 x -inf would be NaN), and the node computes in half like the rest."""
    lowest = float(np.finfo(np.float32).min)
    model = parse(f"""<ir_version: 9, opset_import: ["" : 18]>
        g (float[2, 8] scores, float[2, 8] keep) => (float[2, 8] y) <float lowest = {{{lowest!r}}}, float one = {{1.0}}> {{
            dropped = Sub(one, keep)
            masked = Mul(dropped, lowest)
            logits = Add(scores, masked)
            y = Softmax <axis = -1> (logits) }}""")
    keep = np.array([[1.0] * 6 + [0.0] * 2] * 2, np.float32)
    feeds = {"scores": _RNG.standard_normal((2, 8)).astype(np.float32), "keep": keep}
    result = graphopt.optimize(model, passes="convert_precision:compute=all:min_weights=0", validate=True,
                               check_speed=False, inputs=feeds)
    assert _initializer_types(result.model)["lowest"] == _HALF
    assert {outcome.form for outcome in result.outcomes} == {"fp16"}
    got = run(result.model, feeds)[0]
    assert np.isfinite(got).all() and np.all(got[:, 6:] == 0)
    assert compare("y", run(model, feeds)[0], got, TOLERANCES["fp16"]).passed
