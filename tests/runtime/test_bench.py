"""bench: every field on the CPU provider, interleaving, reports and the plot."""

from __future__ import annotations

import json
import math

import onnx
import pytest

import graphopt
from graphopt.errors import InputError
from graphopt.runtime.bench import plot
from tests.runtime.models import text_classifier


@pytest.fixture
def two_models(tmp_path):
    first, second = tmp_path / "a.onnx", tmp_path / "b.onnx"
    onnx.save(text_classifier(), first)
    graphopt.optimize(first, second)
    return first, second


def test_bench_produces_every_field(two_models, tmp_path):
    result = graphopt.bench(list(two_models), runs=7, warmup=2, shapes={"input_ids": (4, 8)})
    assert result.ep == "cpu" and result.input_shapes == {"input_ids": [4, 8], "attention_mask": [4, 8]}
    assert result.peak_rss_bytes > 0
    for entry in result.models:
        data = entry.to_dict()
        assert data["runs"] == 7 and len(data["latencies_ms"]) == 7 and data["batch_size"] == 4
        for key in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "throughput_per_s",
                    "session_seconds", "file_bytes", "rss_after_session_bytes"):
            assert data[key] is not None and math.isfinite(data[key]) and data[key] >= 0, key
        assert entry.p50_ms <= entry.p90_ms <= entry.p99_ms
    assert result.ratios()[0] == 1.0
    assert json.loads(result.to_json())["models"][1]["model"].endswith("b.onnx")
    markdown = result.to_markdown()
    assert "| p50 ms |" in markdown and "1.00x" in markdown
    png = tmp_path / "latency.png"
    plot(result, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_by_seconds(two_models):
    result = graphopt.bench([two_models[0]], seconds=0.2, warmup=1)
    assert len(result.models[0].latencies_ms) >= 1


def test_bench_refuses_models_with_different_inputs(two_models, tmp_path):
    other = text_classifier()
    other.graph.input[1].name = "mask"
    other.graph.node[1].input[0] = "mask"
    path = tmp_path / "other.onnx"
    onnx.save(other, path)
    with pytest.raises(InputError, match="interleaved models must share a signature"):
        graphopt.bench([two_models[0], path], runs=1, warmup=0)
