"""Distillation: the losses against numpy, and the loop on the digits teacher (ONNX, run by ONNX
Runtime) — the student agrees with it, online equals offline, a resumed run equals an unbroken one,
and bad data or a mismatched student is one clear error before any training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from graphopt import train
from graphopt.errors import InputError
from graphopt.export import export_zoo
from graphopt.export.digits import load_data
from graphopt.train.losses import default_loss, distillation_loss, soft_targets


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_soft_targets_are_kl_at_the_temperature_times_its_square():
    rng = np.random.default_rng(0)
    student, teacher = rng.standard_normal((6, 10)), rng.standard_normal((6, 10)) * 3
    for temperature in (1.0, 4.0):
        p, q = _softmax(teacher / temperature), _softmax(student / temperature)
        expected = np.mean(np.sum(p * (np.log(p) - np.log(q)), -1)) * temperature ** 2
        got = soft_targets(torch.tensor(student), torch.tensor(teacher), temperature)
        assert float(got) == pytest.approx(expected, rel=1e-6)
    labels = torch.tensor(rng.integers(0, 10, 6))
    mixed = distillation_loss("kl", torch.tensor(student), torch.tensor(teacher), labels=labels, alpha=0.3,
                              temperature=2.0)
    hard = -np.mean(np.log(_softmax(student))[np.arange(6), labels.numpy()])
    soft = float(soft_targets(torch.tensor(student), torch.tensor(teacher), 2.0))
    assert float(mixed) == pytest.approx(0.3 * soft + 0.7 * hard, rel=1e-6)
    same = torch.tensor(teacher)
    assert float(distillation_loss("cosine", same * 2, same)) == pytest.approx(0.0, abs=1e-7)
    assert float(distillation_loss("mse", same + 1, same)) == pytest.approx(1.0)
    assert [default_loss([8, 10]), default_loss([8, 128, 384])] == ["kl", "cosine"]


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    path = tmp_path_factory.mktemp("teacher") / "digits.onnx"
    export_zoo("digits-cnn", path)
    data = load_data()
    return train.Teacher(path, threads=1), data


def _student():
    torch.manual_seed(0)
    n = torch.nn
    return n.Sequential(n.Conv2d(1, 8, 3, padding=1), n.ReLU(), n.MaxPool2d(2), n.Flatten(), n.Linear(128, 10))


def _run(digits, folder, **settings):
    teacher, data = digits
    student = _student()
    training = train.load({"pixels": data.train_x[:600], "labels": data.train_y[:600]}, teacher.model)
    options = {"epochs": 6, "batch_size": 16, "lr": 5e-3, "temperature": 4.0, "alpha": 0.7, **settings}
    return student, train.distill(student, teacher, training, train.DistillSettings(**options), folder)


def test_a_student_learns_the_teacher_and_online_equals_offline(digits, tmp_path):
    """The student's held-out agreement with the teacher's ONNX Runtime outputs rises; the cached
    teacher outputs give the very weights the per-batch teacher gives (no augmentation here)."""
    offline, result = _run(digits, tmp_path / "offline")
    online, online_result = _run(digits, tmp_path / "online", online=True)
    assert result.losses == ["kl"] and result.agreement >= 0.9
    assert result.history[0].loss > result.history[-1].loss
    for mine, theirs in zip(offline.state_dict().values(), online.state_dict().values()):
        assert torch.equal(mine, theirs)
    assert [record.agreement for record in result.history] == [record.agreement for record in online_result.history]
    teacher, data = digits
    with torch.no_grad():
        logits = offline(torch.from_numpy(data.test_x)).numpy()
    expected = teacher({"pixels": data.test_x})[0]
    assert np.mean(logits.argmax(1) == expected.argmax(1)) >= 0.9  # on the test set, never trained on
    cached = np.load(tmp_path / "offline" / "teacher-outputs" / "output0.npy", mmap_mode="r")
    assert cached.shape == (540, 10)  # the 600 less the held-out tenth


def test_a_run_interrupted_mid_epoch_resumes_to_where_an_unbroken_one_ends(digits, tmp_path):
    """Ctrl-C in the third epoch: the second epoch's checkpoint is what is left, and --resume from it
    ends with the very weights of a run never interrupted."""
    unbroken, _ = _run(digits, tmp_path / "unbroken", epochs=4)
    teacher, data = digits
    training = train.load({"pixels": data.train_x[:600], "labels": data.train_y[:600]}, teacher.model)
    settings = train.DistillSettings(epochs=4, batch_size=16, lr=5e-3, temperature=4.0, alpha=0.7)
    epochs = []

    def interrupt(done: int, total: int, loss: float) -> None:
        epochs.append(done == 1)
        if sum(epochs) == 3 and done == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train.distill(_student(), teacher, training, settings, tmp_path / "broken", progress=interrupt)
    resumed = _student()
    result = train.distill(resumed, teacher, training, settings, tmp_path / "broken", resume=True)
    assert [record.epoch for record in result.history] == [1, 2, 3, 4]
    for mine, theirs in zip(unbroken.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(mine, theirs)


def test_bad_data_or_a_mismatched_student_is_one_error_before_training(digits, tmp_path):
    teacher, data = digits
    with pytest.raises(InputError, match="no array for the teacher's input 'pixels'"):
        train.load({"images": data.train_x}, teacher.model)
    with pytest.raises(InputError, match="labels must be one class index per sample"):
        train.load({"pixels": data.train_x[:10], "labels": data.train_y[:9]}, teacher.model)
    for index in range(3):
        np.savez(tmp_path / f"part{index}.npz", pixels=data.train_x[index * 10:(index + 1) * 10],
                 labels=data.train_y[index * 10:(index + 1) * 10])
    joined = train.load(tmp_path, teacher.model)
    assert np.array_equal(joined.arrays["pixels"], data.train_x[:30]) and np.array_equal(joined.labels, data.train_y[:30])
    np.savez(tmp_path / "part3.npz", pixels=data.train_x[:5])
    with pytest.raises(InputError, match="every file needs the same arrays"):
        train.load(tmp_path, teacher.model)
    training = train.load({"pixels": data.train_x[:50]}, teacher.model)
    wrong = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 12))
    with pytest.raises(InputError, match=r"output 0: the student's is \[2, 12\], the teacher's \[2, 10\]"):
        train.distill(wrong, teacher, training, train.DistillSettings(epochs=1), tmp_path)
    with pytest.raises(InputError, match="hard labels only needs labels"):
        train.distill(_student(), teacher, training, train.DistillSettings(hard_labels_only=True), tmp_path)
    assert not (tmp_path / "checkpoint.pt").exists()


def test_the_teacher_beats_the_labels_alone_with_the_same_budget(digits, tmp_path):
    """benchmarks/distill.py's digits claim, short: the same student, budget and seed, distilled against
    the teacher reaches a higher test accuracy than trained on the hard labels alone."""
    teacher, data = digits
    accuracy = {}
    for label, extra in (("distilled", {}), ("labels", {"hard_labels_only": True})):
        student, _ = _run(digits, tmp_path / label, epochs=8, patience=8, **extra)
        with torch.no_grad():
            accuracy[label] = float(np.mean(student(torch.from_numpy(data.test_x)).numpy().argmax(1) == data.test_y))
    assert accuracy["distilled"] > accuracy["labels"] + 0.005, accuracy
