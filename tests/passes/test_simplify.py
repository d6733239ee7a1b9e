"""collapse_shape_ops: chains of shape ops become one op with identical results."""

from __future__ import annotations

from tests.helpers import op_types, optimize_and_compare, parse

HEADER = '<ir_version: 8, opset_import: ["" : 17]>'


def _ops(result):
    return [op for op in op_types(result.model) if op != "Constant"]


def test_reshape_of_reshape_becomes_one_reshape():
    model = parse(HEADER + """
        g (float[2,3,4] x) => (float[4,6] y) {
            a = Constant<value=int64[2] {6, 4}>()
            r = Reshape(x, a)
            b = Constant<value=int64[2] {4, 6}>()
            y = Reshape(r, b) }""")
    assert _ops(optimize_and_compare(model, passes="collapse_shape_ops,remove_unused")) == ["Reshape"]


def test_transpose_pair_becomes_one_transpose():
    model = parse(HEADER + """
        g (float[2,3,4] x) => (float[4,2,3] y) {
            t = Transpose<perm=[1,2,0]>(x)
            y = Transpose<perm=[1,2,0]>(t) }""")
    assert _ops(optimize_and_compare(model, passes="collapse_shape_ops,remove_unused")) == ["Transpose"]


def test_unsqueeze_pair_becomes_one_unsqueeze():
    model = parse(HEADER + """
        g (float[3] x) => (float[1,3,1] y) {
            a = Constant<value=int64[1] {0}>()
            u = Unsqueeze(x, a)
            b = Constant<value=int64[1] {2}>()
            y = Unsqueeze(u, b) }""")
    assert _ops(optimize_and_compare(model, passes="collapse_shape_ops,remove_unused")) == ["Unsqueeze"]


def test_runtime_reshape_target_with_known_output_becomes_constant():
    model = parse(HEADER + """
        g (float[N,6] x) => (float[N,2,3] y) {
            s = Shape(x)
            z = Constant<value=int64[1] {0}>()
            o = Constant<value=int64[1] {1}>()
            n = Slice(s, z, o)
            rest = Constant<value=int64[2] {2, 3}>()
            target = Concat<axis=0>(n, rest)
            y = Reshape(x, target) }""")
    result = optimize_and_compare(model, passes="fold_shapes,collapse_shape_ops,remove_unused")
    assert _ops(result) == ["Reshape"]
