"""bench: every field on the CPU provider, time slicing, sweeps, concurrency, reports and plots.

No test asserts a time: they check the plumbing (which runs happen, in which order, what is
reported), never how fast anything was.
"""

from __future__ import annotations

import json
import math
import threading
import time

import onnx
import pytest

import graphopt
from graphopt.errors import InputError
from graphopt.runtime import bench as bench_module
from graphopt.runtime import bench_report
from graphopt.runtime.bench_report import plot, sweep_labels
from graphopt.runtime.inputs import parse_sweep
from graphopt.units import human_bytes
from tests.runtime.models import fixed_reshape, text_classifier

METADATA_FIELDS = ("date", "graphopt_version", "onnxruntime_version", "cpu_model", "logical_cpus",
                   "physical_cores", "ep", "threads", "inter_op_threads", "execution_mode", "spinning",
                   "graph_optimization_level", "session_config", "timing", "warmup", "runs", "concurrency")


@pytest.fixture
def two_models(tmp_path):
    first, second = tmp_path / "a.onnx", tmp_path / "b.onnx"
    onnx.save(text_classifier(), first)
    graphopt.optimize(first, second)
    return first, second


def test_bench_produces_every_field(two_models, tmp_path):
    runtime = graphopt.RuntimeOptions(threads=1, spinning=False, session_config={"session.dynamic_block_base": "2"})
    result = graphopt.bench(list(two_models), runs=7, warmup=2, shapes={"input_ids": (4, 8)}, runtime=runtime)
    assert result.ep == "cpu" and result.input_shapes == {"input_ids": [4, 8], "attention_mask": [4, 8]}
    assert result.peak_rss_bytes > 0
    for entry in result.models:
        data = entry.to_dict()
        assert data["runs"] == 7 and len(data["latencies_ms"]) == 7 and data["batch_size"] == 4
        for key in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "throughput_per_s",
                    "wall_throughput_per_s", "session_seconds", "file_bytes", "rss_after_session_bytes"):
            assert data[key] is not None and math.isfinite(data[key]) and data[key] >= 0, key
        assert entry.p50_ms <= entry.p90_ms <= entry.p99_ms
        assert entry.throughput == pytest.approx(4 * 1000 / entry.p50_ms)
    assert result.ratios()[0] == 1.0
    data = json.loads(result.to_json())
    assert data["format"] == "graphopt-bench/1"
    assert data["cases"][0]["models"][1]["model"].endswith("b.onnx")
    metadata = data["metadata"]
    for field in METADATA_FIELDS:
        assert field in metadata, field
    assert metadata["threads"] == 1 and metadata["spinning"] is False and metadata["runs"] == 7
    assert metadata["graph_optimization_level"] == "all"
    assert metadata["session_config"] == {"session.intra_op.allow_spinning": "0",
                                          "session.inter_op.allow_spinning": "0",
                                          "session.dynamic_block_base": "2"}
    markdown = result.to_markdown()
    assert "| p50 ms |" in markdown and ("x faster |" in markdown or "x slower |" in markdown)
    assert "spinning off" in markdown
    assert "Inputs: input_ids [4, 8], attention_mask [4, 8]" in markdown
    png = tmp_path / "latency.png"
    plot(result, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_by_seconds_and_not_both(two_models):
    result = graphopt.bench([two_models[0]], seconds=0.2, warmup=1)
    assert len(result.models[0].latencies_ms) >= 1 and result.metadata["seconds"] == 0.2
    with pytest.raises(InputError, match="--runs or --seconds, not both"):
        graphopt.bench([two_models[0]], runs=5, seconds=0.2)


def test_bench_refuses_models_with_different_inputs(two_models, tmp_path):
    other = text_classifier()
    other.graph.input[1].name = "mask"
    other.graph.node[1].input[0] = "mask"
    path = tmp_path / "other.onnx"
    onnx.save(other, path)
    with pytest.raises(InputError, match=r"the models take different inputs: 'attention_mask' is int64 rank 2 "
                                          r"in .*a\.onnx, absent in .*other\.onnx"):
        graphopt.bench([two_models[0], path], runs=1, warmup=0)


def test_run_failure_is_one_input_error(tmp_path):
    """A shape the model cannot run (Reshape to a fixed size) is a clear error, not a traceback."""
    path = tmp_path / "fixed.onnx"
    onnx.save(fixed_reshape(), path)
    with pytest.raises(InputError, match=r"ONNX Runtime failed running .*fixed.onnx on x \[3, 4\]"):
        graphopt.bench([path], runs=1, warmup=0, shapes={"x": (3, 4)})


def test_parse_sweep():
    assert parse_sweep(["input_ids=1x32,1x128"]) == [{"input_ids": (1, 32)}, {"input_ids": (1, 128)}]
    assert parse_sweep(["batch=1,8", "seq=32,128"]) == [
        {"batch": (1,), "seq": (32,)}, {"batch": (1,), "seq": (128,)},
        {"batch": (8,), "seq": (32,)}, {"batch": (8,), "seq": (128,)}]
    assert parse_sweep([]) == []
    for bad in ("seq", "seq=", "seq=a,b", "=1,2", "seq=-1"):
        with pytest.raises(InputError, match="--sweep"):
            parse_sweep([bad])
    with pytest.raises(InputError, match="twice"):
        parse_sweep(["seq=1", "seq=2"])


def test_sweep_by_dimension_and_by_input(two_models, tmp_path):
    by_symbol = graphopt.bench([two_models[0]], runs=2, warmup=0, sweep=parse_sweep(["batch=1", "seq=4,9"]))
    assert [case.input_shapes for case in by_symbol.cases] == [
        {"input_ids": [1, 4], "attention_mask": [1, 4]}, {"input_ids": [1, 9], "attention_mask": [1, 9]}]
    by_input = graphopt.bench(list(two_models), runs=2, warmup=0,
                              sweep=parse_sweep(["input_ids=1x3,2x5,4x7"]))
    assert [case.input_shapes["attention_mask"] for case in by_input.cases] == [[1, 3], [2, 5], [4, 7]]
    assert sweep_labels(by_input) == ["1x3", "2x5", "4x7"]
    assert all(len(entry.latencies_ms) == 2 for case in by_input.cases for entry in case.models)
    markdown = by_input.to_markdown()
    assert markdown.count("Inputs: ") == 3 and "p50 ms by input_ids / attention_mask shape" in markdown
    png = tmp_path / "sweep.png"
    plot(by_input, png)
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_sweep_errors_before_any_run(two_models):
    with pytest.raises(InputError, match="neither an input nor a named dimension"):
        graphopt.bench([two_models[0]], sweep=parse_sweep(["sequence=4,8"]))
    with pytest.raises(InputError, match="given by both --shape and --sweep"):
        graphopt.bench([two_models[0]], shapes={"input_ids": (1, 4)}, sweep=parse_sweep(["input_ids=1x4"]))
    with pytest.raises(InputError, match="shapes disagree on dimension 'seq'"):
        graphopt.bench([two_models[0]], shapes={"attention_mask": (1, 5)}, sweep=parse_sweep(["input_ids=1x4"]))
    with pytest.raises(InputError, match="takes single sizes"):
        graphopt.bench([two_models[0]], sweep=parse_sweep(["seq=1x4"]))


class _FakeSession:
    """Stands in for an ONNX Runtime session: sleeps a little and records who ran when."""

    def __init__(self, name: str, log: list, in_flight: list) -> None:
        self.name, self.log, self.in_flight = name, log, in_flight
        self.ep, self.label = "cpu", name
        self.inner = self
        self._lock = threading.Lock()

    def run(self, outputs, feeds):
        with self._lock:
            self.in_flight[0] += 1
            self.in_flight[1] = max(self.in_flight[1], self.in_flight[0])
        time.sleep(0.002)
        self.log.append((self.name, threading.get_ident()))
        with self._lock:
            self.in_flight[0] -= 1


def test_concurrency_keeps_requests_in_flight_and_counts_each():
    log, in_flight = [], [0, 0]
    driver = bench_module._Driver(_FakeSession("a", log, in_flight), {}, 0, concurrency=3)
    latencies, wall = driver.run_for(10.0, max_runs=12)
    assert len(latencies) == 12 == len(log) and wall > 0
    assert in_flight[1] >= 2 and len({thread for _, thread in log}) >= 2


def test_time_slices_rotate_models_with_a_lead_in(monkeypatch):
    monkeypatch.setattr(bench_module, "SLICE_SECONDS", 0.01)
    monkeypatch.setattr(bench_module, "LEAD_IN_SECONDS", 0.005)
    log, in_flight = [], [0, 0]
    drivers = [bench_module._Driver(_FakeSession(name, log, in_flight), {}, 0, 1) for name in "ab"]
    progress = []
    counter = bench_module._Progress(lambda done, total: progress.append(done), 40)
    timed = bench_module._time_case(drivers, warmup=1, runs=20, seconds=None, progress=counter)
    assert [len(latencies) for latencies, _ in timed] == [20, 20]
    order = "".join(name for name, _ in log)
    assert order.startswith("ab") and "ab" in order[2:] and "ba" in order
    blocks = [len(block) for block in order.replace("ab", "a b").replace("ba", "b a").split()]
    assert max(blocks) > 2, "each model runs a slice of several runs, not one run per turn"
    assert progress[-1] == 40 and len(progress) < 40, "progress is reported per slice, not per run"


def test_a_redrawn_progress_display_is_followed_by_a_lead_in(monkeypatch):
    monkeypatch.setattr(bench_module, "SLICE_SECONDS", 0.01)
    monkeypatch.setattr(bench_module, "LEAD_IN_SECONDS", 0.005)
    for callback, extra in ((None, False), (lambda done, total: None, True)):
        log, in_flight = [], [0, 0]
        driver = bench_module._Driver(_FakeSession("a", log, in_flight), {}, 0, 1)
        timed = bench_module._time_case([driver], warmup=0, runs=30, seconds=None,
                                        progress=bench_module._Progress(callback, 30))
        assert len(timed[0][0]) == 30
        assert (len(log) > 30) is extra, "untimed lead-in runs only when the display was redrawn"


def test_seconds_must_be_finite(two_models):
    for seconds in (float("inf"), float("nan"), 0.0):
        with pytest.raises(InputError, match="--seconds a finite number > 0"):
            graphopt.bench([two_models[0]], seconds=seconds)


def test_sweep_labels_name_every_swept_input(tmp_path):
    model = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
        g (float[N, 4] a, float[M, 3] b) => (float[N, 4] y, float[M, 3] z) { y = Relu(a) z = Relu(b) }""")
    path = tmp_path / "two.onnx"
    onnx.save(model, path)
    result = graphopt.bench([path], runs=1, warmup=0, sweep=parse_sweep(["a=1x4,2x4", "b=5x3,6x3"]))
    assert sweep_labels(result) == ["1x4, 5x3", "1x4, 6x3", "2x4, 5x3", "2x4, 6x3"]
    assert bench_report.sweep_axis_name(result) == "a / b shape"


def test_throughput_uses_the_median_and_wall_time():
    entry = bench_module.ModelBench("m", None, 0.0, [1.0, 1.0, 1.0, 100.0], 2, 0, 1, 0.103)
    assert entry.throughput == pytest.approx(2000.0)
    assert entry.wall_throughput == pytest.approx(8 / 0.103)
    concurrent = bench_module.ModelBench("m", None, 0.0, [2.0] * 10, 1, 0, 4, 0.005)
    assert concurrent.throughput == pytest.approx(2000.0)


def test_human_bytes_uses_binary_units():
    assert human_bytes(512) == "512 B"
    assert human_bytes(2048) == "2.0 KiB"
    assert human_bytes(3 * 2**20) == "3.0 MiB"
    assert human_bytes(5 * 2**30) == "5.0 GiB"


def test_distribution_axis_is_not_flattened_by_outliers(two_models):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    result = graphopt.bench(list(two_models), runs=3, warmup=0)
    result.models[0].latencies_ms = [0.2 + 0.001 * i for i in range(200)] + [500.0]
    result.models[1].latencies_ms = [0.25 + 0.001 * i for i in range(200)]
    figure = bench_report._distribution_figure(plt, result)
    low, high = figure.axes[0].get_ylim()
    assert high < 1.0 and figure.axes[0].get_yscale() == "linear"
    assert "not shown" in figure.axes[0].get_title()
    plt.close(figure)
    result.models[1].latencies_ms = [50.0 + 0.01 * i for i in range(200)]
    figure = bench_report._distribution_figure(plt, result)
    assert figure.axes[0].get_yscale() == "log"
    plt.close(figure)
