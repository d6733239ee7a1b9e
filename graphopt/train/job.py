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
import onnx_ir as ir

from graphopt import model as model_io
from graphopt.errors import InputError
from graphopt.outputs import check_output_file
from graphopt.runtime.providers import SessionConfig, create_session
from graphopt.train import data as data_io
from graphopt.train.losses import MASK
from graphopt.train.loop import (SCRATCH_LR, TRAINED_LR, DistillResult, DistillSettings, Progress, agreement, distill,
                                 sample_cosines)
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
    # an ONNX student: where it came from, the trainable module's max abs error against ONNX Runtime on it before
    # training, and how it agreed with the teacher before training (held out, and test when given)
    student_onnx: str | None = None
    round_trip: float | None = None
    before: dict[str, Any] | None = None
    dropped: dict[str, Any] | None = None  # --drop-layers: the teacher's layer count and the layers kept
    min_cosine: float | None = None  # embeddings: the lowest held-out sample's cosine (mean-pooled over real tokens)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def run(teacher_path: str | os.PathLike, output: str | os.PathLike, *, student=None, student_onnx=None, data,
        test_data=None, tokenizer=None, max_length: int = 128, settings: DistillSettings,
        work: str | os.PathLike | None = None, resume: bool = False, time_models: bool = True,
        progress: Progress | None = None, stage: Callable[[str], None] | None = None) -> DistillReport:
    """Train the student — `student` (a torch.nn.Module, or a `file.py:factory` spec), `student_onnx` (an
    ONNX model, made trainable) or settings.drop_layers (the teacher keeping every K-th layer) — against
    the teacher on `data` (an .npz, a folder of them, a text file tokenized with `tokenizer`, or {name:
    array}), write it to `output` and its report beside it; `test_data` (the same form) is judged too,
    never trained on. Nothing is written before everything is checked."""
    stage = stage or (lambda description: None)
    settings.check()
    if sum(source is not None for source in (student, student_onnx, settings.drop_layers)) != 1:
        raise InputError("give the student as one of --student FILE.py:FACTORY, --student-onnx FILE.onnx or "
                         "--drop-layers K")
    output = Path(output)
    check_output_file(output, "-o")
    for source in (student_onnx, teacher_path):
        if source is not None and output.resolve() == Path(source).resolve():
            raise InputError(f"-o {output} is an input model: write the distilled student elsewhere")
    work = Path(work) if work is not None else output.with_name(output.stem + ".distill")
    source, dropped = student_onnx, None
    if settings.drop_layers is not None:
        source, dropped = _dropped_student(teacher_path, settings.drop_layers)
    hidden = [theirs for _, theirs in dropped.pairs] if dropped is not None and settings.match_layers else []
    teacher = Teacher(teacher_path, hidden=hidden)
    training = data_io.load(data, teacher.model, tokenizer=tokenizer, max_length=max_length)
    test = None if test_data is None else \
        data_io.load(test_data, teacher.model, tokenizer=tokenizer, max_length=max_length)
    _, held_out = training.split(settings.held_out, settings.seed)
    if source is not None:
        settings = dataclasses.replace(settings, lr=settings.lr or TRAINED_LR)
        module, round_trip, before = _onnx_student(source, teacher, held_out, test, settings)
        module.outputs += module.values([mine for mine, _ in dropped.pairs] if hidden else [])
    else:
        settings = dataclasses.replace(settings, lr=settings.lr or SCRATCH_LR)
        module, round_trip, before = _torch_student(student), None, None
    start = time.perf_counter()
    stage("training")
    result = distill(module, teacher, training, settings, work, resume=resume, progress=progress)
    seconds = time.perf_counter() - start
    stage("exporting and judging")
    parity = _write_onnx(module, held_out, output) if source is not None else \
        _export(module, teacher, held_out, output)
    session = create_session(output, SessionConfig(spinning=False))
    agreed, accuracy, lowest = _judge(teacher, session, held_out, result.losses[0])
    report = DistillReport(_facts(teacher.path), _facts(output), result, settings, seconds, len(held_out), agreed,
                           accuracy, parity=parity, student_onnx=None if student_onnx is None else str(student_onnx),
                           round_trip=round_trip, before=before,
                           dropped=None if dropped is None else {"layers": dropped.layers, "kept": dropped.kept},
                           min_cosine=lowest)
    if test is not None:
        agreed, accuracy, lowest_test = _judge(teacher, session, test, result.losses[0])
        report.test = {"samples": len(test), "agreement": agreed, "accuracy": accuracy, "min_cosine": lowest_test}
    del session  # idle, it must not share the cores with the timing
    if time_models:
        stage("timing the teacher and the student")
        _time(report, held_out)
    from graphopt.train.report import write

    report.files = [str(path) for path in write(report, output)]
    return report


def _dropped_student(teacher_path, every: int):
    """(the teacher keeping every `every`-th layer, what was dropped)."""
    from graphopt.train.drop_layers import drop_layers

    model = model_io.load(teacher_path)
    return model, drop_layers(model, every)


def _torch_student(student):
    from graphopt.export import load_factory

    return load_factory(student, "--student").module if isinstance(student, str) else student


ROUND_TRIP_SAMPLES = 8


def _onnx_student(source, teacher: Teacher, held_out: data_io.TrainingSet, test: data_io.TrainingSet | None,
                  settings: DistillSettings) -> tuple[Any, float, dict[str, Any]]:
    """(the ONNX student — a path or an onnx_ir model — made trainable, its max abs error against ONNX
    Runtime before training, how the untrained student agrees with the teacher); an operator that cannot be
    trained, or a module that does not compute what ONNX Runtime does, stops here, before any training."""
    from graphopt.train.losses import default_loss
    from graphopt.train.trainable import TrainableGraph, round_trip

    model = source if isinstance(source, ir.Model) else model_io.load(source)
    module = TrainableGraph(model, list(held_out.arrays))
    error = round_trip(module, model, held_out.batch(np.arange(min(ROUND_TRIP_SAMPLES, len(held_out)))))
    session = create_session(model, SessionConfig(spinning=False))
    kind = settings.loss or default_loss(teacher.output_shapes[0])
    before: dict[str, Any] = {}
    before["agreement"], before["accuracy"], before["min_cosine"] = _judge(teacher, session, held_out, kind)
    if test is not None:
        before["test_agreement"], before["test_accuracy"], before["test_min_cosine"] = _judge(teacher, session, test,
                                                                                              kind)
    return module, error, before


def _write_onnx(module, held_out: data_io.TrainingSet, output: Path) -> float:
    """The trained weights written into the student's own graph at `output`; the max abs error of ONNX
    Runtime on it against the trained module."""
    from graphopt.train.trainable import round_trip

    module.write(output)
    return round_trip(module, output, held_out.batch(np.arange(min(ROUND_TRIP_SAMPLES, len(held_out)))))


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
    """(agreement, accuracy on the labels when there are, the lowest sample's cosine for embeddings) of the
    exported student (a session) against the teacher on `data`, each model run once."""
    want, got = teacher(data.arrays)[0], student.run(data.arrays)[0]
    mask = data.arrays.get(MASK)
    lowest = None if kind == "kl" else float(np.min(sample_cosines(got, want, mask)))
    accuracy = {} if data.labels is None else {label: float(np.mean(outputs.argmax(-1) == data.labels))
                                               for label, outputs in (("teacher", want), ("student", got))}
    return agreement(got, want, kind, mask), accuracy, lowest


def _time(report: DistillReport, held_out: data_io.TrainingSet) -> None:
    """Both models' p50 on one held-out sample, each timed while it owns the machine."""
    from graphopt import api

    sample = {name: array[:1] for name, array in held_out.arrays.items()}
    bench = api.bench([report.teacher.path, report.student.path], inputs=sample, warmup=10, runs=100)
    report.teacher.p50_ms, report.student.p50_ms = (model.p50_ms for model in bench.models)

