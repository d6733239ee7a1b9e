"""graphopt O3 (ort and portable) against the fusing peers, on both torch exporters, in one run.

Tools, each given the raw export (ONNX Runtime's optimizer crashes on GPT-2 after a cleanup
that shares shape Concats, so no tool gets another's output):
  ort-transformers   onnxruntime.transformers.optimizer.optimize_model (bert / gpt2 / vit, opt_level 0)
  onnxscript         onnxscript.optimizer.optimize, then ort_fusions.optimize_for_ort
  onnxsim            onnxsim.simplify
  graphopt-ort       graphopt O3 --target ort
  graphopt-portable  graphopt O3 --target portable --opset 23 (ONNX Attention needs 23)
For each model and tool: nodes, fused ops (attention = Attention + MultiHeadAttention), the time
to load + optimize + save (median of --repeat rounds, every run a fresh process, tools
interleaved), the largest output difference against the original in ONNX Runtime (a crash or a
model that does not run is reported, not hidden), session creation time and p50 latency at
batch 1 for seq 128 and 512 (images 224²) under ORT_ENABLE_ALL, all of a model's variants timed
in one graphopt bench run (time slices: each session owns the machine while timed), and the
original against graphopt under ORT_DISABLE_ALL (what a runtime that does not fuse gets).
Ratios are graphopt / best peer. Writes results/fusion_vs_peers.{json,md}.

    python benchmarks/fusion_vs_peers.py [--models minilm@dynamo,gpt2@torchscript] [--repeat 2]
"""

from __future__ import annotations

import argparse
import collections
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
from benchmarks.cleanup_vs_peers import _max_error  # noqa: E402  (same ORT comparison)

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = RESULTS / "models"
DEFAULT_MODELS = ("minilm@dynamo,minilm@torchscript,bert-base@dynamo,bert-base@torchscript,gpt2@dynamo,"
                  "gpt2@torchscript,vit-base@dynamo,resnet50@dynamo,mobilenetv2@dynamo")
TOOLS = ("ort-transformers", "onnxscript", "onnxsim", "graphopt-ort", "graphopt-portable")
ORT_MODEL_TYPES = {"minilm": "bert", "bert-base": "bert", "gpt2": "gpt2", "vit-base": "vit"}
FUSED = {"attention": ("Attention", "MultiHeadAttention"), "skip_ln": ("SkipLayerNormalization",),
         "gelu": ("Gelu", "BiasGelu", "FastGelu"), "layernorm": ("LayerNormalization",)}


def exported(spec: str) -> Path:
    """zoo@exporter exported by graphopt's exporter (no fallback: the exporter asked for), cached."""
    name, exporter = spec.split("@")
    path = MODELS / f"{name}.{exporter}.onnx"
    if not path.exists():
        from graphopt.export import export_zoo

        MODELS.mkdir(parents=True, exist_ok=True)
        export_zoo(name, path, exporter=exporter, fallback=False)
    return path


def worker(tool: str, zoo_name: str, path: Path, out: Path) -> dict:
    """One timed load -> optimize -> save in this (fresh) process; imports are not timed."""
    if tool.startswith("graphopt"):
        options = {"target": "ort"} if tool == "graphopt-ort" else {"target": "portable", "opset": 23}
        start = time.perf_counter()
        graphopt.optimize(path, out, preset="O3", **options)
    elif tool == "ort-transformers":
        from onnxruntime.transformers.optimizer import optimize_model

        start = time.perf_counter()
        optimize_model(str(path), model_type=ORT_MODEL_TYPES[zoo_name], num_heads=0, hidden_size=0,
                       opt_level=0).save_model_to_file(str(out))
    elif tool == "onnxscript":
        import onnx_ir as ir
        import onnxscript
        from onnxscript.rewriter import ort_fusions

        start = time.perf_counter()
        model = ir.load(path)
        onnxscript.optimizer.optimize(model)
        ort_fusions.optimize_for_ort(model)
        ir.save(model, out)
    elif tool == "onnxsim":
        import onnxsim

        start = time.perf_counter()
        onnx.save(onnxsim.simplify(onnx.load(path))[0], out)
    else:
        raise ValueError(tool)
    return {"file_seconds": time.perf_counter() - start}


def _run_worker(tool: str, zoo_name: str, path: Path, out: Path) -> dict:
    out.unlink(missing_ok=True)
    completed = subprocess.run([sys.executable, __file__, "--worker", tool, zoo_name, str(path), str(out)],
                               capture_output=True, text=True)
    if completed.returncode != 0:
        lines = (completed.stderr.strip() or completed.stdout.strip() or "no output").splitlines()
        raise RuntimeError(lines[-1][:160])
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _shapes(path: Path, seq: int) -> dict[str, tuple[int, ...]]:
    model = onnx.load(path, load_external_data=False)
    initializers = {init.name for init in model.graph.initializer}
    shapes = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        rank = len(value.type.tensor_type.shape.dim)
        shapes[value.name] = (1, seq) if rank == 2 else (1, 3, 224, 224)
    return shapes


def _feeds(path: Path) -> dict[str, np.ndarray]:
    """Batch 2, seq 16, the second sequence right-padded (mask zeros), random ids / pixels."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {}
    for value in session.get_inputs():
        shape = [2, 16] if len(value.shape) == 2 else [2, 3, 224, 224]
        if "int" in value.type:
            array = rng.integers(0, 1000, shape).astype(np.int64)
            if "mask" in value.name:
                array = np.ones(shape, np.int64)
                array[1, -5:] = 0
            feeds[value.name] = array
        else:
            feeds[value.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def _structure(path: Path) -> dict:
    ops = collections.Counter(node.op_type for node in onnx.load(path, load_external_data=False).graph.node)
    row = {"nodes": sum(ops.values())}
    row.update({family: sum(ops[op] for op in op_types) for family, op_types in FUSED.items()})
    return row


def _latency(paths: dict[str, Path], shapes: dict, opt_level: str) -> dict[str, dict]:
    """Session creation and p50 of every variant, timed in one bench run (time slices)."""
    labels = list(paths)
    result = graphopt.bench([str(path) for path in paths.values()], shapes=shapes, labels=labels, runs=60,
                            runtime=graphopt.RuntimeOptions(opt_level=opt_level))
    return {label: {"session_seconds": bench.session_seconds, "p50_ms": bench.p50_ms}
            for label, bench in zip(labels, result.models)}


def bench_model(spec: str, repeat: int, workdir: Path) -> dict:
    zoo_name = spec.split("@")[0]
    path = exported(spec)
    tools = [tool for tool in TOOLS if tool != "ort-transformers" or zoo_name in ORT_MODEL_TYPES]
    outs = {tool: workdir / f"{spec}.{tool}.onnx" for tool in tools}
    timings: dict[str, list[float]] = {tool: [] for tool in tools}
    failures: dict[str, str] = {}
    for round_index in range(repeat):
        for tool in tools:
            if tool in failures:
                continue
            try:
                timings[tool].append(_run_worker(tool, zoo_name, path, outs[tool])["file_seconds"])
            except RuntimeError as error:  # a peer that crashes is a result, not a benchmark failure
                failures[tool] = f"crashed: {error}"
        print(f"  {spec}: round {round_index + 1}/{repeat} done", file=sys.stderr)
    feeds = _feeds(path)
    rows = {"original": _structure(path)}
    for tool in tools:
        if tool in failures:
            rows[tool] = {"failed": failures[tool]}
            continue
        row = _structure(outs[tool])
        row["file_seconds"] = statistics.median(timings[tool])
        try:
            row["max_abs_error"] = _max_error(path, outs[tool], feeds)
        except Exception as error:  # noqa: BLE001 - a model ONNX Runtime cannot run is a result
            rows[tool] = {"failed": f"does not run: {str(error).splitlines()[0][:140]}", **row}
            continue
        rows[tool] = row
    runnable = {"original": path, **{tool: outs[tool] for tool in tools if "failed" not in rows[tool]}}
    sizes = (128, 512) if zoo_name in ("minilm", "bert-base", "gpt2") else (224,)
    for size in sizes:
        for label, numbers in _latency(runnable, _shapes(path, size), "all").items():
            rows[label][f"p50_ms_{size}"] = numbers["p50_ms"]
            rows[label].setdefault("session_seconds", numbers["session_seconds"])
    disabled = {label: runnable[label] for label in ("original", "graphopt-portable", "graphopt-ort") if label in runnable}
    for label, numbers in _latency(disabled, _shapes(path, sizes[0]), "disable").items():
        rows[label][f"p50_ms_{sizes[0]}_disabled"] = numbers["p50_ms"]
    return {"model": spec, "sizes": list(sizes), "tools": rows, "ratios": _ratios(rows, sizes)}


def _ratios(rows: dict, sizes) -> dict:
    peers = {tool: row for tool, row in rows.items()
             if tool not in ("original", "graphopt-ort", "graphopt-portable") and "failed" not in row}
    ours = rows.get("graphopt-ort", {})
    if not peers or "failed" in ours:
        return {}
    best_nodes = min(peers, key=lambda tool: peers[tool]["nodes"])
    ratios = {"nodes_vs_best_peer": ours["nodes"] / peers[best_nodes]["nodes"], "best_peer_nodes": best_nodes}
    for size in sizes:
        key = f"p50_ms_{size}"
        best = min(peers, key=lambda tool: peers[tool][key])
        ratios[f"latency_{size}_vs_best_peer"] = ours[key] / peers[best][key]
        ratios[f"best_peer_{size}"] = best
    if "onnxscript" in peers:
        ratios["file_time_vs_onnxscript"] = ours["file_seconds"] / peers["onnxscript"]["file_seconds"]
    portable = rows.get("graphopt-portable", {})
    key = f"p50_ms_{sizes[0]}_disabled"
    if key in portable:
        ratios["portable_vs_original_disabled"] = portable[key] / rows["original"][key]
    return ratios


def _markdown(results: list[dict]) -> str:
    lines = []
    for result in results:
        sizes = result["sizes"]
        lines.append(f"### {result['model']}\n")
        latency_heads = " | ".join(f"p50 ms @{size}" for size in sizes)
        lines.append(f"| tool | nodes | attention | SkipLN | GELU | LN | optimize s | session s | {latency_heads} | "
                     f"p50 ms @{sizes[0]}, ORT opt. disabled | max abs error |")
        lines.append("|---|" + "---:|" * (9 + len(sizes)))
        for tool, row in result["tools"].items():
            if "failed" in row and "nodes" not in row:
                lines.append(f"| {tool} | {row['failed']} |" + " |" * (9 + len(sizes)))
                continue
            cells = [tool, row["nodes"], row["attention"], row["skip_ln"], row["gelu"], row["layernorm"],
                     f"{row['file_seconds']:.2f}" if "file_seconds" in row else "-",
                     f"{row['session_seconds']:.2f}" if "session_seconds" in row else "-",
                     *(f"{row[f'p50_ms_{size}']:.2f}" if f"p50_ms_{size}" in row else "-" for size in sizes),
                     f"{row[f'p50_ms_{sizes[0]}_disabled']:.2f}" if f"p50_ms_{sizes[0]}_disabled" in row else "-",
                     row.get("failed") or (f"{row['max_abs_error']:.1e}" if "max_abs_error" in row else "-")]
            lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
        ratios = result["ratios"]
        if ratios:
            parts = [f"nodes vs best peer **{ratios['nodes_vs_best_peer']:.2f}x** ({ratios['best_peer_nodes']})"]
            parts += [f"latency @{size} vs best peer **{ratios[f'latency_{size}_vs_best_peer']:.3f}x** "
                      f"({ratios[f'best_peer_{size}']})" for size in sizes]
            if "file_time_vs_onnxscript" in ratios:
                parts.append(f"load+optimize+save vs onnxscript **{ratios['file_time_vs_onnxscript']:.2f}x**")
            if "portable_vs_original_disabled" in ratios:
                parts.append(f"portable vs original, ORT optimizations disabled "
                             f"**{ratios['portable_vs_original_disabled']:.2f}x**")
            lines.append("\ngraphopt-ort: " + "; ".join(parts) + "\n")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=DEFAULT_MODELS)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--worker", nargs=4, metavar=("TOOL", "ZOO", "MODEL", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)
    if args.worker:
        tool, zoo_name, model_path, out = args.worker
        print(json.dumps(worker(tool, zoo_name, Path(model_path), Path(out))))
        return 0
    results = []
    with tempfile.TemporaryDirectory() as workdir:
        for spec in args.models.split(","):
            print(f"benchmarking {spec}", file=sys.stderr)
            results.append(bench_model(spec, args.repeat, Path(workdir)))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "fusion_vs_peers.json").write_text(json.dumps(results, indent=2) + "\n")
    markdown = _markdown(results)
    (RESULTS / "fusion_vs_peers.md").write_text(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
