"""cluster_weights: k-means codebooks stored as packed indices; ONNX Runtime decodes them (standard ops) to
exactly table[index], folds the decoder at session load, and the file shrinks to about bits/32."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import graphopt
from graphopt import model as model_io
from graphopt.errors import InputError
from graphopt.model import model_opset
from graphopt.passes import create_pass
from graphopt.passes.compress.codebook import assign_with_feedback, kmeans
from graphopt.pipeline import PassManager
from tests.helpers import op_types, parse, run, statistics, to_proto

_RNG = np.random.default_rng(5)
_W = _RNG.standard_normal((64, 128)).astype(np.float32)
_E = _RNG.standard_normal((100, 64)).astype(np.float32)
_K = _RNG.standard_normal((16, 8, 3, 3)).astype(np.float32)


def _floats(array: np.ndarray) -> str:
    return ", ".join(repr(float(item)) for item in array.reshape(-1))


def _model(opset: int = 18) -> onnx.ModelProto:
    """ids -> embedding (Gather) -> MatMul; and a Conv on an image."""
    model = parse(f"""<ir_version: 9, opset_import: ["" : {opset}]>
        g (int64[N] ids, float[1, 8, 6, 6] image) => (float[N, 128] y, float[1, 16, 4, 4] z)
          <float[100, 64] table = {{{_floats(_E)}}}, float[64, 128] w = {{{_floats(_W)}}},
           float[16, 8, 3, 3] k = {{{_floats(_K)}}}> {{
            e = Gather(table, ids)
            y = MatMul(e, w)
            z = Conv(image, k) }}""")
    for node, name in zip(model.graph.node, ("embed", "dense", "conv")):
        node.name = name
    return model


def _feeds() -> dict[str, np.ndarray]:
    return {"ids": np.array([0, 7, 99, 42], np.int64), "image": _RNG.standard_normal((1, 8, 6, 6)).astype(np.float32)}


def _cluster(model: onnx.ModelProto, **options):
    ir_model = model_io.from_proto(model)
    report = PassManager([create_pass("cluster_weights", {"min_weights": 1000, **options})]).run(ir_model)
    return ir_model, report.passes[0]


def _shared(values: np.ndarray, bits: int, axis: int = 0, group: int = 0) -> np.ndarray:
    """What clustering makes of `values`: each group of output channels (along `axis`) its own codebook."""
    channels = np.moveaxis(values, axis, 0)
    step = group or channels.shape[0]
    parts = []
    for start in range(0, channels.shape[0], step):
        table, index = kmeans(channels[start:start + step].ravel(), 1 << bits)
        parts.append(table[index].reshape(channels[start:start + step].shape))
    return np.moveaxis(np.concatenate(parts), 0, axis)


def test_one_dimensional_kmeans_finds_separated_clusters_and_assigns_the_nearest():
    centres = np.array([-3.0, -1.0, 0.5, 4.0])
    values = np.repeat(centres, 500) + np.random.default_rng(0).normal(0, 0.05, 2000)
    table, index = kmeans(values, 4)
    np.testing.assert_allclose(table, centres, atol=0.01)
    assert np.array_equal(index, np.argmin(np.abs(values[:, None] - table[None, :]), axis=1))


_MIX = np.random.default_rng(3).standard_normal((64, 64)) * np.random.default_rng(4).uniform(0.1, 3, 64)


def _correlated_inputs(count: int, seed: int = 5) -> np.ndarray:
    """Samples of one distribution of correlated 64-wide inputs of unequal scales."""
    return np.random.default_rng(seed).standard_normal((count, 64)) @ _MIX


def test_error_feedback_changes_the_layers_output_less_than_the_nearest_value():
    x = _correlated_inputs(4000)
    gram = x.T @ x / len(x)
    table, nearest = kmeans(_W.ravel(), 8, weights=np.broadcast_to(np.diag(gram)[:, None], _W.shape).ravel())
    chosen = assign_with_feedback(_W, table[None].astype(np.float64), np.zeros(128, np.int64), gram)
    assert chosen.shape == _W.shape and chosen.min() >= 0 and chosen.max() < table.size

    def output_error(index: np.ndarray) -> float:
        return float(np.linalg.norm(x @ (_W - table[index.reshape(_W.shape)])) / np.linalg.norm(x @ _W))

    # the codebook is the same; only which entry each weight takes differs
    assert output_error(chosen) < 0.9 * output_error(nearest)  # 0.156 against 0.185
    held_out = _correlated_inputs(1000, seed=6)  # the same distribution, samples the Gram matrix never saw
    assert np.linalg.norm(held_out @ (_W - table[chosen])) < np.linalg.norm(held_out @ (_W - table[nearest.reshape(_W.shape)]))


def test_a_measured_layer_is_decoded_to_the_fed_back_entries_of_its_codebook():
    x = _correlated_inputs(4000).astype(np.float32)
    gram = x.astype(np.float64).T @ x / len(x)
    pass_ = create_pass("cluster_weights", {"bits": 3, "group": 128, "min_weights": 1000, "exclude": "embed;conv"})
    pass_.statistics = statistics(grams={"e": gram}, mean_squares={"e": np.diag(gram)})
    model = model_io.from_proto(_model())
    PassManager([pass_]).run(model)
    table, _ = kmeans(_W.T.ravel(), 8, weights=np.broadcast_to(np.diag(gram), (128, 64)).ravel())
    weight = table[assign_with_feedback(_W, table[None].astype(np.float64), np.zeros(128, np.int64), gram)]
    feeds = _feeds()
    e = _E[feeds["ids"]]
    np.testing.assert_allclose(run(model, feeds)[0], e @ weight, rtol=1e-4, atol=1e-4)
    assert "error feedback on its inputs' Gram matrix" in pass_.outcomes[1].detail


@pytest.mark.parametrize("opset", [14, 18])  # the decoder adds uint8s: opset 14
def test_onnx_runtime_decodes_every_weight_to_its_codebook_value(opset):
    model, report = _cluster(_model(opset), bits=3)
    feeds = _feeds()
    y, z = run(model, feeds)
    # as many codebooks as cost at most 1/32 of the packed indices: 8 floats per codebook against 3 bits a
    # value — the table's 64 columns of 100 values two of 32, the MatMul's 128 output channels of 64 two of
    # 64, the Conv's 16 channels of 72 one
    e = _shared(_E, 3, axis=1, group=32)[feeds["ids"]]
    np.testing.assert_allclose(y, e @ _shared(_W, 3, axis=1, group=64), rtol=1e-4, atol=1e-4)
    want_z = run(parse(f"""<ir_version: 9, opset_import: ["" : 18]>
        g (float[1, 8, 6, 6] image) => (float[1, 16, 4, 4] z) <float[16, 8, 3, 3] k = {{{_floats(_shared(_K, 3))}}}> {{
            z = Conv(image, k) }}"""), {"image": feeds["image"]})[0]
    np.testing.assert_allclose(z, want_z, rtol=1e-4, atol=1e-4)
    assert [(o.layer, o.form) for o in report.outcomes] == [("embed", "3-bit codebook"), ("dense", "3-bit codebook"),
                                                             ("conv", "3-bit codebook")]
    assert report.outcomes[1].bytes_after == 64 * 128 * 3 // 8 + 2 * 8 * 4  # packed indices and two tables
    assert [o.detail.split(",")[0] for o in report.outcomes] == ["2 codebook(s) of 8", "2 codebook(s) of 8",
                                                                 "1 codebook(s) of 8"]


def test_output_channel_groups_get_their_own_codebooks():
    model, report = _cluster(_model(), bits=2, group=5, exclude="embed;dense")  # 16 channels: 5, 5, 5, 1
    feeds = _feeds()
    _, z = run(model, feeds)
    kernel = _shared(_K, 2, group=5)
    assert len(np.unique(kernel)) > 4  # four codebooks of four values
    want = run(parse(f"""<ir_version: 9, opset_import: ["" : 18]>
        g (float[1, 8, 6, 6] image) => (float[1, 16, 4, 4] z) <float[16, 8, 3, 3] k = {{{_floats(kernel)}}}> {{
            z = Conv(image, k) }}"""), {"image": feeds["image"]})[0]
    np.testing.assert_allclose(z, want, rtol=1e-4, atol=1e-4)
    assert report.outcomes[-1].detail.startswith("4 codebook(s) of 4")


def test_embedding_tables_take_their_own_width():
    model, report = _cluster(_model(), bits=5, table_bits=3, exclude="conv")
    y, _ = run(model, _feeds())
    e = _shared(_E, 3, axis=1, group=32)[_feeds()["ids"]]  # the table's codebooks as at 3 bits
    np.testing.assert_allclose(y, e @ _shared(_W, 5, axis=1), rtol=1e-4, atol=1e-4)
    assert [(o.layer, o.form, o.reason) for o in report.outcomes if o.changed] == [
        ("embed", "3-bit codebook", "table_bits=3, an embedding table's width"), ("dense", "5-bit codebook", "")]


def test_onnx_runtime_folds_the_decoder_at_load_and_the_file_shrinks(tmp_path):
    model, _ = _cluster(_model(), bits=4)
    path = tmp_path / "clustered.onnx"
    model_io.save(model, path)
    assert path.stat().st_size < 0.25 * _model().ByteSize()  # 4/32 of the weights, and the decoders' nodes
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(tmp_path / "loaded.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    assert sorted(op_types(onnx.load(tmp_path / "loaded.onnx"))) == ["Conv", "Gather", "MatMul"]  # decoders folded
    assert "Mod" in op_types(to_proto(model))


def test_the_pipeline_judges_it_and_the_size_guard_counts_the_packed_file():
    feeds = _feeds()
    result = graphopt.optimize(_model(12), passes=["cluster_weights:bits=4:min_weights=1000"], inputs=feeds,
                               validate=True, check_speed=False)
    assert result.validation.passed and len(result.changed) == 3
    # random weights: 4 bits leave a relative RMS error of ~0.09, and the fallback gives the layers that
    # cost the cosine most 6 bits
    assert {outcome.form for outcome in result.outcomes} <= {"4-bit codebook", "6-bit codebook"}
    assert result.size.ratio < 0.25
    assert model_opset(result.model) == 14  # converted up from 12 for the decoder's uint8 arithmetic


@pytest.mark.parametrize("options, message", [
    ({"bits": 1}, "bits must be 2 to 8"),
    ({"bits": 9}, "bits must be 2 to 8"),
    ({"group": -1}, "group must be 0"),
    ({"table_bits": 9}, "table_bits must be 2 to 8"),
])
def test_bad_options_are_clear_errors(options, message):
    with pytest.raises(InputError, match=message):
        create_pass("cluster_weights", options)


def test_optimizing_a_clustered_model_again_keeps_its_file_small(tmp_path):
    """O3's constant folding leaves the decoders to ONNX Runtime: folding them would write the float
    weights back into the file."""
    weight = _RNG.standard_normal((256, 256)).astype(np.float32)
    model = parse(f"""<ir_version: 9, opset_import: ["" : 18]>
        g (float[4, 256] x) => (float[4, 256] y) <float[256, 256] w = {{{_floats(weight)}}}> {{
            y = MatMul(x, w) }}""")
    clustered, _ = _cluster(model, bits=4)
    model_io.save(clustered, tmp_path / "clustered.onnx")
    again = graphopt.optimize(tmp_path / "clustered.onnx", tmp_path / "again.onnx", preset="O3")
    assert (tmp_path / "again.onnx").stat().st_size <= 1.05 * (tmp_path / "clustered.onnx").stat().st_size
    assert "Mod" in op_types(to_proto(again.model))
    feeds = {"x": _RNG.standard_normal((4, 256)).astype(np.float32)}
    np.testing.assert_allclose(run(again.model, feeds)[0], run(clustered, feeds)[0], rtol=1e-5, atol=1e-5)
