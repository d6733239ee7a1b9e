"""Does `graphopt bench` report what a deployment sees? Its p50s beside lone sessions'.

For all-MiniLM-L6-v2 at 1x128 and ResNet-18 at 1x3x224x224 (zoo exports and their O1
versions), `graphopt bench` times 1 to 4 models at once, through the Python API and through
the CLI under a pseudo-terminal (progress display on). Each model's p50 is set beside the
p50 of a lone, default-configured ONNX Runtime session of that model in a fresh process
(same inputs, same thread count, same warm-up and run count). Every measurement is its own
process and this driver holds no session, so nothing else competes for the cores; rounds
interleave everything so machine drift hits both sides alike. The ratio per round is
graphopt's p50 over the lone p50 taken in the same round; the table gives the median.

    .venv/bin/python benchmarks/bench_truth.py [--rounds 3] [--models minilm,resnet18]

Writes benchmarks/results/bench_truth.json and .md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pty
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
GRAPHOPT = [sys.executable, "-m", "graphopt"]
THREADS = 2
WARMUP = 10
RUNS = 100
CASES = {
    "minilm": ("input_ids", (1, 128)),
    "resnet18": ("pixel_values", (1, 3, 224, 224)),
}
TOLERATED = 1.10


def lone_p50(model: str, inputs: str, threads: int, warmup: int, runs: int) -> float:
    """In this (fresh) process: one default session, warm-up, timed runs; the median in ms."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    with np.load(inputs) as archive:
        feeds = {name: archive[name] for name in archive.files}
    for _ in range(warmup):
        session.run(None, feeds)
    latencies = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feeds)
        latencies.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(latencies)


def api_p50s(models: list[str], inputs: str, threads: int, warmup: int, runs: int) -> list[float]:
    """In this (fresh) process: graphopt.bench through the API."""
    import graphopt

    result = graphopt.bench(models, inputs=inputs, warmup=warmup, runs=runs,
                            runtime=graphopt.RuntimeOptions(threads=threads))
    return [entry.p50_ms for entry in result.models]


def _child(*args: str) -> str:
    completed = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=False)
    if completed.returncode:
        raise SystemExit(f"child {args[0]} failed:\n{completed.stderr}")
    return completed.stdout.strip().splitlines()[-1]


def cli_p50s(models: list[str], inputs: str, threads: int, warmup: int, runs: int,
             folder: Path) -> tuple[list[float], bool]:
    """`graphopt bench` under a pseudo-terminal, so its progress display is on."""
    report = folder / "cli.json"
    command = [*GRAPHOPT, "bench", *models, "--inputs", inputs, "--threads", str(threads),
               "--warmup", str(warmup), "--runs", str(runs), "--json", str(report)]
    master, slave = pty.openpty()
    process = subprocess.Popen(command, stdin=slave, stdout=slave, stderr=slave, close_fds=True, cwd=ROOT)
    os.close(slave)
    shown = bytearray()
    while True:
        try:
            chunk = os.read(master, 1 << 16)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    os.close(master)
    if process.wait():
        raise SystemExit(f"graphopt bench failed:\n{shown.decode(errors='replace')}")
    data = json.loads(report.read_text())
    return [entry["p50_ms"] for entry in data["cases"][0]["models"]], b"benchmarking" in shown


def prepare(name: str, folder: Path) -> tuple[list[str], str]:
    """Export the zoo model, optimize it (O1), copy both (so four distinct files), write inputs."""
    exported, optimized = folder / f"{name}.onnx", folder / f"{name}.O1.onnx"
    subprocess.run([*GRAPHOPT, "export", "--zoo", name, "-o", str(exported), "--no-parity"], check=True,
                   capture_output=True, cwd=ROOT)
    subprocess.run([*GRAPHOPT, "optimize", str(exported), str(optimized), "-q"], check=True, cwd=ROOT)
    copies = []
    for source in (exported, optimized):
        copy = source.with_name(source.stem + ".copy.onnx")
        shutil.copyfile(source, copy)
        copies.append(copy)
    from graphopt import model as model_io
    from graphopt.runtime.inputs import synthesize
    import numpy as np

    input_name, shape = CASES[name]
    feeds = synthesize(model_io.load(exported), {input_name: shape})
    inputs = folder / f"{name}.inputs.npz"
    np.savez(inputs, **feeds)
    return [str(exported), str(optimized), *map(str, copies)], str(inputs)


def measure(names: list[str], rounds: int, threads: int, warmup: int, runs: int) -> list[dict]:
    rows: dict[tuple, list[float]] = {}
    folder = Path(tempfile.mkdtemp(prefix="bench-truth-"))
    try:
        prepared = {name: prepare(name, folder) for name in names}
        for round_index in range(rounds):
            for name, (models, inputs) in prepared.items():
                common = [inputs, str(threads), str(warmup), str(runs)]
                lone = {model: float(_child("--lone", model, *common)) for model in models[:2]}
                lone.update({models[2]: lone[models[0]], models[3]: lone[models[1]]})
                for count in range(1, 5):
                    chosen = models[:count]
                    api = json.loads(_child("--api", ",".join(chosen), *common))
                    cli, shown = cli_p50s(chosen, inputs, threads, warmup, runs, folder)
                    if not shown:
                        raise SystemExit("the CLI showed no progress display under the pseudo-terminal")
                    for via, p50s in (("API", api), ("CLI (terminal, progress on)", cli)):
                        for position, (model, p50) in enumerate(zip(chosen, p50s)):
                            key = (name, count, via, position, Path(model).name)
                            rows.setdefault(key, []).append((p50, lone[model]))
                print(f"round {round_index + 1}/{rounds}: {name} done", file=sys.stderr)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    table = []
    for (name, count, via, position, model), pairs in rows.items():
        table.append({"case": name, "models_at_once": count, "via": via, "model": model,
                      "graphopt_p50_ms": statistics.median(p for p, _ in pairs),
                      "lone_p50_ms": statistics.median(lone for _, lone in pairs),
                      "ratio": statistics.median(p / lone for p, lone in pairs),
                      "rounds": len(pairs)})
    return table


def _markdown(table: list[dict], settings: dict) -> str:
    worst = max(abs(row["ratio"] - 1) for row in table)
    lines = [f"# graphopt bench against lone sessions ({settings['date']})", "",
             f"{settings['cpu']}; ONNX Runtime {settings['onnxruntime']}; {settings['threads']} intra-op threads; "
             f"{settings['warmup']} warm-up + {settings['runs']} timed runs; median of {settings['rounds']} "
             "interleaved rounds, each measurement its own process.", "",
             "| model | models timed at once | via | graphopt p50 ms | lone session p50 ms | ratio |",
             "|---|---:|---|---:|---:|---:|"]
    for row in table:
        lines.append(f"| {row['case']}: {row['model']} | {row['models_at_once']} | {row['via']} | "
                     f"{row['graphopt_p50_ms']:.2f} | {row['lone_p50_ms']:.2f} | {row['ratio']:.3f} |")
    verdict = "all within" if worst <= TOLERATED - 1 else "NOT all within"
    lines += ["", f"Largest deviation from the lone session: {worst:.1%} ({verdict} {TOLERATED - 1:.0%})."]
    return "\n".join(lines) + "\n"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("--lone", "--api"):
        mode, models, inputs, threads, warmup, runs = sys.argv[1:7]
        if mode == "--lone":
            print(lone_p50(models, inputs, int(threads), int(warmup), int(runs)))
        else:
            print(json.dumps(api_p50s(models.split(","), inputs, int(threads), int(warmup), int(runs))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--models", default=",".join(CASES))
    parser.add_argument("--runs", type=int, default=RUNS)
    args = parser.parse_args()
    names = [name for name in args.models.split(",") if name]
    table = measure(names, args.rounds, THREADS, WARMUP, args.runs)
    import onnxruntime

    from graphopt.runtime.machine import cpu_model

    settings = {"date": datetime.date.today().isoformat(), "cpu": f"{cpu_model()}, {os.cpu_count()} CPUs",
                "onnxruntime": onnxruntime.__version__, "threads": THREADS, "warmup": WARMUP,
                "runs": args.runs, "rounds": args.rounds}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bench_truth.json").write_text(json.dumps({"settings": settings, "rows": table}, indent=2) + "\n")
    markdown = _markdown(table, settings)
    (RESULTS / "bench_truth.md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
