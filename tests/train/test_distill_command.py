"""`graphopt distill` on the digits teacher: the student written, judged in ONNX Runtime, reported;
bad input is one line and exit 2 before any training."""

from __future__ import annotations

import json

import numpy as np
import pytest

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
])
def test_bad_input_is_one_line_and_exit_2_before_training(setup, tmp_path, capsys, args, message):
    output = tmp_path / "student.onnx"
    args = [arg.format(setup=setup) for arg in args]
    assert main(["distill", "--teacher", str(setup / "teacher.onnx"), "-o", str(output), *args]) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and "\n" not in error
    assert not output.exists() and not (tmp_path / "student.distill" / "checkpoint.pt").exists()
