"""graphopt O1 against onnxsim, onnxslim, onnxoptimizer and onnxscript's optimizer, in one run.

For each model and tool: node count, output file size, time (median of --repeat rounds, tools
interleaved, each run in a fresh process so none inherits another's warm allocator), and the
largest output difference against the original in ONNX Runtime, so a tool that silently
changes outputs shows up. Times are reported two ways:
  optimize  the tool's in-memory call (graphopt: its pass manager on an ir.Model; peers:
            their Python API, ModelProto in and out)
  file      load the file + optimize + write the result (what a CLI user waits for)
Round 0 is a warm-up and is not counted. Ratios are graphopt / best peer. Writes results/cleanup_vs_peers.{json,md}.

    python benchmarks/cleanup_vs_peers.py [--models minilm,resnet18] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import graphopt  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = RESULTS / "models"


def exported(name: str) -> Path:
    """A zoo model exported by graphopt's exporter (dynamo, no torch-side optimization), cached."""
    path = MODELS / f"{name}.onnx"
    if not path.exists():
        from graphopt.export import export_zoo

        export_zoo(name, path)
    return path


def _peer(name: str):
    if name == "onnxsim":
        import onnxsim

        return lambda proto: onnxsim.simplify(proto)[0]
    if name == "onnxslim":
        import onnxslim

        return lambda proto: onnxslim.slim(proto)
    if name == "onnxoptimizer":
        import onnxoptimizer

        return lambda proto: onnxoptimizer.optimize(proto)
    if name == "onnxscript":
        import onnxscript

        return lambda proto: onnxscript.optimizer.optimize(proto)
    raise ValueError(name)


PEERS = ("onnxsim", "onnxslim", "onnxoptimizer", "onnxscript")


def worker(tool: str, path: Path, out: Path) -> dict:
    """One timed load -> optimize -> save, in this (fresh) process; imports are not timed."""
    if tool == "graphopt":
        from graphopt.pipeline import PassManager, preset_spec

        manager = PassManager(preset_spec("O1").build(), fixed_point=True)
        load, optimize = graphopt.load, manager.run
        save = lambda model, target: graphopt.save(model, target, external_data=False)  # noqa: E731
    else:
        tool_optimize = _peer(tool)
        load, save = onnx.load, onnx.save
        optimize = tool_optimize
    start = time.perf_counter()
    model = load(path)
    loaded = time.perf_counter()
    result = optimize(model)
    optimized = time.perf_counter()
    save(model if tool == "graphopt" else result, out)
    saved = time.perf_counter()
    return {"load_seconds": loaded - start, "optimize_seconds": optimized - loaded,
            "save_seconds": saved - optimized, "file_seconds": saved - start}


def _run_worker(tool: str, path: Path, out: Path) -> dict:
    out.unlink(missing_ok=True)
    completed = subprocess.run(
        [sys.executable, __file__, "--worker", tool, str(path), str(out)],
        capture_output=True, text=True)
    if completed.returncode != 0:
        lines = (completed.stderr.strip() or completed.stdout.strip() or "no output").splitlines()
        raise RuntimeError(lines[-1][:160])
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _feeds(path: Path) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {}
    for value in session.get_inputs():
        shape = [d if isinstance(d, int) else (2 if i == 0 else 16) for i, d in enumerate(value.shape)]
        if "int64" in value.type:
            feeds[value.name] = (np.ones(shape, np.int64) if "mask" in value.name
                                 else rng.integers(0, 1000, shape).astype(np.int64))
        else:
            feeds[value.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def _max_error(original: Path, candidate: Path, feeds) -> float:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    want = ort.InferenceSession(str(original), options, providers=["CPUExecutionProvider"]).run(None, feeds)
    got = ort.InferenceSession(str(candidate), options, providers=["CPUExecutionProvider"]).run(None, feeds)
    return max(float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
               for a, b in zip(want, got))


def bench_model(name: str, path: Path, repeat: int, workdir: Path) -> dict:
    tools = ("graphopt",) + PEERS
    timings: dict[str, list[dict]] = {tool: [] for tool in tools}
    failures: dict[str, str] = {}
    for round_index in range(repeat + 1):  # round 0 warms the file cache and is not counted
        for tool in tools:
            if tool in failures:
                continue
            try:
                timing = _run_worker(tool, path, workdir / f"{name}.{tool}.onnx")
            except RuntimeError as error:  # a peer that crashes is a result, not a benchmark failure
                failures[tool] = str(error)
                continue
            if round_index:
                timings[tool].append(timing)
        print(f"  {name}: round {round_index}/{repeat} done", file=sys.stderr)
    feeds = _feeds(path)
    rows = {}
    for tool in tools:
        if tool in failures:
            rows[tool] = {"failed": failures[tool]}
            continue
        out = workdir / f"{name}.{tool}.onnx"
        row = {key: statistics.median(t[key] for t in timings[tool]) for key in timings[tool][0]}
        row.update(nodes=len(onnx.load(out, load_external_data=False).graph.node),
                   bytes=out.stat().st_size, max_abs_error=_max_error(path, out, feeds))
        rows[tool] = row
    return {"model": name, "original_nodes": len(onnx.load(path, load_external_data=False).graph.node),
            "original_bytes": path.stat().st_size, "tools": rows}


def _ratios(result: dict) -> dict:
    ok = {tool: row for tool, row in result["tools"].items() if "failed" not in row}
    peers = {tool: row for tool, row in ok.items() if tool != "graphopt"}
    ours = ok["graphopt"]
    fastest = min(peers, key=lambda t: peers[t]["optimize_seconds"])
    fastest_file = min(peers, key=lambda t: peers[t]["file_seconds"])
    fewest = min(peers, key=lambda t: peers[t]["nodes"])
    return {
        "optimize_time_vs_fastest_peer": ours["optimize_seconds"] / peers[fastest]["optimize_seconds"],
        "fastest_peer": fastest,
        "file_time_vs_fastest_peer": ours["file_seconds"] / peers[fastest_file]["file_seconds"],
        "fastest_peer_file": fastest_file,
        "nodes_vs_best_peer": ours["nodes"] / peers[fewest]["nodes"],
        "best_peer_nodes": fewest,
    }


def _markdown(results: list[dict]) -> str:
    lines = []
    for result in results:
        lines.append(f"### {result['model']} ({result['original_nodes']} nodes, "
                     f"{result['original_bytes'] / 2**20:.1f} MiB)\n")
        lines.append("| tool | nodes | size MiB | optimize ms | file ms | max abs error |")
        lines.append("|---|---:|---:|---:|---:|---:|")
        for tool, row in result["tools"].items():
            if "failed" in row:
                lines.append(f"| {tool} | failed: {row['failed']} | | | | |")
                continue
            lines.append(f"| {tool} | {row['nodes']} | {row['bytes'] / 2**20:.1f} | "
                         f"{row['optimize_seconds'] * 1000:.0f} | {row['file_seconds'] * 1000:.0f} | "
                         f"{row['max_abs_error']:.2e} |")
        ratios = result["ratios"]
        lines.append("")
        lines.append(f"graphopt / fastest peer, optimize time: **{ratios['optimize_time_vs_fastest_peer']:.2f}x** "
                     f"({ratios['fastest_peer']}); file time: **{ratios['file_time_vs_fastest_peer']:.2f}x** "
                     f"({ratios['fastest_peer_file']}); nodes vs best peer: "
                     f"**{ratios['nodes_vs_best_peer']:.2f}x** ({ratios['best_peer_nodes']})\n")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="minilm,resnet18")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--worker", nargs=3, metavar=("TOOL", "MODEL", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)
    if args.worker:
        tool, model_path, out = args.worker
        print(json.dumps(worker(tool, Path(model_path), Path(out))))
        return 0
    results = []
    with tempfile.TemporaryDirectory() as workdir:
        for name in args.models.split(","):
            path = exported(name)
            print(f"benchmarking {name} ({path})", file=sys.stderr)
            result = bench_model(name, path, args.repeat, Path(workdir))
            result["ratios"] = _ratios(result)
            results.append(result)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "cleanup_vs_peers.json").write_text(json.dumps(results, indent=2) + "\n")
    markdown = _markdown(results)
    (RESULTS / "cleanup_vs_peers.md").write_text(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
