"""graphopt compress on the zoo: structured pruning, low-rank, weight sharing, against O3 float, one run.

Every row is `graphopt compress` (or `graphopt quantize`) as a user runs it from the zoo's export,
--target ort (minilm-portable: --target portable, MiniLM's unfused attention), its statistics on calibration data (CNNs: 32 synthesized images, as their weights
are random; digits-cnn: its shipped calibration set; MiniLM: 64 prose sentences of Python's own
documentation), validation and the guards off so that the row is the setting asked for, not what
the fallback would back it off to — but for a row with a budget (--min-cosine), which is the fallback's
choice, judged on held-out calibration samples. Fidelity is measured here, against O3 float of the same export:
CNNs the lowest output cosine over 8 held-out images (another seed); digits-cnn top-1 on its test
set; MiniLM the lowest cosine of the mean-pooled embeddings of the 256 evaluation sentences
(benchmarks/data/sentences.txt). MACs: the multiply-adds of Conv, MatMul, Gemm and attention (a fused
Attention's projection, QKᵀ and PV) at the timed shape; an int8 or int4 kernel counts as its float
layer. Latency: p50 at batch
1 (MiniLM 1x128), each file alone in a fresh process (benchmarks/foreign_models.py's timer), the
fastest of --rounds rounds; "vs O3" is O3 float's p50 over the row's (above 1.00x is faster).

Peers: torch-pruning (MagnitudePruner, L1, the same ratio per layer, round_to 8) on the zoo's torch
modules of ResNet-18 (every conv, the classifier kept) and MiniLM (the FFN neurons: every other
Linear kept), exported by graphopt's exporter and run through O3 like the others (beside it,
graphopt with the same criterion: --importance l1 --no-reconstruct); qonnx's PruneChannels on the
same ONNX files (graphopt's O3 portable output: it cannot extract the raw exports' Conv biases),
each weight's lowest-L1 channels at the same ratio — a row says when it refused or left a graph that
ONNX Runtime cannot run. yolov8n-320 is ultralytics' export from the foreign-model corpus
(tests/foreign_models.py), calibrated and judged on its realistic scenes: no torch source.

    python benchmarks/compression_vs_peers.py [--rounds 3] [--models resnet18,digits-cnn] [--rows="LABEL;LABEL"]

Writes benchmarks/results/compression_vs_peers.{json,md}.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESULTS = Path(__file__).resolve().parent / "results"
TIMER = Path(__file__).resolve().parent / "foreign_models.py"
IMAGE = (1, 3, 224, 224)

# (model, row label, graphopt compress flags; None: the O3 float baseline). CALIB: the calibration data,
# where the row measures statistics (a run that would measure none refuses --calib).
CALIB = "--calib"
ROWS = {
    "resnet18": [("O3 float", None), ("--prune-channels 0.5", ["--prune-channels", "0.5", CALIB]),
                 ("--prune-channels 0.5 --importance l1 --no-reconstruct",
                  ["--prune-channels", "0.5", "--importance", "l1", "--no-reconstruct"]),
                 ("torch-pruning L1 0.5 (round_to 8)", "torch-pruning:0.5"),
                 ("qonnx PruneChannels L1 0.5 (O3 portable file)", "qonnx:0.5"),
                 ("static int8", ["--quantize", "static", CALIB]),
                 ("--prune-channels 0.5 --quantize static", ["--prune-channels", "0.5", "--quantize", "static", CALIB])],
    "resnet50": [("O3 float", None), ("--prune-channels 0.3", ["--prune-channels", "0.3", CALIB]),
                 ("qonnx PruneChannels L1 0.3 (O3 portable file)", "qonnx:0.3")],
    "mobilenetv2": [("O3 float", None), ("--prune-channels 0.3", ["--prune-channels", "0.3", CALIB]),
                    ("qonnx PruneChannels L1 0.3 (O3 portable file)", "qonnx:0.3")],
    "digits-cnn": [("O3 float", None),
                   ("--prune-channels 0.5", ["--prune-channels", "0.5", "--round-to", "1", CALIB]),
                   ("--prune-channels 0.5 --no-reconstruct",
                    ["--prune-channels", "0.5", "--round-to", "1", "--no-reconstruct", CALIB]),
                   ("qonnx PruneChannels L1 0.5 (O3 portable file)", "qonnx:0.5")],
    "yolov8n-320": [("O3 float", None), ("--prune-channels 0.3", ["--prune-channels", "0.3", CALIB]),
                    ("qonnx PruneChannels L1 0.3 (O3 portable file)", "qonnx:0.3")],
    "minilm": [("O3 float", None),
               ("--prune-channels 0.5 (FFN neurons)", ["--prune-channels", "0.5", CALIB]),
               ("--prune-channels 0.5 --importance l1 --no-reconstruct",
                ["--prune-channels", "0.5", "--importance", "l1", "--no-reconstruct"]),
               ("torch-pruning L1 0.5 (FFN neurons)", "torch-pruning:0.5"),
               ("--prune-channels 0.5 --prune-heads 0.25", ["--prune-channels", "0.5", "--prune-heads", "0.25", CALIB]),
               ("--rank-ratio 0.7 (whitened)", ["--rank-ratio", "0.7", CALIB]),
               ("--rank-ratio 0.7 --no-whiten", ["--rank-ratio", "0.7", "--no-whiten"]),
               ("--cluster-bits 4", ["--cluster-bits", "4", CALIB]),
               ("--cluster-bits 4 --min-cosine 0.99", ["--cluster-bits", "4", "--min-cosine", "0.99", CALIB]),
               ("--cluster-bits 4 --min-cosine 0.995", ["--cluster-bits", "4", "--min-cosine", "0.995", CALIB]),
               ("--cluster-bits 6 --cluster-table-bits 4", ["--cluster-bits", "6", "--cluster-table-bits", "4", CALIB]),
               ("--quantize weight-only (int4)", ["--quantize", "weight-only"])],
    # the same export, --target portable: the heads of an unfused attention (no contrib op)
    "minilm-portable": [("O3 float", None), ("--prune-heads 0.25", ["--prune-heads", "0.25", CALIB]),
                        ("--prune-channels 0.5 --prune-heads 0.25",
                         ["--prune-channels", "0.5", "--prune-heads", "0.25", CALIB])],
}
TARGET = {"minilm-portable": "portable"}  # every other model: --target ort


def macs(path: Path, feeds: dict[str, np.ndarray]) -> int:
    """Multiply-adds of the Conv/ConvTranspose/MatMul/Gemm layers (and their fused and int8 forms) on
    `feeds`: the shapes are read from a run with their inputs and outputs exposed (shape inference
    does not know ONNX Runtime's contrib ops)."""
    import onnxruntime as ort

    proto = onnx.load(path)
    counted = [node for node in proto.graph.node if node.op_type in _CONVS + _MATMULS + _ATTENTION]
    constants = {tensor.name: list(tensor.dims) for tensor in proto.graph.initializer}
    wanted = {name for node in counted for name in (node.input[0], node.input[1], node.output[0])
              if name and name not in constants}
    known = {value.name for value in proto.graph.output}
    proto.graph.output.extend(onnx.ValueInfoProto(name=name) for name in sorted(wanted - known))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    dims = dict(constants)
    dims.update({name: list(array.shape) for name, array in zip(names, session.run(names, feeds))})
    total = 0
    for node in counted:
        out, first, weight = dims[node.output[0]], dims[node.input[0]], dims.get(node.input[1])
        if node.op_type in _CONVS and weight:
            total += math.prod(out) * math.prod(weight[1:])
        elif node.op_type in _MATMULS:
            total += math.prod(out) * (first[0] if node.op_type == "Gemm" and _attr(node, "transA") else first[-1])
        elif node.op_type == "Attention" and weight:  # the Q/K/V projection, then QKᵀ and PV
            rows, width = math.prod(first[:-1]), weight[1] // 3
            total += rows * weight[0] * weight[1] + 2 * rows * first[-2] * width
        elif node.op_type == "MultiHeadAttention":  # QKᵀ and PV on projected [B, S, N] inputs
            total += 2 * math.prod(first) * (dims[node.input[1]][-2] if node.input[1] in dims else first[-2])
    return total


_CONVS = ("Conv", "FusedConv", "ConvInteger")
_MATMULS = ("MatMul", "Gemm", "MatMulInteger", "DynamicQuantizeMatMul", "MatMulNBits", "FusedMatMul")
_ATTENTION = ("Attention", "MultiHeadAttention")


def _attr(node, name: str) -> int:
    return next((attribute.i for attribute in node.attribute if attribute.name == name), 0)


def run_graphopt(*args: str) -> None:
    """`python -m graphopt ARGS` in a fresh process; its last error line raised as a RuntimeError."""
    completed = subprocess.run([sys.executable, "-m", "graphopt", *args], capture_output=True, text=True)
    if completed.returncode:
        raise RuntimeError((completed.stderr.strip() or completed.stdout.strip()).splitlines()[-1][:300])


def _p50(path: Path, feeds: Path) -> float:
    completed = subprocess.run([sys.executable, str(TIMER), "--time", str(path), str(feeds)], capture_output=True,
                               text=True, check=True)
    return float(completed.stdout.strip().splitlines()[-1])


def _data(name: str, path: Path, work: Path) -> tuple[Path, dict, list[dict], str]:
    """(calibration file or folder, the timed feeds, the evaluation feeds, what fidelity means)."""
    from benchmarks.quant_vs_ort import _calibration_sentences, _sentence_feeds

    if name.startswith("minilm"):
        folder = work / "minilm.calibration"
        folder.mkdir(exist_ok=True)
        for index, feed in enumerate(_calibration_sentences(64)):
            np.savez(folder / f"{index:03d}.npz", **feed)
        timed = {"input_ids": np.full((1, 128), 2000, np.int64), "attention_mask": np.ones((1, 128), np.int64)}
        return folder, timed, _sentence_feeds(), "min cosine, 256 sentences"
    if name == "digits-cnn":
        calib = path.with_name("digits-cnn.calibration.npz")
        with np.load(path.with_name("digits-cnn.test.npz")) as test:
            arrays = {key: test[key] for key in test.files}
        key = next(k for k in arrays if k != "labels")
        evaluation = [{key: arrays[key]}, {"labels": arrays["labels"]}]
        return calib, {key: arrays[key][:1]}, evaluation, "test top-1"
    if name == "yolov8n-320":
        from tests.foreign_models import by_name, write_calibration

        model = by_name(name)
        evaluation = model.samples(8, 1)
        return write_calibration(model, work / f"{name}.calibration"), evaluation[0], evaluation, \
            "min cosine, 8 realistic scenes"
    rng = np.random.default_rng(1)
    calib = work / f"{name}.calibration.npz"
    np.savez(calib, pixel_values=rng.standard_normal((32, *IMAGE[1:])).astype(np.float32))
    held_out = np.random.default_rng(2).standard_normal((8, *IMAGE[1:])).astype(np.float32)
    return calib, {"pixel_values": held_out[:1]}, [{"pixel_values": held_out}], "min cosine, 8 images"


def _torch_pruning(name: str, ratio: float, out: Path) -> str:
    """torch-pruning's MagnitudePruner (L1, the same ratio per layer, kept channels a multiple of 8, the
    classifier kept) on the zoo's torch module, exported by graphopt's exporter, then graphopt's O3."""
    import torch
    import torch_pruning

    from graphopt.export import export_spec, zoo_entry

    spec = zoo_entry(name).build()
    module = spec.module.eval()
    linear = {key: layer for key, layer in module.named_modules() if isinstance(layer, torch.nn.Linear)}
    ffn = [key for key in linear if key.endswith("intermediate.dense")]  # a transformer: its FFN neurons only
    ignored = [layer for key, layer in linear.items() if key not in ffn]
    torch_pruning.pruner.MagnitudePruner(module, spec.example_inputs,
                                         importance=torch_pruning.importance.MagnitudeImportance(p=1),
                                         pruning_ratio=ratio, ignored_layers=ignored, round_to=8).step()
    raw = out.with_suffix(".torch.onnx")
    export_spec(spec, raw)
    run_graphopt("optimize", str(raw), str(out), "--preset", "O3", "--target", "ort")
    return ""


def _qonnx(source: Path, ratio: float, out: Path, timed: dict) -> str:
    """qonnx's PruneChannels on graphopt's O3 portable file (a raw export's Conv biases it cannot extract),
    batch fixed at 1 as its cleanup wants, each Conv/MatMul weight's lowest-L1 output channels at `ratio`:
    "" when it wrote a model that runs, else how it refused or broke."""
    import onnxruntime as ort
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.transformation.pruning import PruneChannels
    from qonnx.util.cleanup import cleanup_model

    portable = out.with_suffix(".portable.onnx")
    run_graphopt("optimize", str(source), str(portable), "--preset", "O3")
    proto = onnx.load(portable)
    for value in proto.graph.input:
        value.type.tensor_type.shape.dim[0].Clear()
        value.type.tensor_type.shape.dim[0].dim_value = 1
    model = cleanup_model(ModelWrapper(proto), extract_conv_bias=True)
    spec = {}
    for node in model.graph.node:
        weight = model.get_initializer(node.input[1]) if node.op_type in ("Conv", "MatMul") else None
        if weight is not None:
            axis = 0 if node.op_type == "Conv" else 1
            norms = np.abs(np.moveaxis(weight, axis, 0)).reshape(weight.shape[axis], -1).sum(1)
            spec[node.input[1]] = {axis: set(np.argsort(norms)[:int(ratio * len(norms))].tolist())}
    try:
        model = model.transform(PruneChannels(spec))
    except Exception as error:  # noqa: BLE001  (the peer's own refusal, counted)
        return f"refused: {type(error).__name__}: {str(error).splitlines()[0][:120]}"
    model.save(str(out))
    try:
        session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        session.run(None, dict(zip([value.name for value in session.get_inputs()], timed.values())))
    except Exception as error:  # noqa: BLE001
        message = re.sub(r"Load model from \S+ failed:", "", str(error).splitlines()[0])
        return f"broken: {message.replace('[ONNXRuntimeError] : 1 : FAIL : ', '')[:160]}"
    return ""


def _fidelity(name: str, path: Path, baseline: Path, evaluation: list[dict]) -> float:
    from benchmarks.quant_vs_ort import _cosine, _outputs

    if name.startswith("minilm"):
        want, got = _outputs(baseline, evaluation, True), _outputs(path, evaluation, True)
        return min(_cosine(w[i], g[i]) for w, g in zip(want, got) for i in range(len(w)))
    if name == "digits-cnn":
        logits = np.concatenate([outputs[0] for outputs in _one_by_one(path, evaluation[:1])])
        return float(np.mean(logits.argmax(-1) == evaluation[1]["labels"]))
    want, got = _one_by_one(baseline, evaluation), _one_by_one(path, evaluation)
    return min(_cosine(w, g) for wanted, gotten in zip(want, got) for w, g in zip(wanted, gotten))


def _one_by_one(path: Path, evaluation: list[dict]) -> list[list[np.ndarray]]:
    """Every output for each sample of the evaluation feeds, one at a time, the inputs fed in order
    (a peer may rename them and fix the batch at 1)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [value.name for value in session.get_inputs()]
    results = []
    for feed in evaluation:
        arrays = list(feed.values())
        for index in range(len(arrays[0])):
            results.append(session.run(None, {name: array[index:index + 1] for name, array in zip(names, arrays)}))
    return results


def bench_model(name: str, work: Path, rounds: int, only: set[str] | None = None) -> dict:
    from graphopt.export import export_zoo

    source = work / f"{name}.onnx"
    if name == "yolov8n-320":
        from tests.foreign_models import by_name

        source.write_bytes(by_name(name).path().read_bytes())
    else:
        export_zoo(name.split("-portable")[0], source)
    calib, timed, evaluation, fidelity = _data(name, source, work)
    feeds = work / f"{name}.feeds.npz"
    np.savez(feeds, **timed)
    rows = {}
    for label, flags in ROWS[name]:
        if only is not None and flags is not None and label not in only:
            continue
        out = work / f"{name}.{len(rows)}.onnx"
        try:
            if flags is None:
                run_graphopt("optimize", str(source), str(out), "--preset", "O3", "--target", TARGET.get(name, "ort"))
            elif isinstance(flags, str):  # a peer
                peer, ratio = flags.split(":")
                note = _torch_pruning(name, float(ratio), out) if peer == "torch-pruning" else \
                    _qonnx(source, float(ratio), out, timed)
                if note:
                    rows[label] = {"failed": note}
                    continue
            else:
                given = [item for flag in flags for item in ((CALIB, str(calib)) if flag == CALIB else (flag,))]
                judged = () if "--min-cosine" in flags else ("--no-validate",)  # a budget row is the fallback's choice
                run_graphopt("compress", str(source), str(out), *given, "--target", TARGET.get(name, "ort"), *judged,
                     "--no-check-speed")
        except RuntimeError as failed:
            rows[label] = {"failed": str(failed)}
            continue
        rows[label] = {"path": str(out), "bytes": out.stat().st_size, "macs": macs(out, timed),
                       "fidelity": _fidelity(name, out, work / f"{name}.0.onnx", evaluation), "rounds_ms": []}
    for _ in range(rounds):
        for row in rows.values():
            if "path" in row:
                row["rounds_ms"].append(_p50(Path(row["path"]), feeds))
    base = rows["O3 float"]
    for row in rows.values():
        if "rounds_ms" in row:
            row["p50_ms"] = min(row["rounds_ms"])
            row["vs_o3"] = min(base["rounds_ms"]) / row["p50_ms"]
            row["macs_ratio"] = row["macs"] / base["macs"]
            row["size_ratio"] = row["bytes"] / base["bytes"]
    return {"model": name, "fidelity": fidelity, "date": datetime.date.today().isoformat(), "rows": rows}


def markdown(results: list[dict]) -> str:
    lines = ["| model | setting | p50 ms | vs O3 float | MACs (x O3) | file (x O3) | fidelity |",
             "|---|---|---:|---:|---:|---:|---|"]
    for entry in results:
        for label, row in entry["rows"].items():
            if "failed" in row:
                lines.append(f"| {entry['model']} | {label} | failed: {row['failed']} | | | | |")
                continue
            fidelity = f"{row['fidelity']:.4f} ({entry['fidelity']})"
            lines.append(f"| {entry['model']} | {label} | {row['p50_ms']:.3f} | {row['vs_o3']:.2f}x | "
                         f"{_count(row['macs'])} ({row['macs_ratio']:.2f}x) | {row['size_ratio']:.3f}x | "
                         f"{fidelity} |")
    dates = sorted({entry["date"] for entry in results} |
                   {row["date"] for entry in results for row in entry["rows"].values() if "date" in row})
    lines += ["", f"`benchmarks/compression_vs_peers.py`, run {', '.join(dates)}; each file timed alone in its own "
                  "process, the fastest round's p50; vs O3 float = O3's p50 over the row's (above 1.00x is faster)."]
    return "\n".join(lines) + "\n"


def _count(macs: int) -> str:
    return f"{macs / 1e9:.2f} G" if macs >= 1e8 else f"{macs / 1e6:.2f} M"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(ROWS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rows", default="", help="only these rows (labels, ';'-separated), timed against a fresh "
                        "O3 float in the same run, replacing theirs in the saved results")
    args = parser.parse_args()
    only = {label.strip() for label in args.rows.split(";") if label.strip()} or None
    logging.disable(logging.WARNING)
    saved = RESULTS / "compression_vs_peers.json"
    results = json.loads(saved.read_text()) if saved.exists() else []
    with tempfile.TemporaryDirectory(prefix="graphopt-compression-") as folder:
        for name in args.models.split(","):
            entry = bench_model(name, Path(folder), args.rounds, only)
            for row in entry["rows"].values():
                row.pop("path", None)
            previous = next((old for old in results if old["model"] == name), None)
            if only is not None and previous is not None:  # the saved rows, these rows replaced (O3's kept)
                for label, row in entry["rows"].items():
                    if label != "O3 float":
                        row["date"] = entry["date"]
                        previous["rows"][label] = row
                order = [label for label, _ in ROWS[name]]
                previous["rows"] = dict(sorted(previous["rows"].items(),
                                               key=lambda item: order.index(item[0]) if item[0] in order else len(order)))
                entry = previous
            results = [old for old in results if old["model"] != name] + [entry]
            saved.write_text(json.dumps(results, indent=2) + "\n")
            print(markdown([entry]), flush=True)
    (RESULTS / "compression_vs_peers.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
