"""The distillation report: teacher against student (parameters, file, latency, agreement, accuracy,
training time) and the epochs, as Markdown and JSON beside the student, with the loss curve as a PNG."""

from __future__ import annotations

import json
from pathlib import Path

from graphopt import model as model_io
from graphopt.units import human_bytes


def paths(output: Path) -> tuple[Path, Path, Path]:
    """(Markdown, JSON, PNG) beside the student's file."""
    return (output.with_name(output.stem + ".report.md"), output.with_name(output.stem + ".report.json"),
            output.with_name(output.stem + ".loss.png"))


def write(report, output: Path) -> list[Path]:
    markdown, data, plot = paths(output)
    model_io.write_text_atomic(data, json.dumps(report.to_dict(), indent=2) + "\n")
    model_io.write_text_atomic(markdown, render(report, plot.name))
    _plot(report, plot)
    return [markdown, data, plot]


def render(report, plot_name: str) -> str:
    teacher, student, training = report.teacher, report.student, report.training
    measure = "top-1 agreement" if training.losses[0] == "kl" else "mean cosine"
    rows = [("parameters", f"{teacher.parameters:,}", f"{student.parameters:,}",
             f"{student.parameters / max(teacher.parameters, 1):.3f}x"),
            ("file", human_bytes(teacher.file_bytes), human_bytes(student.file_bytes),
             f"{student.file_bytes / max(teacher.file_bytes, 1):.3f}x")]
    if teacher.p50_ms is not None and student.p50_ms is not None:
        rows.append(("p50 latency, batch 1", f"{teacher.p50_ms:.3f} ms", f"{student.p50_ms:.3f} ms",
                     f"{teacher.p50_ms / max(student.p50_ms, 1e-9):.2f}x faster"))
    if report.min_cosine is not None:
        rows.append(("lowest sample's cosine, held out", "", f"{report.min_cosine:.4f}", ""))
    if report.test is not None:
        rows.append((f"{measure} on the test data ({report.test['samples']})", "", f"{report.test['agreement']:.4f}", ""))
        if report.test.get("min_cosine") is not None:
            rows.append(("lowest sample's cosine, test data", "", f"{report.test['min_cosine']:.4f}", ""))
        accuracy = report.test["accuracy"]
        if accuracy:
            rows.append(("test accuracy", f"{accuracy['teacher']:.2%}", f"{accuracy['student']:.2%}",
                         f"{(accuracy['student'] - accuracy['teacher']) * 100:+.2f} points"))
    if report.accuracy:
        rows.append(("held-out accuracy", f"{report.accuracy['teacher']:.2%}", f"{report.accuracy['student']:.2%}",
                     f"{(report.accuracy['student'] - report.accuracy['teacher']) * 100:+.2f} points"))
    if report.before:
        before = report.before
        test = f" (test data: {before['test_agreement']:.4f})" if "test_agreement" in before else ""
        lowest = "" if before.get("min_cosine") is None else f"; lowest {before['min_cosine']:.4f}" + (
            f" (test data: {before['test_min_cosine']:.4f})" if before.get("test_min_cosine") is not None else "")
        rows.insert(0, (f"before training: {measure}", "", f"{before['agreement']:.4f}{test}{lowest}", ""))
    source = ""
    if report.round_trip is not None:
        what = f"`{report.student_onnx}`" if report.student_onnx else \
            f"the teacher keeping layers {report.dropped['kept']} of its {report.dropped['layers']}"
        source = (f"The student is {what} made trainable in PyTorch (before training its max abs error against "
                  f"ONNX Runtime: {report.round_trip:.3g}); the result is its own graph with the trained weights. ")
    settings = report.settings
    lines = ["# graphopt distill", "",
             f"Teacher `{teacher.path}`, student `{student.path}`: {measure} with the teacher "
             f"**{report.agreement:.4f}** on {report.held_out} held-out samples (the exported student in ONNX "
             f"Runtime; export parity with torch {report.parity:.3g}). {source}", "",
             "| | teacher | student | student / teacher |", "|---|---|---|---|",
             *(f"| {name} | {a} | {b} | {ratio} |" for name, a, b, ratio in rows), "",
             f"Trained {len(training.history)} epoch(s) in {report.seconds:.1f} s "
             f"({'online: the teacher run on every batch' if settings.online else 'offline: the teacher outputs cached once'}"
             f"{'; hard labels only' if settings.hard_labels_only else ''}); losses {', '.join(training.losses)}, "
             f"T {settings.temperature:g}, alpha {settings.alpha:g}, lr {settings.lr:g}, batch {settings.batch_size}, "
             f"seed {settings.seed}. The best epoch, {training.best_epoch}, is the one written"
             f"{' (stopped early: no better epoch in ' + str(settings.patience) + ')' if training.stopped_early else ''}"
             f"{f' (stopped at --max-minutes {settings.max_minutes:g})' if training.out_of_time else ''}.",
             "", "| epoch | loss | held-out agreement | seconds | samples/s |", "|---|---|---|---|---|",
             *(f"| {record.epoch} | {record.loss:.4f} | {record.agreement:.4f} | {record.seconds:.2f} | "
               f"{record.samples_per_second:.0f} |" for record in training.history),
             "", f"![loss]({plot_name})", ""]
    return "\n".join(lines)


def _plot(report, path: Path) -> None:
    from graphopt.runtime.bench_report import pyplot

    plt = pyplot()
    history = report.training.history
    figure, loss_axis = plt.subplots(figsize=(6, 3.5))
    epochs = [record.epoch for record in history]
    loss_axis.plot(epochs, [record.loss for record in history], marker="o", color="tab:blue")
    loss_axis.set_xlabel("epoch")
    loss_axis.xaxis.get_major_locator().set_params(integer=True)
    loss_axis.set_ylabel("training loss", color="tab:blue")
    agreement_axis = loss_axis.twinx()
    agreement_axis.plot(epochs, [record.agreement for record in history], marker="s", color="tab:orange")
    agreement_axis.set_ylabel("held-out agreement", color="tab:orange")
    figure.tight_layout()
    staged = path.with_name(path.stem + ".partial.png")
    figure.savefig(staged, dpi=100)
    plt.close(figure)
    staged.replace(path)
