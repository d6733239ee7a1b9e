"""fold_constants and fold_shapes: folded graphs match ONNX Runtime; budgets are respected."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from graphopt import optimize
from graphopt.passes import create_pass
from graphopt.pipeline import PassManager
from tests.helpers import assert_same, op_types, optimize_and_compare, parse, random_feeds, run, to_proto

HEADER = '<ir_version: 8, opset_import: ["" : 17]>'
CONSTANT_SUBGRAPH = HEADER + """
    g (float[3] x) => (float[3] y) {
        a = Constant<value=float[3] {1, 2, 3}>()
        b = Constant<value=float[3] {4, 5, 6}>()
        c = Mul(a, b)
        d = Sqrt(c)
        y = Add(x, d) }"""


def test_constant_subgraph_is_folded():
    model = parse(CONSTANT_SUBGRAPH)
    result = optimize_and_compare(model, passes="fold_constants,remove_unused")
    assert [op for op in op_types(result.model) if op != "Constant"] == ["Add"]


def test_fold_never_touches_overridable_initializers():
    # w is both a graph input and an initializer: a caller may feed another value.
    model = parse(HEADER + """
        g (float[3] x, float[3] w) => (float[3] y) <float[3] w = {1, 2, 3}> {
            s = Sqrt(w)
            y = Add(x, s) }""")
    result = optimize_and_compare(model, passes="fold_constants")
    assert "Sqrt" in op_types(result.model)


def test_output_cap_keeps_large_results_unfolded():
    model = parse(HEADER + """
        g (float[64,64] x) => (float[64,64] y) {
            shape = Constant<value=int64[2] {64, 64}>()
            one = Constant<value=float {1.0}>()
            big = Expand(one, shape)
            y = Add(x, big) }""")
    ir_model = ir.serde.deserialize_model(model)
    fold = create_pass("fold_constants", {"max_output_bytes": 1024})
    report = PassManager([fold]).run(ir_model)
    assert "Expand" in op_types(ir_model)
    assert any("max_output_bytes" in reason for reason in report.passes[0].skipped)
    result = optimize(model, passes="fold_constants")  # default cap (1 MiB) folds the 16 KB result
    assert "Expand" not in op_types(result.model)


def test_growth_budget_is_model_wide():
    nodes = "\n".join(
        f"b{i} = Expand(one, shape)\n s{i} = Add(x, b{i})" for i in range(4)
    )
    adds = " ".join(f"s{i}," for i in range(4)).rstrip(",")
    model = parse(HEADER + f"""
        g (float[32,32] x) => (float[32,32] y) {{
            shape = Constant<value=int64[2] {{32, 32}}>()
            one = Constant<value=float {{1.0}}>()
            {nodes}
            y = Sum({adds}) }}""")
    ir_model = ir.serde.deserialize_model(model)
    fold = create_pass("fold_constants", {"max_growth_bytes": 2 * 32 * 32 * 4})
    report = PassManager([fold]).run(ir_model)
    assert op_types(ir_model).count("Expand") == 2  # two folded within budget, two kept
    assert any("max_growth_bytes" in reason for reason in report.passes[0].skipped)


def test_shape_of_static_tensor_folds_and_reshape_target_becomes_constant():
    model = parse(HEADER + """
        g (float[2,3,4] x) => (float[6,4] y) {
            s = Shape(x)
            i0 = Constant<value=int64[1] {0}>()
            i1 = Constant<value=int64[1] {1}>()
            d0 = Gather<axis=0>(s, i0)
            d1 = Gather<axis=0>(s, i1)
            n = Mul(d0, d1)
            last = Constant<value=int64[1] {-1}>()
            target = Concat<axis=0>(n, last)
            y = Reshape(x, target) }""")
    result = optimize_and_compare(model, passes="fold_shapes,remove_unused")
    assert [op for op in op_types(result.model) if op != "Constant"] == ["Reshape"]


def test_fold_shapes_keeps_dynamic_dims_dynamic():
    model = parse(HEADER + """
        g (float[N,4] x) => (float[N,4] y) {
            s = Shape(x)
            y = Reshape(x, s) }""")
    result = optimize_and_compare(model, passes="fold_shapes")
    assert "Shape" in op_types(result.model)
    for n in (1, 5):
        feeds = {"x": np.ones((n, 4), np.float32)}
        assert run(result.model, feeds)[0].shape == (n, 4)


def test_fold_shapes_does_not_fold_float_math():
    model = parse(HEADER + """
        g (float[3] x) => (float[3] y) {
            a = Constant<value=float[3] {1, 4, 9}>()
            r = Sqrt(a)
            y = Add(x, r) }""")
    result = optimize_and_compare(model, passes="fold_shapes")
    assert "Sqrt" in op_types(result.model)


def test_evaluator_failure_is_skipped_not_raised():
    # The constant Reshape cannot be evaluated (6 elements into 4): the reason is recorded,
    # the node stays, and the rest of the graph is still folded.
    model = parse(HEADER + """
        g (float[4] x) => (float[4] y) {
            a = Constant<value=float[6] {1, 2, 3, 4, 5, 6}>()
            t = Constant<value=int64[1] {4}>()
            b = Reshape(a, t)
            c = Constant<value=float[4] {1, 2, 3, 4}>()
            d = Neg(c)
            e = Add(b, d)
            y = Add(x, e) }""")
    result = optimize(model, passes="fold_constants")
    assert "Reshape" in op_types(result.model) and "Neg" not in op_types(result.model)
    assert any("Reshape" in reason for reason in result.report.passes[0].skipped)


def test_folded_model_is_valid_for_checker():
    model = parse(HEADER + """
        g (float[3] x) => (float[3] y) {
            a = Constant<value=float[3] {1, 2, 3}>()
            b = Neg(a)
            y = Add(x, b) }""")
    result = optimize_and_compare(model, preset="O1")
    onnx.checker.check_model(to_proto(result.model), full_check=True)


def test_input_cap_refusals_are_reported():
    # Only Sqrt is refused for its input: Add reads a graph input, DequantizeLinear and
    # multi-output Split are never folded, and Transpose frees the only-used constant it
    # reads, so it folds past the cap.
    model = parse(HEADER + """
        g (float[4] x) => (float[4] y, float[2,2] z, float[4] d, float[2] u, float[2] v)
            <float[4] w = {1, 4, 9, 16}, float[2,2] t = {1, 2, 3, 4}, int8[4] q = {1, 2, 3, 4},
             float s = {0.5}> {
            r = Sqrt(w)
            a = Add(x, w)
            y = Add(a, r)
            z = Transpose(t)
            d = DequantizeLinear(q, s)
            u, v = Split(w) }""")
    feeds = random_feeds(model)
    ir_model = ir.serde.deserialize_model(model)
    fold = create_pass("fold_constants", {"max_input_bytes": 2})
    report = PassManager([fold]).run(ir_model)
    assert op_types(ir_model) == ["Sqrt", "Add", "Add", "DequantizeLinear", "Split"]
    assert report.passes[0].skipped == ["Sqrt '' not folded: input 'w' is 16 bytes > max_input_bytes 2"]
    assert_same(run(model, feeds), run(ir_model, feeds))


def test_report_says_what_fold_changed():
    model = parse(CONSTANT_SUBGRAPH)
    result = optimize_and_compare(model, passes="fold_constants")
    assert result.report.passes[0].changes == ["filled in the shapes of 4 value(s)", "folded 2 node(s)"]


def test_shapes_filled_in_are_the_only_change_reported_and_not_repeated():
    model = parse(HEADER + """
        g (float[3] x) => (float[3] y) {
            a = Relu(x)
            y = Neg(a) }""")
    feeds = random_feeds(model)
    ir_model = ir.serde.deserialize_model(model)
    fold = create_pass("fold_constants")
    first, second = PassManager([fold, fold]).run(ir_model).passes
    assert first.modified and first.changes == ["filled in the shapes of 1 value(s)"]
    assert not second.modified and second.changes == []
    assert ir_model.graph.node(0).outputs[0].shape == ir.Shape([3])
    assert_same(run(model, feeds), run(ir_model, feeds))


def test_fold_shapes_reports_what_it_folded():
    model = parse(HEADER + """
        g (float[2,3] x) => (float[6] y) {
            s = Shape(x)
            n = ReduceProd<keepdims=1>(s)
            y = Reshape(x, n) }""")
    result = optimize_and_compare(model, passes="fold_shapes")
    assert result.report.passes[0].changes == ["filled in the shapes of 2 value(s)", "folded 2 node(s)"]


def _backend_test_case(name: str) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """One of ONNX's own backend test models with its first input set."""
    folder = Path(onnx.__file__).parent / "backend" / "test" / "data" / "simple" / name
    model = onnx.load(folder / "model.onnx")
    tensors = [onnx.load_tensor(path) for path in sorted((folder / "test_data_set_0").glob("input_*.pb"))]
    return model, {tensor.name: onnx.numpy_helper.to_array(tensor) for tensor in tensors}


@pytest.mark.parametrize("name, op", [("test_sequence_model5", "ConcatFromSequence"),
                                      ("test_sequence_model8", "SplitToSequence")])
def test_sequence_rewrites_an_opset_12_model_lacks_are_skipped(name, op):
    # onnxscript rewrites these into opset-13 forms (Unsqueeze and Split with a second input).
    model, feeds = _backend_test_case(name)
    assert model.opset_import[0].version == 12
    result = optimize_and_compare(model, feeds, preset="O1")
    fold = next(entry for entry in result.report.passes if entry.name == "fold_constants")
    assert any(reason.startswith(f"{op} ") and "opset 12 lacks" in reason for reason in fold.skipped)


def test_sequence_rewrite_is_kept_where_the_opset_has_its_form():
    model = parse("""<ir_version: 8, opset_import: ["" : 18]>
        g (float[2,3] x, float[2,3] y) => (float[2,3,2] z) {
            s = SequenceConstruct(x, y)
            z = ConcatFromSequence<axis=-1, new_axis=1>(s) }""")
    result = optimize_and_compare(model, passes="fold_constants,remove_unused")
    assert "ConcatFromSequence" not in op_types(result.model)
    assert not result.report.passes[0].skipped


def test_a_folded_transpose_is_stored_in_c_order_with_every_element_in_place():
    # 130 x 70 is not a multiple of the copy's tiles; the result is compared element by element.
    weight = np.arange(130 * 70, dtype=np.float32).reshape(130, 70)
    graph = ir.Graph([ir.Input("x", ir.Shape([2, 130]), ir.TensorType(ir.DataType.FLOAT))], [], nodes=[],
                     opset_imports={"": 17}, name="g")
    w = ir.Value(name="w", const_value=ir.tensor(weight.T.copy()))
    graph.register_initializer(w)
    transposed = ir.node("Transpose", [w], attributes={"perm": [1, 0]})
    product = ir.node("MatMul", [graph.inputs[0], transposed.outputs[0]])
    graph.extend([transposed, product])
    graph.outputs.append(product.outputs[0])
    product.outputs[0].name, product.outputs[0].dtype = "y", ir.DataType.FLOAT
    product.outputs[0].shape = ir.Shape([2, 70])
    model = ir.Model(graph, ir_version=8)
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 130)).astype(np.float32)}
    result = optimize_and_compare(to_proto(model), feeds, passes="fold_constants,remove_unused")
    folded = next(iter(result.model.graph.initializers.values())).const_value.numpy()
    assert op_types(result.model) == ["MatMul"]
    assert folded.flags.c_contiguous and np.array_equal(folded, weight)


def test_a_result_that_decodes_its_constants_is_left_to_onnx_runtime():
    """Packed uint8 to int32 is 4x its constant (a codebook decoder: folding it would undo the
    compression of the file); float16 to float32 is 2x (convert_precision's weights: the same)."""
    packed = np.arange(1 << 16).astype(np.uint8)
    half = np.linspace(-1, 1, 1 << 15).astype(np.float16)
    model = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Cast", ["packed"], ["wide"], to=onnx.TensorProto.INT32),
         onnx.helper.make_node("Add", ["ids", "wide"], ["y"]),
         onnx.helper.make_node("Cast", ["half"], ["full"], to=onnx.TensorProto.FLOAT),
         onnx.helper.make_node("Add", ["x", "full"], ["z"])], "g",
        [onnx.helper.make_tensor_value_info("ids", onnx.TensorProto.INT32, [1 << 16]),
         onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1 << 15])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.INT32, [1 << 16]),
         onnx.helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, [1 << 15])],
        [onnx.numpy_helper.from_array(packed, "packed"), onnx.numpy_helper.from_array(half, "half")]),
        opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=8)
    result = optimize_and_compare(model, passes="fold_constants")
    assert op_types(result.model) == ["Cast", "Add", "Cast", "Add"]
    skipped = [reason for entry in result.report.passes for reason in entry.skipped]
    assert any("4x the constants it reads" in reason for reason in skipped)
    assert any("2x the constants it reads" in reason for reason in skipped)
