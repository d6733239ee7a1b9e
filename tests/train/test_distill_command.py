"""`graphopt distill` on the digits teacher: the student written, judged in ONNX Runtime, reported;
bad input is one line and exit 2 before any training."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import graphopt

from graphopt.cli import main
from graphopt.export import export_zoo
from graphopt.export.digits import load_data
from graphopt.runtime.providers import create_session

STUDENT = '''
import torch

def build():
    torch.manual_seed(0)
    n = torch.nn
    return n.Sequential(n.Conv2d(1, 8, 3, padding=1), n.ReLU(), n.MaxPool2d(2), n.Flatten(), n.Linear(128, 10)), \\
        (torch.zeros(2, 1, 8, 8),)

def too_wide():
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 12)), (torch.zeros(2, 1, 8, 8),)
'''


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("distill")
    export_zoo("digits-cnn", folder / "teacher.onnx")
    digits = load_data()
    np.savez(folder / "train.npz", pixels=digits.train_x[:600], labels=digits.train_y[:600])
    np.savez(folder / "test.npz", pixels=digits.test_x, labels=digits.test_y)
    (folder / "student.py").write_text(STUDENT)
    pixels = helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 1, 8, 8])
    quantized = helper.make_graph([helper.make_node("DynamicQuantizeLinear", ["pixels"], ["q", "s", "z"]),
                                   helper.make_node("Cast", ["q"], ["logits"], to=TensorProto.FLOAT)], "q", [pixels],
                                  [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1, 8, 8])])
    onnx.save(helper.make_model(quantized, opset_imports=[helper.make_opsetid("", 20)]), folder / "quantized.onnx")
    renamed = helper.make_graph([helper.make_node("Flatten", ["x"], ["logits"])], "r",
                                [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 8, 8])],
                                [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 64])])
    onnx.save(helper.make_model(renamed, opset_imports=[helper.make_opsetid("", 20)]), folder / "renamed.onnx")
    return folder


def test_distill_writes_a_student_that_agrees_with_the_teacher_and_its_report(setup, tmp_path, capsys):
    output = tmp_path / "student.onnx"
    assert main(["distill", "--teacher", str(setup / "teacher.onnx"), "--data", str(setup / "train.npz"),
                 "--test", str(setup / "test.npz"), "--student", f"{setup / 'student.py'}:build", "-o", str(output),
                 "--epochs", "6", "--batch-size", "16", "--lr", "5e-3", "--temperature", "4", "--alpha", "0.7",
                 "--no-timing"]) == 0
    assert "distilled 1,370 parameters from 38,474: held-out agreement" in capsys.readouterr().out
    report = json.loads((tmp_path / "student.report.json").read_text())
    assert report["student"]["parameters"] * 4 < report["teacher"]["parameters"]
    assert (tmp_path / "student.loss.png").stat().st_size > 1000 and (tmp_path / "student.distill" / "checkpoint.pt").exists()
    digits = load_data()
    student = create_session(output).run({"pixels": digits.test_x})[0]
    teacher = create_session(setup / "teacher.onnx").run({"pixels": digits.test_x})[0]
    agreement = float(np.mean(student.argmax(1) == teacher.argmax(1)))
    assert agreement >= 0.9 and report["test"]["agreement"] == pytest.approx(agreement)
    assert report["test"]["accuracy"]["student"] == pytest.approx(float(np.mean(student.argmax(1) == digits.test_y)))
    assert "| parameters | 38,474 | 1,370 |" in (tmp_path / "student.report.md").read_text()


@pytest.mark.parametrize("args, message", [
    (["--data", "{setup}/test.npz", "--student", "{setup}/student.py:too_wide"],
     "output 0: the student's is [2, 12], the teacher's [2, 10]"),
    (["--data", "{setup}/student.py", "--student", "{setup}/student.py:build"], "not an .npz file"),
    (["--data", "{setup}/test.npz", "--student", "{setup}/student.py:nothing"], "--student"),
    (["--data", "{setup}/test.npz", "--student", "{setup}/student.py:build", "--alpha", "2"], "--alpha 2.0"),
    (["--data", "{setup}/test.npz"], "give the student as one of --student FILE.py:FACTORY, --student-onnx"),
    (["--data", "{setup}/test.npz", "--student", "{setup}/student.py:build", "--drop-layers", "2"],
     "give the student as one of"),
    (["--data", "{setup}/test.npz", "--student", "{setup}/student.py:build", "--match-layers"],
     "--match-layers needs --drop-layers"),
    (["--data", "{setup}/test.npz", "--drop-layers", "2"], "--drop-layers: no numbered layers in this model"),
    (["--data", "{setup}/test.npz", "--student-onnx", "{setup}/quantized.onnx"],
     "operators that cannot be made trainable: DynamicQuantizeLinear (1 node(s)"),
    (["--data", "{setup}/test.npz", "--student-onnx", "{setup}/renamed.onnx"],
     "the student's inputs ['x'] are not the teacher's ['pixels']"),
    (["--data", "{setup}/test.npz", "--student-onnx", "{tmp}/student.onnx"], "is an input model: write the distilled student elsewhere"),
])
def test_bad_input_is_one_line_and_exit_2_before_training(setup, tmp_path, capsys, args, message):
    output = tmp_path / "student.onnx"
    if "{tmp}/student.onnx" in args:
        (tmp_path / "student.onnx").write_bytes((setup / "teacher.onnx").read_bytes())
    args = [arg.format(setup=setup, tmp=tmp_path) for arg in args]
    assert main(["distill", "--teacher", str(setup / "teacher.onnx"), "-o", str(output), *args]) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and "\n" not in error
    assert not (tmp_path / "student.distill" / "checkpoint.pt").exists()
    assert not output.exists() or output.read_bytes() == (setup / "teacher.onnx").read_bytes()


def test_an_onnx_student_pruned_by_compress_recovers_in_its_own_graph(setup, tmp_path):
    """compress → distill: the pruned teacher, made trainable, trained back towards the teacher; the
    result is the pruned graph itself (same operators, same shapes) with new weights."""
    pruned, output = tmp_path / "pruned.onnx", tmp_path / "recovered.onnx"
    digits = load_data()
    graphopt.compress(setup / "teacher.onnx", pruned, prune_channels=0.75, reconstruct=False, min_cosine=0.3,
                      calibration=[{"pixels": digits.calibration_x}], check_speed=False, force=True)
    assert main(["distill", "--teacher", str(setup / "teacher.onnx"), "--data", str(setup / "train.npz"),
                 "--test", str(setup / "test.npz"), "--student-onnx", str(pruned), "-o", str(output),
                 "--epochs", "12", "--lr", "3e-3", "--no-timing", "-q"]) == 0
    report = json.loads((tmp_path / "recovered.report.json").read_text())
    assert report["round_trip"] < 1e-4 and report["parity"] < 1e-4
    before, after = report["before"]["test_agreement"], report["test"]["agreement"]
    assert after >= 0.95 and after > before + 0.2, (before, after)
    teacher = create_session(setup / "teacher.onnx").run({"pixels": digits.test_x})[0]
    student = create_session(output).run({"pixels": digits.test_x})[0]
    assert float(np.mean(student.argmax(1) == teacher.argmax(1))) == pytest.approx(after)
    shapes = [{t.name: list(t.dims) for t in onnx.load(path).graph.initializer} for path in (pruned, output)]
    assert shapes[0] == shapes[1]
    assert [n.op_type for n in onnx.load(output).graph.node] == [n.op_type for n in onnx.load(pruned).graph.node]
    assert "before training: top-1 agreement" in (tmp_path / "recovered.report.md").read_text()
