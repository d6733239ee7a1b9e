"""graphopt.dims: symbolic dims named only where an op proves them."""

from __future__ import annotations

import onnx
import onnx_ir as ir
import pytest

from graphopt import dims
from graphopt.model import from_proto


@pytest.mark.parametrize("shapes, expected", [
    ([["B", "S", 4], ["B", "S", 4]], ["B", "S", 4]),
    ([["B", "S", 4], [1, "S", 4]], ["B", "S", 4]),
    ([["B", "S", 4], ["P", "S", 4]], [None, "S", 4]),      # either may be 1: nothing proven
    ([["B", 4], [3, 4]], [3, 4]),                          # a valid model has B == 3 or B == 1
    ([[None, 4], [3, 4]], [3, 4]),
    ([[None, 4], [1, 4]], [None, 4]),
    ([["S", 4], [2, "S", 4]], [2, "S", 4]),
])
def test_broadcast_keeps_only_what_the_rules_force(shapes, expected):
    assert dims.broadcast(shapes) == expected


def _graph(text: str) -> ir.Graph:
    return from_proto(onnx.parser.parse_model('<ir_version: 9, opset_import: ["" : 17]>' + text)).graph


def test_reshape_targets_built_from_shape_slices_are_followed():
    graph = _graph("""
        g (float[B,S,768] x) => (float[B,S,12,64] heads, float[B,S,768] merged) {
            dims = Shape(x)
            lead = Shape<start = 0, end = 2>(x)
            head_shape = Constant<value = int64[2] {12, 64}>()
            target = Concat<axis = 0>(lead, head_shape)
            heads = Reshape(x, target)
            back = Constant<value = int64[3] {0, 0, -1}>()
            merged = Reshape(heads, back) }""")
    for node in graph:
        for value in node.outputs:
            value.shape = None  # as a rewrite leaves them
    dims.name_dims(graph)
    assert dims.dims_of(graph.outputs[0]) == ["B", "S", 12, 64]
    assert dims.dims_of(graph.outputs[1]) == ["B", "S", 768]


def test_minus_one_is_solved_when_the_other_dims_cancel():
    assert dims._reshape(["B", "S", 12, 64], [0, 0, -1], allowzero=False) == ["B", "S", 768]
    assert dims._reshape(["B", "S"], [-1, "S"], allowzero=False) == ["B", "S"]
    assert dims._reshape(["B", "S"], [-1, 4], allowzero=False) == [None, 4]


def test_unproven_dims_get_made_up_names_that_forget_removes():
    graph = _graph("""
        g (float[N,4] x) => (float[N,4] y) { y = Relu(x) }""")
    value = graph.outputs[0]
    graph.inputs[0].shape = ir.Shape([ir.SymbolicDim(None), 4])
    value.shape = ir.Shape([ir.SymbolicDim(None), 4])
    invented = dims.name_dims(graph)
    assert dims.dims_of(value) == dims.dims_of(graph.inputs[0]) and dims.dims_of(value)[0] in invented
    dims.forget_dims(graph, invented)
    assert dims.dims_of(value) == [None, 4] and dims.dims_of(graph.inputs[0]) == [None, 4]


def test_min_of_a_slice_broadcasts_to_the_full_dim():
    assert dims.broadcast([["B", "S", 4], [1, "Min(512, S)", 4]]) == ["B", "S", 4]
    assert dims.broadcast([["B", "S", 4], [1, "Min(512, T)", 4]]) == ["B", None, 4]


def test_torchscript_position_ids_and_mask_plumbing_are_followed():
    # position ids = buffer[:, :S]; an Expand target through Where(Equal(shape, -1), 1, shape);
    # Range(0, B) unsqueezed; a packed projection split in three.
    graph = _graph("""
        g (int64[B,S] ids, float[B,S,12] qkv, int64[1,512] buffer) => (int64[B,S] expanded, int64[B,1,1,1] rows,
                                                                        float[B,S,4] q, int64[1,S] pos) {
            dims = Shape(ids)
            one = Constant<value = int64 {1}>()
            seq = Gather<axis = 0>(dims, one)
            zero = Constant<value = int64[1] {0}>()
            axis = Constant<value = int64[1] {1}>()
            end = Unsqueeze(seq, zero)
            pos = Slice(buffer, zero, end, axis)
            two = Constant<value = int64[1] {2}>()
            ones = ConstantOfShape<value = int64[1] {1}>(two)
            minus = Constant<value = int64 {-1}>()
            all_minus = Mul(ones, minus)
            is_minus = Equal(dims, all_minus)
            target = Where(is_minus, ones, dims)
            expanded = Expand(pos, target)
            zero_scalar = Constant<value = int64 {0}>()
            batch = Gather<axis = 0>(dims, zero_scalar)
            range = Range(zero_scalar, batch, one)
            axes = Constant<value = int64[3] {1, 2, 3}>()
            rows = Unsqueeze(range, axes)
            q, k, v = Split<axis = 2>(qkv) }""")
    for node in graph:
        for value in node.outputs:
            value.shape = None
    dims.name_dims(graph)
    assert dims.dims_of(graph.outputs[3]) == [1, "Min(512, S)"]
    assert dims.dims_of(graph.outputs[0]) == ["B", "S"]
    assert dims.dims_of(graph.outputs[1]) == ["B", 1, 1, 1]
    assert dims.dims_of(graph.outputs[2]) == ["B", "S", 4]
