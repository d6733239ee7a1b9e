"""channel_stats: per-channel peak, mean square and (on request) the Gram matrix, over input sets."""

from __future__ import annotations

import numpy as np

from graphopt import model as model_io
from graphopt.runtime.activations import channel_stats, histograms
from graphopt.runtime.histograms import Histogram
from tests.helpers import parse

_RNG = np.random.default_rng(5)
_W = _RNG.standard_normal((4, 3)).astype(np.float32)


def _model():
    weights = ", ".join(repr(float(item)) for item in _W.reshape(-1))
    return model_io.from_proto(parse(f"""<ir_version: 9, opset_import: ["" : 18]>
        g (float[B, S, 4] x) => (float[B, S, 3] y) <float[4, 3] w = {{{weights}}}> {{
            h = MatMul(x, w)
            y = Relu(h)
        }}"""))


def test_statistics_over_two_input_sets_match_numpy():
    inputs = [_RNG.standard_normal((2, 5, 4)).astype(np.float32) * np.float32([1, 10, 0.1, 3]),
              _RNG.standard_normal((1, 3, 4)).astype(np.float32)]
    stats = channel_stats(_model(), ["x", "h"], [{"x": x} for x in inputs], gram=True)
    for name, rows in (("x", np.concatenate([x.reshape(-1, 4) for x in inputs])),
                       ("h", np.concatenate([(x @ _W).reshape(-1, 3) for x in inputs]))):
        rows = rows.astype(np.float64)
        assert stats[name].count == 13
        np.testing.assert_allclose(stats[name].peak, np.abs(rows).max(axis=0), rtol=1e-6)
        np.testing.assert_allclose(stats[name].mean_square, np.mean(rows ** 2, axis=0), rtol=1e-5)
        np.testing.assert_allclose(stats[name].gram, rows.T @ rows / len(rows), rtol=1e-5, atol=1e-6)
        assert stats[name].gram.dtype == np.float64


def test_the_gram_matrix_is_off_by_default():
    stats = channel_stats(_model(), ["x"], [{"x": np.ones((1, 2, 4), np.float32)}])
    assert stats["x"].gram is None
    np.testing.assert_array_equal(stats["x"].mean_square, np.ones(4))


def test_histograms_stream_over_input_sets_as_one_histogram_of_all_values():
    inputs = [_RNG.standard_normal((2, 5, 4)).astype(np.float32) * scale for scale in (0.1, 1, 30)]
    seen = []
    result = histograms(_model(), ["x", "h", "y", "missing"], [{"x": x} for x in inputs], bins=64,
                        progress=lambda done, total: seen.append((done, total)))
    assert sorted(result) == ["h", "x", "y"]
    assert seen == [(1, 3), (2, 3), (3, 3)]  # one chunk of values, three runs
    for name, arrays in (("x", inputs), ("h", [x @ _W for x in inputs]), ("y", [np.maximum(x @ _W, 0) for x in inputs])):
        want = Histogram.of(np.concatenate([array.reshape(-1) for array in arrays]), bins=64)
        got = result[name]
        assert got.limit == want.limit and got.low == want.low and got.high == want.high
        np.testing.assert_array_equal(got.counts, want.counts)


def test_a_big_model_is_written_once_and_each_chunk_loads_the_file(monkeypatch):
    """Above SAVE_ONCE_BYTES the chunks' sessions load one saved file (external data): the same
    histograms, one chunk of a value per run as before."""
    from graphopt.runtime import activations

    inputs = [{"x": _RNG.standard_normal((2, 5, 4)).astype(np.float32)} for _ in range(3)]
    in_memory = histograms(_model(), ["x", "h", "y"], inputs, bins=64)
    monkeypatch.setattr(activations, "SAVE_ONCE_BYTES", 0)
    monkeypatch.setattr(activations, "VALUES_PER_RUN", 1)  # three chunks
    saved = []
    real = activations._file_runs
    monkeypatch.setattr(activations, "_file_runs", lambda path, *rest: saved.append(path) or real(path, *rest))
    from_file = histograms(_model(), ["x", "h", "y"], inputs, bins=64)
    assert len(saved) == 3 and len(set(saved)) == 1 and not saved[0].exists()  # one file, removed after
    assert sorted(from_file) == sorted(in_memory)
    for name in in_memory:
        np.testing.assert_array_equal(from_file[name].counts, in_memory[name].counts)
