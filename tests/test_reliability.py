"""Never a silent change, never a crash: bad inputs, subgraphs, custom ops, interrupts, determinism."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphopt
from graphopt.cli import main
from tests.helpers import assert_same, parse, run

ROOT = Path(__file__).resolve().parents[1]


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _external_model(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Identity", ["h"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 64])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path = folder / "model.onnx"
    onnx.save(model, path, save_as_external_data=True, location="model.onnx.data", size_threshold=0)
    return path


@pytest.mark.parametrize("command", ["optimize", "inspect", "validate", "bench"])
def test_missing_external_data_every_command(tmp_path, command, capsys):
    source = tmp_path / "in"
    source.mkdir()
    path = _external_model(source)
    os.remove(source / "model.onnx.data")
    before = _digests(source)
    args = {"optimize": ["optimize", str(path), "-o", str(tmp_path / "out.onnx")],
            "inspect": ["inspect", str(path)],
            "validate": ["validate", str(path), str(path)],
            "bench": ["bench", str(path), "--runs", "1"]}[command]
    assert main(args) == 2
    error = capsys.readouterr().err.strip()
    assert "external data file 'model.onnx.data' is missing" in error and "\n" not in error
    assert _digests(source) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_pass_below_its_opset_skips_with_reason_and_output_is_valid(tmp_path):
    model = parse("""<ir_version: 7, opset_import: ["" : 11]>
        g (float[2,3,4] x) => (float[4,6] y) {
            a = Constant<value=int64[2] {6, 4}>()
            r = Reshape(x, a)
            b = Constant<value=int64[2] {4, 6}>()
            y = Reshape(r, b) }""")
    result = graphopt.optimize(model, passes="collapse_shape_ops")
    entry = result.report.passes[0]
    assert not entry.ran and "needs opset >= 14, model has 11" in entry.skipped[0]
    upgraded = graphopt.optimize(model, passes="collapse_shape_ops,remove_unused", opset=14)
    assert [n.op_type for n in upgraded.model.graph if n.op_type != "Constant"] == ["Reshape"]
    feeds = {"x": np.arange(24, dtype=np.float32).reshape(2, 3, 4)}
    assert_same(run(model, feeds), run(upgraded.model, feeds))


SUBGRAPHS = """<ir_version: 8, opset_import: ["" : 17]>
    g (bool cond, float[3] x, int64 trips) => (float[3] y, float[3] z) {
        outer = Constant<value=float[3] {1, 2, 3}>()
        zero = Constant<value=float {0.0}>()
        y = If(cond) <
            then_branch = t () => (float[3] out) {
                a = Identity(x)
                two = Constant<value=float[3] {2, 2, 2}>()
                scaled = Mul(two, outer)
                dead = Neg(a)
                b = Add(a, zero)
                out = Add(b, scaled)
            },
            else_branch = e () => (float[3] out) {
                out = Identity(outer)
            }>
        init = Identity(x)
        z = Loop(trips, cond, init) <
            body = body (int64 i, bool c, float[3] acc) => (bool c_out, float[3] acc_out) {
                c_out = Identity(c)
                one = Constant<value=float {1.0}>()
                step = Mul(acc, one)
                unused = Sqrt(step)
                acc_out = Add(step, outer)
            }>
    }"""


def test_subgraphs_keep_their_semantics_at_every_preset():
    model = parse(SUBGRAPHS)
    cases = [{"cond": np.array(flag), "x": np.array([1.0, -2.0, 3.0], np.float32),
              "trips": np.array(trips, np.int64)} for flag in (True, False) for trips in (0, 3)]
    for preset in ("O1", "O2", "O3"):
        result = graphopt.optimize(model, preset=preset)
        for feeds in cases:
            assert_same(run(model, feeds), run(result.model, feeds))
    onnx.checker.check_model(graphopt.model.ir.serde.serialize_model(result.model), full_check=True)


def test_custom_domain_ops_are_kept_and_worked_around():
    model = parse("""<ir_version: 8, opset_import: ["" : 17, "com.example" : 1]>
        g (float[4] x) => (float[4] y) {
            a = Identity(x)
            c = Constant<value=float[4] {1, 2, 3, 4}>()
            n = Neg(c)
            m = com.example.Mystery<alpha = 0.5>(a, n)
            zero = Constant<value=float {0.0}>()
            y = Add(m, zero) }""")
    result = graphopt.optimize(model, preset="O1")
    nodes = list(result.model.graph)
    assert [(n.domain, n.op_type) for n in nodes] == [("com.example", "Mystery")]
    assert nodes[0].attributes["alpha"].value == 0.5
    folded = nodes[0].inputs[1].const_value.numpy()
    np.testing.assert_array_equal(folded, -np.array([1, 2, 3, 4], np.float32))
    assert [v.name for v in result.model.graph.outputs] == ["y"]


def test_too_old_ir_version_is_one_line_exit_2(tmp_path, capsys):
    model = parse("""<ir_version: 8, opset_import: ["" : 17]> g (float[2] x) => (float[2] y) { y = Relu(x) }""")
    model.ir_version = 1
    path = tmp_path / "old.onnx"
    onnx.save(model, path)
    assert main(["optimize", str(path), "-o", str(tmp_path / "out.onnx")]) == 2
    assert "\n" not in capsys.readouterr().err.strip()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.onnx"]


_INTERRUPT_DRIVER = textwrap.dedent("""
    import os, signal, sys, time
    import graphopt.writer as writer
    from graphopt.cli import main

    # As in a terminal: a shell's background job (CI under `&`) starts with SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)

    def interrupted_write(model, path):
        with open(path, "wb") as stream:
            stream.write(b"half of a model")
        os.kill(os.getpid(), getattr(signal, sys.argv[1]))
        time.sleep(5)

    writer.write_model = interrupted_write
    sys.exit(main(["optimize", sys.argv[2], "-o", sys.argv[3], "-q"]))
""")


@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGKILL"])
def test_signal_during_save_leaves_no_output(tmp_path, signal_name):
    source = tmp_path / "model.onnx"
    onnx.save(parse("""<ir_version: 8, opset_import: ["" : 17]>
        g (float[2] x) => (float[2] y) { a = Identity(x)
            y = Relu(a) }"""), source)
    out = tmp_path / "out.onnx"
    completed = subprocess.run([sys.executable, "-c", _INTERRUPT_DRIVER, signal_name, str(source), str(out)],
                               capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert not out.exists()
    if signal_name == "SIGINT":
        assert completed.returncode == 130
        assert "interrupted; nothing was written" in completed.stderr
        assert "Traceback" not in completed.stderr
        assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
    else:
        assert completed.returncode == -9
        leftovers = [p.name for p in tmp_path.iterdir() if p.name != "model.onnx"]
        assert all(name.startswith(".out.onnx.") and name.endswith(".partial") for name in leftovers)


def test_same_input_and_options_give_identical_bytes(tmp_path):
    from graphopt.export import export_zoo

    source = tmp_path / "cnn.onnx"
    export_zoo("cnn", source)
    digests = set()
    for seed in ("1", "2"):
        out = tmp_path / f"out{seed}.onnx"
        env = dict(os.environ, PYTHONHASHSEED=seed)
        subprocess.run([sys.executable, "-m", "graphopt", "optimize", str(source), "-o", str(out), "-q"],
                       check=True, env=env, cwd=ROOT, timeout=120)
        digests.add(hashlib.sha256(out.read_bytes()).hexdigest())
    assert len(digests) == 1
