"""`graphopt distill` end to end: check everything, train the student, export it with graphopt's
exporter (parity with torch checked), judge it against the teacher in ONNX Runtime on the held-out
samples, time both alone, and write the report (Markdown, JSON, the loss curve).

Nothing is trained before the teacher, the data, the student and the output path are checked; the
student's file is written only after training ends (the checkpoint in the work folder is what an
interrupted run leaves, and --resume continues from it).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from graphopt import model as model_io
from graphopt.outputs import check_output_file
from graphopt.runtime.providers import SessionConfig, create_session
from graphopt.train import data as data_io
from graphopt.train.loop import DistillResult, DistillSettings, Progress, agreement, distill
from graphopt.train.teacher import Teacher


@dataclasses.dataclass
class ModelFacts:
    path: str
    parameters: int
    file_bytes: int
    p50_ms: float | None = None


@dataclasses.dataclass
class DistillReport:
    teacher: ModelFacts
    student: ModelFacts
    training: DistillResult
    settings: DistillSettings
    seconds: float  # training, teacher outputs cached included
    held_out: int  # samples
    agreement: float  # top-1 agreement (kl) or mean cosine with the teacher, the exported student in ONNX Runtime
    accuracy: dict[str, float] = dataclasses.field(default_factory=dict)  # on the held-out labels, when there are
    test: dict[str, Any] | None = None  # agreement and accuracy on the test data, never trained on
    parity: float = 0.0  # the export's max abs error against torch
    files: list[str] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def run(teacher_path: str | os.PathLike, output: str | os.PathLike, *, student, data, test_data=None,
        settings: DistillSettings, work: str | os.PathLike | None = None, resume: bool = False,
        time_models: bool = True, progress: Progress | None = None,
        stage: Callable[[str], None] | None = None) -> DistillReport:
    """Train `student` (a torch.nn.Module, or a `file.py:factory` spec) against the teacher on `data`
    (an .npz or {name: array}), write it to `output` and its report beside it; `test_data` (the same
    form) is judged too, never trained on."""
    from graphopt.export import load_factory

    stage = stage or (lambda description: None)
    settings.check()
    output = Path(output)
    check_output_file(output, "-o")
    teacher = Teacher(teacher_path)
    training = data_io.load(data, teacher.model)
    test = data_io.load(test_data, teacher.model) if test_data is not None else None
    module = load_factory(student, "--student").module if isinstance(student, str) else student
    work = Path(work) if work is not None else output.with_name(output.stem + ".distill")
    start = time.perf_counter()
    stage("training")
    result = distill(module, teacher, training, settings, work, resume=resume, progress=progress)
    seconds = time.perf_counter() - start
    stage("exporting and judging")
    _, held_out = training.split(settings.held_out, settings.seed)
    parity = _export(module, teacher, held_out, output)
    session = create_session(output, SessionConfig(spinning=False))
    agreed, accuracy = _judge(teacher, session, held_out, result.losses[0])
    report = DistillReport(_facts(teacher.path), _facts(output), result, settings, seconds, len(held_out), agreed,
                           accuracy, parity=parity)
    if test is not None:
        agreed, accuracy = _judge(teacher, session, test, result.losses[0])
        report.test = {"samples": len(test), "agreement": agreed, "accuracy": accuracy}
    del session  # idle, it must not share the cores with the timing
    if time_models:
        stage("timing the teacher and the student")
        _time(report, held_out)
    from graphopt.train.report import write

    report.files = [str(path) for path in write(report, output)]
    return report


def _export(module, teacher: Teacher, held_out: data_io.TrainingSet, output: Path) -> float:
    """The student exported to `output` by graphopt's exporter, named as the teacher's inputs and outputs;
    the parity's max abs error against torch."""
    import torch

    from graphopt.export import ZooModel, export_spec

    example = tuple(torch.from_numpy(np.ascontiguousarray(array[:2])) for array in held_out.arrays.values())
    names = list(held_out.arrays)
    axes = {name: {0: "batch"} for name in names}
    spec = ZooModel(module.eval(), example, names, list(teacher.output_names), axes)
    result = export_spec(spec, output)
    return float(result.max_abs_error)


def _facts(path: Path) -> ModelFacts:
    info = model_io.inspect(path)
    return ModelFacts(str(path), info.parameters, info.file_bytes)


def _judge(teacher: Teacher, student, data: data_io.TrainingSet, kind: str) -> tuple[float, dict[str, float]]:
    """(agreement, accuracy on the labels when there are) of the exported student (a session) against
    the teacher on `data`, each model run once."""
    want, got = teacher(data.arrays)[0], student.run(data.arrays)[0]
    accuracy = {} if data.labels is None else {label: float(np.mean(outputs.argmax(-1) == data.labels))
                                               for label, outputs in (("teacher", want), ("student", got))}
    return agreement(got, want, kind), accuracy


def _time(report: DistillReport, held_out: data_io.TrainingSet) -> None:
    """Both models' p50 on one held-out sample, each timed while it owns the machine."""
    from graphopt import api

    sample = {name: array[:1] for name, array in held_out.arrays.items()}
    bench = api.bench([report.teacher.path, report.student.path], inputs=sample, warmup=10, runs=100)
    report.teacher.p50_ms, report.student.p50_ms = (model.p50_ms for model in bench.models)

