"""What loading costs: ONNX Runtime session creation time and peak memory, float against compressed.

Weight sharing stores packed indices that ONNX Runtime decodes when it loads the session (its basic
optimizations fold the decoder into float initializers): the file is small and inference runs at
float's speed, but loading does the decoding. Weight-only int4 (MatMulNBits) keeps 4 bits in memory
and decodes inside its kernel. This script exports MiniLM (trained weights) with graphopt, makes
O3 float (`graphopt optimize --preset O3 --target ort`), `--cluster-bits B` (graphopt compress, 64
calibration sentences) and weight-only int4 (graphopt quantize, round to nearest), then loads
each file in a fresh process, --rounds rounds in turns (float, clustered, int4, float, ...): the
median seconds of `InferenceSession(...)` and the median peak resident set size of the process
(its VmHWM), with the file sizes and the ratios to O3 float. Run it with the machine to itself.

    python benchmarks/session_load.py [--rounds 5] [--bits 4]

Writes benchmarks/results/session_load.{json,md}.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.compression_vs_peers import run_graphopt  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def load_once(path: Path) -> tuple[float, int]:
    """(seconds to create the session, peak RSS bytes) of loading `path` in a fresh process: the
    peak is the process's own high-water mark (VmHWM), which, unlike wait4's, does not count the
    parent this process was forked from."""
    code = ("import re, sys, time, onnxruntime as ort\n"
            "start = time.perf_counter()\n"
            "ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])\n"
            "seconds = time.perf_counter() - start\n"
            "peak = re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read()).group(1)\n"
            "print(seconds, int(peak) * 1024)\n")
    completed = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
    seconds, peak = completed.stdout.split()
    return float(seconds), int(peak)


def build(work: Path, bits: int) -> dict[str, Path]:
    from benchmarks.compression_vs_peers import _data
    from graphopt.export import export_zoo

    source = work / "minilm.onnx"
    export_zoo("minilm", source)
    calib, *_ = _data("minilm", source, work)  # the compression bench's 64 calibration sentences
    files = {"O3 float": work / "o3.onnx", f"--cluster-bits {bits}": work / "clustered.onnx",
             "weight-only int4": work / "int4.onnx"}
    run_graphopt("optimize", str(source), str(files["O3 float"]), "--preset", "O3", "--target", "ort")
    common = ("--target", "ort", "--no-validate", "--no-check-speed")
    run_graphopt("compress", str(source), str(files[f"--cluster-bits {bits}"]), "--cluster-bits", str(bits),
                 "--calib", str(calib), *common)
    run_graphopt("quantize", str(source), str(files["weight-only int4"]), "--mode", "weight-only", *common)
    return files


def markdown(result: dict) -> str:
    lines = [f"MiniLM (all-MiniLM-L6-v2), {result['date']}, {result['rounds']} rounds, median of each; "
             "ratios against O3 float.", "",
             "| file | size | load s | vs float | peak RSS | vs float |", "|---|---|---|---|---|---|"]
    for label, row in result["rows"].items():
        lines.append(f"| {label} | {row['bytes'] / 2**20:.1f} MiB ({row['size_ratio']:.3f}x) | {row['load_s']:.2f} | "
                     f"{row['load_ratio']:.1f}x | {row['peak_bytes'] / 2**20:.0f} MiB | {row['peak_ratio']:.1f}x |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--bits", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        files = build(Path(tmp), args.bits)
        seen: dict[str, list[tuple[float, int]]] = {label: [] for label in files}
        for _ in range(args.rounds):
            for label, path in files.items():
                seen[label].append(load_once(path))
                time.sleep(0.2)
        base = files["O3 float"].stat().st_size, statistics.median(s for s, _ in seen["O3 float"]), \
            statistics.median(p for _, p in seen["O3 float"])
        rows = {}
        for label, path in files.items():
            load, peak = statistics.median(s for s, _ in seen[label]), statistics.median(p for _, p in seen[label])
            rows[label] = {"bytes": path.stat().st_size, "size_ratio": path.stat().st_size / base[0],
                           "load_s": load, "load_ratio": load / base[1], "peak_bytes": peak,
                           "peak_ratio": peak / base[2]}
    result = {"date": datetime.date.today().isoformat(), "rounds": args.rounds, "rows": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "session_load.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "session_load.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
