"""Cleanup passes: dead code, lifting, dedupe, CSE and sorting keep outputs identical."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir

from graphopt import optimize
from tests.helpers import op_types, optimize_and_compare, parse, run, to_proto

HEADER = '<ir_version: 8, opset_import: ["" : 17]>'


def test_remove_unused_drops_dead_nodes_constants_and_initializers():
    model = parse(HEADER + """
        g (float[3] x) => (float[3] y) <float[3] unused_w = {1, 2, 3}> {
            dead = Neg(x)
            c = Constant<value=float {2.0}>()
            y = Relu(x) }""")
    result = optimize_and_compare(model, passes="remove_unused")
    assert op_types(result.model) == ["Relu"]
    assert not result.model.graph.initializers


def test_a_body_weight_folded_into_another_is_not_kept_twice():
    """An If branch reads its weight w as Reshape(w) and, in an inner If whose condition is a constant,
    in the branch never taken: O3 inlines the inner If and folds Reshape(w), and the branch it dropped
    still held a use of w, so the body kept w beside its folded copy (O3 grew silero-vad's file from
    2.3 to 3.3 MB)."""
    from onnx import TensorProto, helper, numpy_helper

    def out(name):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, [2, 64])

    weight = np.random.default_rng(0).standard_normal(4096).astype(np.float32)
    taken = helper.make_graph([helper.make_node("Reshape", ["w", "shape"], ["square"]),
                               helper.make_node("MatMul", ["x", "square"], ["y_taken"])], "taken", [], [out("y_taken")])
    dropped = helper.make_graph([helper.make_node("Reshape", ["w", "shape"], ["square2"]),
                                 helper.make_node("MatMul", ["square2", "x_t"], ["y_t"]),
                                 helper.make_node("Transpose", ["y_t"], ["y_dropped"])], "dropped", [], [out("y_dropped")])
    then_branch = helper.make_graph(
        [helper.make_node("Constant", [], ["always"], value=helper.make_tensor("always", TensorProto.BOOL, [], [True])),
         helper.make_node("Transpose", ["x"], ["x_t"]),
         helper.make_node("If", ["always"], ["y1"], then_branch=taken, else_branch=dropped)],
        "then", [], [out("y1")],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(np.array([64, 64], np.int64), "shape")])
    else_branch = helper.make_graph([helper.make_node("Neg", ["x"], ["y2"])], "else", [], [out("y2")])
    graph = helper.make_graph([helper.make_node("If", ["cond"], ["y"], then_branch=then_branch, else_branch=else_branch)],
                              "g", [helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
                                    helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 64])], [out("y")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = np.random.default_rng(1).standard_normal((2, 64)).astype(np.float32)
    for cond in (True, False):
        result = optimize_and_compare(model, {"cond": np.array(cond), "x": x}, preset="O3")
    weights = [value.const_value.size for graph in result.model.graphs() for value in graph.initializers.values()]
    assert sorted(weights)[-2:] != [4096, 4096] and len(to_proto(result.model).SerializeToString()) < weight.nbytes * 1.1


def test_remove_unused_keeps_unused_graph_inputs():
    model = parse(HEADER + "g (float[3] x, float[3] extra) => (float[3] y) { y = Relu(x) }")
    result = optimize_and_compare(model, passes="remove_unused")
    assert [v.name for v in result.model.graph.inputs] == ["x", "extra"]


def test_lift_constants_turns_constants_into_initializers():
    model = parse(HEADER + """
        g (float[3] x) => (float[3] y) {
            c = Constant<value=float[3] {1, 2, 3}>()
            y = Add(x, c) }""")
    result = optimize_and_compare(model, passes="lift_constants")
    assert op_types(result.model) == ["Add"]
    assert list(result.model.graph.initializers) == ["c"]


def test_lift_constants_skips_ir_version_3():
    model = parse("""<ir_version: 3, opset_import: ["" : 8]>
        g (float[3] x) => (float[3] y) {
            c = Constant<value=float[3] {1, 2, 3}>()
            y = Add(x, c) }""")
    result = optimize_and_compare(model, passes="lift_constants")
    assert "Constant" in op_types(result.model)
    assert "IR version 3" in result.report.passes[0].skipped[0]


def _weights_model(values: dict[str, np.ndarray], input_names: tuple[str, ...] = ()) -> onnx.ModelProto:
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4])
    inits = [onnx.numpy_helper.from_array(array, name) for name, array in values.items()]
    nodes, previous = [], "x"
    for index, name in enumerate(values):
        output = "y" if index == len(values) - 1 else f"t{index}"
        nodes.append(onnx.helper.make_node("Add", [previous, name], [output]))
        previous = output
    inputs = [x] + [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [4]) for n in input_names]
    graph = onnx.helper.make_graph(nodes, "g", inputs, [y], inits)
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=8)


def test_dedupe_merges_identical_weights_only():
    a = np.arange(4, dtype=np.float32)
    near = a.copy()
    near[-1] += 1e-6
    model = _weights_model({"w0": a, "w1": a.copy(), "w2": near, "w3": a.reshape(4).copy()})
    result = optimize_and_compare(model, passes="dedupe_initializers,remove_unused")
    assert sorted(result.model.graph.initializers) == ["w0", "w2"]


def test_dedupe_distinguishes_same_edges_different_middle():
    a = np.zeros(1000, dtype=np.float32)
    b = a.copy()
    b[500] = 1.0  # same first and last bytes: the sample collides, the full comparison does not
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1000])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1000])
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Add", ["x", "a"], ["t"]), onnx.helper.make_node("Add", ["t", "b"], ["y"])],
        "g", [x], [y], [onnx.numpy_helper.from_array(a, "a"), onnx.numpy_helper.from_array(b, "b")])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=8)
    result = optimize_and_compare(model, passes="dedupe_initializers")
    assert sorted(result.model.graph.initializers) == ["a", "b"]


def test_dedupe_never_merges_graph_inputs():
    a = np.arange(4, dtype=np.float32)
    model = _weights_model({"w0": a, "w1": a.copy()}, input_names=("w1",))
    result = optimize(model, passes="dedupe_initializers")
    assert sorted(result.model.graph.initializers) == ["w0", "w1"]
    feeds = {"x": np.ones(4, np.float32), "w1": np.full(4, 7, np.float32)}
    np.testing.assert_array_equal(run(model, feeds)[0], run(result.model, feeds)[0])


def test_cse_merges_repeated_computation():
    model = parse(HEADER + """
        g (float[3] x) => (float[3] y) {
            a = Exp(x)
            b = Exp(x)
            y = Add(a, b) }""")
    result = optimize_and_compare(model, passes="eliminate_common_subexpressions,remove_unused")
    assert op_types(result.model) == ["Exp", "Add"]


def test_cse_keeps_random_ops_apart():
    model = parse(HEADER + """
        g (float[3] x) => (float[3] y) {
            a = RandomUniformLike(x)
            b = RandomUniformLike(x)
            y = Sub(a, b) }""")
    result = optimize(model, passes="eliminate_common_subexpressions")
    assert op_types(result.model).count("RandomUniformLike") == 2


def test_topological_sort_orders_an_unsorted_graph():
    model = parse(HEADER + """
        g (float[3] x) => (float[3] y) {
            a = Relu(x)
            y = Neg(a) }""")
    proto = onnx.ModelProto()
    proto.CopyFrom(model)
    nodes = list(proto.graph.node)
    del proto.graph.node[:]
    proto.graph.node.extend(reversed(nodes))
    ir_model = ir.serde.deserialize_model(proto)
    from graphopt.passes import create_pass
    assert create_pass("topological_sort")(ir_model).modified
    assert op_types(ir_model) == ["Relu", "Neg"]
    feeds = {"x": np.array([-1, 0, 2], np.float32)}
    np.testing.assert_array_equal(run(to_proto(ir_model), feeds)[0], run(model, feeds)[0])


def test_cse_keeps_the_graph_outputs_declared_type():
    """Found by the fuzzer: onnx-ir's CSE renamed an untyped duplicate into the graph output."""
    model = parse(HEADER + """
        g (float[3] x) => (float[3] y) {
            s = Sigmoid(x)
            y = Sigmoid(x)
            unused = Add(s, y) }""")
    result = optimize_and_compare(model, passes="eliminate_common_subexpressions,remove_unused")
    output = result.model.graph.outputs[0]
    assert output.name == "y" and output.dtype is not None and output.shape is not None
    onnx.checker.check_model(to_proto(result.model), full_check=True)
