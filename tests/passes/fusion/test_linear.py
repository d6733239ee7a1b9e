"""Linear layers: 2-D MatMul + bias into Gemm; flatten → Gemm → unflatten into MatMul + bias; parallel MatMuls packed."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import op_types, optimize_and_compare, parse


def test_a_2d_matmul_and_bias_become_gemm_and_3d_stays():
    model = parse("""<ir_version: 9, opset_import: ["" : 18]>
        g (float[N, 4] x, float[N, 5, 4] s) => (float[N, 3] y, float[N, 5, 3] z)
          <float[4, 3] w = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}, float[3] b = {0.5, -1, 2}> {
            m = MatMul(x, w)
            y = Add(b, m)
            n = MatMul(s, w)
            z = Add(n, b) }""")
    feeds = {"x": np.ones((2, 4), np.float32), "s": np.ones((2, 5, 4), np.float32)}
    result = optimize_and_compare(model, feeds, passes="fuse_matmul_add")
    assert op_types(result.model) == ["Gemm", "MatMul", "Add"]


def _flattened(restore: str, trans_b: int = 0) -> str:
    weight = "float[3, 4] w = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}" if trans_b else \
             "float[4, 3] w = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}"
    return f"""<ir_version: 9, opset_import: ["" : 18]>
        g (float[B, S, 4] x) => (float[B, S, 3] y) <{weight}, float[3] b = {{0.5, -1, 2}}> {{
            flat_shape = Constant<value = int64[2] {{-1, 4}}>()
            flat = Reshape(x, flat_shape)
            g = Gemm<transB = {trans_b}>(flat, w, b)
            {restore}
            y = Reshape(g, back) }}"""


@pytest.mark.parametrize("trans_b", [0, 1])
def test_flatten_gemm_unflatten_becomes_matmul_and_bias(trans_b):
    restore = "lead = Shape<start = 0, end = 2>(x)\n three = Constant<value = int64[1] {3}>()\n " \
              "back = Concat<axis = 0>(lead, three)"
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 5, 4)).astype(np.float32)}
    result = optimize_and_compare(parse(_flattened(restore, trans_b)), feeds, passes="unflatten_gemm")
    assert [op for op in op_types(result.model) if op not in ("Constant", "Shape", "Concat")] == ["MatMul", "Add"]
    assert result.report.passes[0].changes == ["1 Gemm as MatMul + Add"]
    assert len(result.model.graph.initializers) == 2  # transB: the transposed weight replaces the old one


def test_a_restore_to_other_dims_is_refused():
    restore = "back = Constant<value = int64[3] {1, -1, 3}>()"  # folds the batch into the sequence
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 5, 4)).astype(np.float32)}
    result = optimize_and_compare(parse(_flattened(restore)), feeds, passes="unflatten_gemm")
    assert "Gemm" in op_types(result.model)
    assert "not provably back to the input's leading dims" in result.report.passes[0].skipped[0]


_PARALLEL = """<ir_version: 9, opset_import: ["" : 18]>
    g (float[B, S, 4] x) => (float[B, S, 3] q, float[B, S, 3] k, float[B, S, 2] v, float[B, S, 3] o)
      <float[4, 3] wq = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}, float[3] bq = {0.5, -1, 2},
       float[4, 3] wk = {-1, 2, -3, 4, -5, 6, -7, 8, -9, 10, -11, 12}, float[3] bk = {1, 1, -1},
       float[4, 2] wv = {0.5, 1, 1.5, 2, 2.5, 3, 3.5, 4}, float[5, 3] wo = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}> {
        mq = MatMul(x, wq)
        q1 = Add(mq, bq)
        q = Relu(q1)
        mk = MatMul(x, wk)
        k1 = Add(bk, mk)
        k = Neg(k1)
        v1 = MatMul(x, wv)
        v = Sigmoid(v1)
        pad = Constant<value = int64[6] {0, 0, 1, 0, 0, 0}>()
        x5 = Pad(x, pad)
        o = MatMul(x5, wo) }"""


def test_parallel_matmuls_of_one_input_become_one_matmul_and_a_split():
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 5, 4)).astype(np.float32)}
    result = optimize_and_compare(parse(_PARALLEL), feeds, passes="pack_parallel_matmuls", target="portable")
    assert [op for op in op_types(result.model) if op != "Constant"].count("MatMul") == 2  # packed + o
    assert "Split" in op_types(result.model)
    assert not {"wq", "wk", "wv", "bq", "bk"} & set(result.model.graph.initializers)
    assert result.report.passes[0].changes == ["3 MatMuls packed"]


def test_packing_is_for_the_portable_target():
    feeds = {"x": np.ones((2, 5, 4), np.float32)}
    result = optimize_and_compare(parse(_PARALLEL), feeds, passes="pack_parallel_matmuls", target="ort")
    assert "Split" not in op_types(result.model)
