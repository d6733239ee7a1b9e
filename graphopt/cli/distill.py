"""`graphopt distill`: a torch student trained against an ONNX teacher, exported, judged and reported."""

from __future__ import annotations

from pathlib import Path

import click
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from graphopt import api
from graphopt.cli import console, flags
from graphopt.cli.app import app
from graphopt.outputs import check_output_file
from graphopt.train.loop import DistillSettings


@app.command()
@click.option("--teacher", type=click.Path(path_type=Path), required=True, help="The ONNX model to learn from.")
@click.option("--data", type=click.Path(path_type=Path), required=True,
              help="Training data: an .npz with an array per teacher input (samples along axis 0) and, for "
                   "classifiers, `labels` (a class index per sample); a folder of such .npz files, joined; or a "
                   "text file (.txt, one sample per line, with --tokenizer).")
@click.option("--student", metavar="FILE.py:FACTORY",
              help="The student as PyTorch code: a function returning (torch module, example inputs), as "
                   "`export --module` takes.")
@click.option("--student-onnx", type=click.Path(path_type=Path),
              help="The student as an ONNX model (`graphopt compress`'s pruned, factored or clustered output, "
                   "or any float model) made trainable in PyTorch; the result is its own graph with the trained "
                   "weights.")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="The student's .onnx; its report is written beside it (.report.md, .report.json, .loss.png).")
@click.option("--test", "test_data", type=click.Path(path_type=Path),
              help="Test data in --data's form: the student judged on it too, never trained on it.")
@click.option("--tokenizer", type=click.Path(path_type=Path),
              help="Text data (.txt, one sample per line): the model's tokenizer.json, or its folder.")
@click.option("--max-length", type=click.IntRange(min=1), default=128, show_default=True,
              help="Text data: tokens per sample at most (longer lines are cut).")
@click.option("--work", type=click.Path(path_type=Path),
              help="The checkpoint and the cached teacher outputs (default: OUTPUT's name + .distill/).")
@click.option("--resume", is_flag=True, help="Continue from the work folder's checkpoint (an interrupted run).")
@click.option("--no-timing", is_flag=True, help="Do not time the teacher and the student.")
@flags.declared(DistillSettings)
@click.option("-q", "--quiet", is_flag=True, help="Print only errors and the one-line result.")
def distill(teacher: Path, data: Path, student: str | None, student_onnx: Path | None, output: Path,
            test_data: Path | None, tokenizer: Path | None, max_length: int, work: Path | None, resume: bool, no_timing: bool, quiet: bool, **options) -> None:
    """Train a smaller student to reproduce TEACHER on DATA (soft targets, with the labels when there are),
    export it, judge it against the teacher in ONNX Runtime and write its report."""
    check_output_file(output, "-o", new_folders=False)
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[loss]}"),
                  TimeElapsedColumn(), console=console.err, transient=True, auto_refresh=False,
                  disable=quiet or not console.err.is_terminal) as bar:
        task = bar.add_task("checking", total=None, loss="")
        epoch = [0]

        def progress(done: int, total: int, loss: float) -> None:
            epoch[0] += done == 1
            bar.update(task, description=f"epoch {epoch[0]}", completed=done, total=total, loss=f"loss {loss:.4f}")
            bar.refresh()

        report = api.distill(teacher, output, student=student, student_onnx=student_onnx, data=data,
                             test_data=test_data, tokenizer=tokenizer, max_length=max_length, work=work,
                             resume=resume, time_models=not no_timing, progress=progress, **options)
    if not quiet:
        console.out.print(Path(report.files[0]).read_text(), soft_wrap=True, markup=False)
    measure = "agreement" if report.training.losses[0] == "kl" else "cosine"
    test = f", test {measure} {report.test['agreement']:.4f}" if report.test else ""
    console.out.print(f"distilled {report.student.parameters:,} parameters from {report.teacher.parameters:,}: "
                      f"held-out {measure} {report.agreement:.4f}{test}; wrote {output} and its report", soft_wrap=True)
