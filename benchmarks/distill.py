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
first epoch includes caching the teacher's outputs).

minilm (the zoo's all-MiniLM-L6-v2, real weights; trained on its model.train.txt — the ~2,600 sentences
of Python's own documentation, pydoc_data — and judged on model.test.txt, 256 sentences never trained
on, by the cosine of the mean-pooled embeddings, the lowest sentence's reported):
  recovery     graphopt compress --prune-channels 0.5 --prune-heads 0.25 (all pruned, refitted), then
               distill --student-onnx on it for at most --minutes; then compress --quantize dynamic
               (O3, target ort) on the recovered student. Timed at 1x128 against the float export and
               O3 float (target ort) of the same export, in one bench run.
  drop-layers  distill --drop-layers 2 --match-layers (3 of 6 layers, the teacher's own weights) for at
               most --minutes; its O3 (target ort) timed against the teacher's O3.
  online       the drop-layers student two epochs offline and two online: the epochs' seconds.
The machine must be otherwise idle.

    python benchmarks/distill.py [--parts digits,recovery,drop-layers,online] [--epochs 40] [--minutes 15]

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


TEXT = {"max_length": 64, "batch_size": 32}
BENCH_SHAPES = {"input_ids": (1, 128), "attention_mask": (1, 128)}


def _minilm(work: Path) -> dict[str, Path]:
    from graphopt.export import export_zoo

    teacher = work / "minilm.onnx"
    if not teacher.exists():
        export_zoo("minilm", teacher)
    return {"teacher": teacher, "train": work / "minilm.train.txt", "test": work / "minilm.test.txt",
            "tokenizer": work / "minilm.tokenizer.json", "calibration": work / "minilm.calibration"}


def _float(path: Path, work: Path, name: str) -> Path:
    from graphopt import api

    target = work / f"{name}.O3-ort.onnx"
    api.optimize(path, target, preset="O3", target="ort", validate=False)
    return target


def _distilled(report) -> dict:
    before = report.before or {}
    return {"parameters": report.student.parameters, "file bytes": report.student.file_bytes,
            "epochs": len(report.training.history), "best epoch": report.training.best_epoch,
            "seconds": report.seconds, "test cosine": report.test["agreement"],
            "test min cosine": report.test["min_cosine"], "before test cosine": before.get("test_agreement"),
            "before test min cosine": before.get("test_min_cosine"),
            "samples/s": [record.samples_per_second for record in report.training.history]}


def _pooled_min_cosine(teacher: Path, student: Path, files: dict[str, Path]) -> float:
    from graphopt import train
    from graphopt.runtime.providers import SessionConfig, create_session
    from graphopt.train.loop import sample_cosines

    reference = train.Teacher(teacher)
    data = train.load(files["test"], reference.model, tokenizer=files["tokenizer"], max_length=TEXT["max_length"])
    got = create_session(student, SessionConfig(spinning=False)).run(data.arrays)[0]
    return float(np.min(sample_cosines(got, reference(data.arrays)[0], data.arrays["attention_mask"])))


def _timed(paths: dict[str, Path]) -> dict[str, float]:
    from graphopt import api

    bench = api.bench(list(paths.values()), shapes=BENCH_SHAPES, warmup=10, runs=200, labels=list(paths))
    return {label: model.p50_ms for label, model in zip(paths, bench.models)}


def recovery(minutes: float, work: Path) -> dict:
    from graphopt import api

    files = _minilm(work)
    pruned, recovered, quantized = work / "pruned.onnx", work / "recovered.onnx", work / "recovered.dynamic.onnx"
    api.compress(files["teacher"], pruned, prune_channels=0.5, prune_heads=0.25, calibration=files["calibration"],
                 min_cosine=0.0, check_speed=False)
    report = api.distill(files["teacher"], recovered, student_onnx=pruned, data=files["train"], test_data=files["test"],
                         tokenizer=files["tokenizer"], time_models=False, epochs=1000, patience=1000,
                         max_minutes=minutes, lr=5e-4, **TEXT)
    api.quantize(recovered, quantized, mode="dynamic", preset="O3", target="ort", check_speed=False, force=True)
    row = _distilled(report)
    row["quantized test min cosine"] = _pooled_min_cosine(files["teacher"], quantized, files)
    row["p50 ms"] = _timed({"float export": files["teacher"], "O3 float": _float(files["teacher"], work, "minilm"),
                            "recovered O3": _float(recovered, work, "recovered"), "recovered dynamic int8": quantized})
    print("recovery", {key: value for key, value in row.items() if key != "samples/s"}, flush=True)
    return row


def drop_layers(minutes: float, work: Path) -> dict:
    from graphopt import api

    files = _minilm(work)
    student = work / "three-layers.onnx"
    report = api.distill(files["teacher"], student, drop_layers=2, match_layers=True, data=files["train"],
                         test_data=files["test"], tokenizer=files["tokenizer"], time_models=False, epochs=1000,
                         patience=1000, max_minutes=minutes, lr=5e-4, **TEXT)
    row = _distilled(report)
    row["kept"] = report.dropped["kept"]
    row["p50 ms"] = _timed({"float export": files["teacher"], "O3 float": _float(files["teacher"], work, "minilm"),
                            "3 layers O3": _float(student, work, "three-layers")})
    print("drop-layers", {key: value for key, value in row.items() if key != "samples/s"}, flush=True)
    return row


def online(work: Path) -> dict:
    from graphopt import api

    files = _minilm(work)
    rows = {}
    for label, flag in (("offline", False), ("online", True)):
        report = api.distill(files["teacher"], work / f"{label}.onnx", drop_layers=2, data=files["train"],
                             tokenizer=files["tokenizer"], time_models=False, epochs=2, patience=2, online=flag,
                             work=work / f"{label}.distill", lr=5e-4, **TEXT)
        rows[label] = {"epoch seconds": [record.seconds for record in report.training.history],
                       "held-out cosine": report.agreement}
        print(label, rows[label], flush=True)
    return rows


def markdown(results: dict) -> str:
    lines = ["# graphopt distill", "", f"`benchmarks/distill.py`, {results['date']}", ""]
    if "digits" in results:
        lines += _digits_markdown(results)
    for part, title in (("recovery", "MiniLM pruned (FFN 0.5, heads 0.25), recovered with --student-onnx"),
                        ("drop-layers", "MiniLM --drop-layers 2 --match-layers (3 of 6 layers)")):
        if part in results:
            lines += _minilm_markdown(results[part], title)
    if "online" in results:
        lines += ["## Online against offline (the --drop-layers 2 student, 2 epochs each)", "",
                  "| teacher | epoch 1 seconds | epoch 2 seconds | held-out cosine |", "|---|---|---|---|"]
        lines += [f"| {label} | {row['epoch seconds'][0]:.1f} | {row['epoch seconds'][1]:.1f} | "
                  f"{row['held-out cosine']:.4f} |" for label, row in results["online"].items()]
        lines.append("")
    return "\n".join(lines) + "\n"


def _minilm_markdown(row: dict, title: str) -> list[str]:
    times = row["p50 ms"]
    base, best = times["float export"], times["O3 float"]
    lines = [f"## {title}", "",
             f"{row['parameters']:,} parameters, trained {row['epochs']} epochs in {row['seconds']:.0f} s (best "
             f"{row['best epoch']}). On the 256 test sentences (mean-pooled embeddings against the teacher's):", "",
             "| | mean cosine | lowest cosine |", "|---|---|---|"]
    if row.get("before test cosine") is not None:
        lines.append(f"| before distilling | {row['before test cosine']:.4f} | {row['before test min cosine']:.4f} |")
    lines.append(f"| distilled | {row['test cosine']:.4f} | {row['test min cosine']:.4f} |")
    if "quantized test min cosine" in row:
        lines.append(f"| distilled, then dynamic int8 | | {row['quantized test min cosine']:.4f} |")
    lines += ["", "| model (1x128) | p50 ms | vs float export | vs O3 float |", "|---|---|---|---|"]
    lines += [f"| {label} | {ms:.2f} | {base / ms:.2f}x | {best / ms:.2f}x |" for label, ms in times.items()]
    return lines + [""]


def _digits_markdown(results: dict) -> list[str]:
    lines = [f"## digits: teacher digits-cnn, student examples/digits_student.py ({results['epochs']} epochs)", "",
             "| run | parameters | test top-1 | agreement with the teacher | seconds | samples/s, first epoch | "
             "samples/s, later epochs (median) |", "|---|---|---|---|---|---|---|"]
    for label, row in results["digits"].items():
        if label == "teacher":
            lines.append(f"| teacher | {row['parameters']:,} | {row['test top-1']:.2%} | | | | |")
            continue
        speeds = row["samples/s"]
        lines.append(f"| {label} | {row['parameters']:,} | {row['test top-1']:.2%} | {row['test agreement']:.2%} | "
                     f"{row['seconds']:.1f} | {speeds[0]:.0f} | {np.median(speeds[1:]):.0f} |")
    return lines + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40, help="digits: the epochs of each run")
    parser.add_argument("--minutes", type=float, default=15.0, help="minilm: each student's training time, at most")
    parser.add_argument("--parts", default="digits,recovery,drop-layers,online")
    args = parser.parse_args()
    saved = RESULTS / "distill.json"
    results = json.loads(saved.read_text()) if saved.exists() else {}
    results["date"] = datetime.date.today().isoformat()
    with tempfile.TemporaryDirectory(prefix="distill-") as folder:
        work = Path(folder)
        for part in args.parts.split(","):
            if part == "digits":
                results["epochs"], results["digits"] = args.epochs, digits(args.epochs, work)
            elif part == "recovery":
                results["recovery"] = recovery(args.minutes, work)
            elif part == "drop-layers":
                results["drop-layers"] = drop_layers(args.minutes, work)
            elif part == "online":
                results["online"] = online(work)
            else:
                parser.error(f"unknown part {part!r}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "distill.json").write_text(json.dumps(results, indent=1))
    (RESULTS / "distill.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
