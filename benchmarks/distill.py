"""graphopt distill, one run: a digits student against the teacher and against the same student
trained on the labels alone, and the teacher run online against its outputs cached offline.

digits: the zoo's digits-cnn (trained on scikit-learn's digits) is the teacher; the student is
examples/digits_student.py (a fifth of its parameters). Three runs of the same student with the same
budget (epochs, lr, batch, seed), patience off so every run trains its full budget:
  distilled, offline   soft targets at T 4 mixed with the labels (alpha 0.7), the teacher's outputs
                       computed once and read memory-mapped every epoch;
  distilled, online    the same, the teacher run by ONNX Runtime on every batch;
  hard labels only     cross-entropy on the labels, no teacher.
Reported: test top-1 (the 450 held-out test images, never trained on) of the teacher and each
student, agreement with the teacher, each run's seconds and the epochs' samples per second (offline's
first epoch includes caching the teacher's outputs). The machine must be otherwise idle.

    python benchmarks/distill.py [--epochs 40]

Writes benchmarks/results/distill.{json,md}.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESULTS = Path(__file__).resolve().parent / "results"
RUNS = {"distilled, offline": {}, "distilled, online": {"online": True}, "hard labels only": {"hard_labels_only": True}}


def digits(epochs: int, work: Path) -> dict:
    import torch

    from graphopt import train
    from graphopt.export import export_zoo, load_factory
    from graphopt.export.digits import load_data

    teacher_path = work / "digits.onnx"
    export_zoo("digits-cnn", teacher_path)
    data = load_data()
    teacher = train.Teacher(teacher_path)
    training = train.load({"pixels": data.train_x, "labels": data.train_y}, teacher.model)
    expected = teacher({"pixels": data.test_x})[0]
    rows = {"teacher": {"parameters": int(sum(np.prod(v.const_value.shape.numpy()) for v in
                                              teacher.model.graph.initializers.values())),
                        "test top-1": float(np.mean(expected.argmax(1) == data.test_y))}}
    factory = str(Path(__file__).resolve().parents[1] / "examples" / "digits_student.py") + ":build"
    for label, options in RUNS.items():
        student = load_factory(factory, "--student").module
        settings = train.DistillSettings(epochs=epochs, lr=3e-3, temperature=4.0, alpha=0.7, patience=epochs,
                                         **options)
        start = time.perf_counter()
        result = train.distill(student, teacher, training, settings, work / label.replace(", ", "-").replace(" ", "-"))
        seconds = time.perf_counter() - start
        with torch.no_grad():
            logits = student(torch.from_numpy(data.test_x)).numpy()
        rows[label] = {"parameters": int(sum(parameter.numel() for parameter in student.parameters())),
                       "test top-1": float(np.mean(logits.argmax(1) == data.test_y)),
                       "test agreement": float(np.mean(logits.argmax(1) == expected.argmax(1))),
                       "best epoch": result.best_epoch, "seconds": seconds,
                       "samples/s": [record.samples_per_second for record in result.history]}
        print(label, {key: value for key, value in rows[label].items() if key != "samples/s"}, flush=True)
    return rows


def markdown(results: dict) -> str:
    lines = ["# graphopt distill", "", f"`benchmarks/distill.py`, {results['date']}, {results['epochs']} epochs", "",
             "## digits: teacher digits-cnn, student examples/digits_student.py", "",
             "| run | parameters | test top-1 | agreement with the teacher | seconds | samples/s, first epoch | "
             "samples/s, later epochs (median) |", "|---|---|---|---|---|---|---|"]
    for label, row in results["digits"].items():
        if label == "teacher":
            lines.append(f"| teacher | {row['parameters']:,} | {row['test top-1']:.2%} | | | | |")
            continue
        speeds = row["samples/s"]
        lines.append(f"| {label} | {row['parameters']:,} | {row['test top-1']:.2%} | {row['test agreement']:.2%} | "
                     f"{row['seconds']:.1f} | {speeds[0]:.0f} | {np.median(speeds[1:]):.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="distill-") as folder:
        results = {"date": datetime.date.today().isoformat(), "epochs": args.epochs,
                   "digits": digits(args.epochs, Path(folder))}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "distill.json").write_text(json.dumps(results, indent=1))
    (RESULTS / "distill.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
