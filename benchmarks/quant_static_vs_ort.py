"""graphopt's static int8 against onnxruntime.quantization.quantize_static, same exports, one run.

Variants of each export (dynamo exporter, or the one a `name@exporter` spec names):
  float            the export as is
  float-O3         graphopt optimize --preset O3 --target ort: the best float model a user could have (every
                   speed-up is given against it as well as against the export)
  nncf-static      NNCF's nncf.quantize on the ONNX model (its ONNX Runtime backend, default PERFORMANCE
                   preset: int8 weights per channel, symmetric activations) on the same samples
  ort-static       ORT's best settings for its CPU kernels: onnxsim (ORT's quant_pre_process crashes on
                   dynamo exports, see the issue), then quant_pre_process (symbolic shape inference),
                   then quantize_static: QDQ, uint8 activations, int8 weights per channel, MinMax
                   calibration on the same samples graphopt sees
  graphopt-static  graphopt quantize --mode static --target ort (uint8 activations, int8 weights per
                   channel, MinMax; --scheme auto: QDQ around every int8-capable op after O3's portable
                   fusions for the CNNs, only the linear layers and attention projections for the models
                   with attention, MiniLM and ViT), no budget and no validation (as ORT's)
  graphopt-static-0.99  the same with --min-cosine 0.99 judged on a held-out eighth of the calibration data
                   (the most sensitive layers go back to float until it is met)
Models with attention also get:
  graphopt-static-qdq  --scheme qdq: what auto chose not to do (pairs around every int8-capable op)
MiniLM also gets, beside the static ones, the dynamic int8 that static must match (quant_vs_ort.py's):
  graphopt-static-smooth-carve   --smooth 0.5 --outlier-ratio 10 --outlier-mode carve: SmoothQuant and the
                   Gelu outputs' outlier channels carved out, both before calibrating
  graphopt-dynamic, graphopt-dynamic-smooth-carve   graphopt quantize --target ort (dynamic int8), the
                   latter with the same smoothing and carving measured on the same calibration sentences
Calibration: the zoo's calibration set (graphopt.export.calibration_set): digits-cnn 128 training images,
MiniLM 64 pydoc sentences at their own lengths, random-weight image models 16 seeded random images.
Each quantizer runs in a fresh process: quantization time (wall, imports excluded) and how far its
peak RSS grew over the process's after the imports (what the quantization itself held at once).
Fidelity against float: digits-cnn top-1 accuracy on its 450 test images (points lost); MiniLM the
lowest cosine of mean-pooled sentence embeddings over benchmarks/data/sentences.txt; the others the
lowest output cosine over 8 random inputs of another seed. Latency: p50 at batch 1 (images 224x224,
MiniLM seq 128), every variant of a model timed in one graphopt bench run (time slices: each session
owns the machine while timed; ORT_ENABLE_ALL). Speedups are float p50 / variant p50, against the export and
against float-O3.
--bert-memory: graphopt's entropy calibration of BERT-base over 1,000 sentences (pydoc sentences and
pairs of them; --scheme qdq, which calibrates every float value, not only the linear layers' inputs),
alone in a fresh process importing graphopt only: its peak RSS and time (ORT's calibrators keep every activation
of every sample: its issue #10503 needed over 256 GB for BERT; not run here).
Writes results/quant_static_vs_ort.{json,md}; a run of some models replaces only their entries.

    python benchmarks/quant_static_vs_ort.py [--models resnet18,digits-cnn] [--bert-memory]
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import resource
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
from benchmarks.fusion_vs_peers import exported  # noqa: E402
from benchmarks.quant_vs_ort import _cosine, _outputs, _sentence_feeds, _session, merge  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_MODELS = "resnet18,resnet18@torchscript,resnet50,mobilenetv2,convnext-tiny,vit-base,digits-cnn,minilm"
VARIANTS = ("float", "float-O3", "ort-static", "nncf-static", "graphopt-static", "graphopt-static-0.99")
ATTENTION_VARIANTS = ("graphopt-static-qdq",)  # models with attention: what --scheme auto did not choose
TEXT_VARIANTS = ("graphopt-static-smooth-carve", "graphopt-dynamic", "graphopt-dynamic-smooth-carve")
ATTENTION_MODELS = ("minilm", "vit-base")
TAMED = {"smooth": 0.5, "outlier_ratio": 10, "outlier_mode": "carve"}
QUANTIZED_OPS = {"QLinearConv", "QLinearMatMul", "QGemm", "QLinearAdd", "QLinearMul", "QAttention",
                 "MatMulIntegerToFloat", "QLinearGlobalAveragePool", "QLinearAveragePool", "QLinearConcat",
                 "DynamicQuantizeMatMul"}
BERT_SAMPLES = 1000
BENCH_RUNS = 200  # per variant: identical models timed 60 times apart differed by up to 10% on 2 cores


# -- the quantizers, each in a fresh process ----------------------------------------------------

def worker(variant: str, source: Path, out: Path, calib: Path, calibrator: str) -> dict:
    """One quantization in this process; (seconds, peak RSS and its growth over the imports)."""
    os.chdir(out.parent)  # quant_pre_process leaves its temporary files in the working directory
    baseline = _peak_rss()
    start = time.perf_counter()
    note = ""
    if variant == "ort-static":
        note = _ort_static(source, out, calib)
    elif variant == "nncf-static":
        _nncf_static(source, out, calib)
    elif variant.startswith("graphopt-dynamic"):
        tamed = TAMED if variant.endswith("smooth-carve") else {}
        graphopt.quantize(source, out, target="ort", calibration=calib if tamed else None, check_speed=False,
                          validate=False, **tamed)
    else:
        options = {"min_cosine": 0.99} if variant.endswith("0.99") else \
            {"scheme": "qdq"} if variant.endswith("qdq") else TAMED if variant.endswith("smooth-carve") else {}
        graphopt.quantize(source, out, mode="static", target="ort", calibration=calib, calibrator=calibrator,
                          check_speed=False, validate="min_cosine" in options, **options)
    return {"seconds": time.perf_counter() - start, "peak_rss": _peak_rss(), "rss_growth": _peak_rss() - baseline,
            "note": note}


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _ort_static(source: Path, out: Path, calib: Path) -> str:
    import onnxsim
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.files = iter(sorted(calib.glob("*.npz")))

        def get_next(self):
            path = next(self.files, None)
            return None if path is None else dict(np.load(path))

    simplified = out.with_suffix(".sim.onnx")
    onnx.save(onnxsim.simplify(onnx.load(source))[0], simplified)
    prepared, note = out.with_suffix(".pre.onnx"), ""
    try:
        quant_pre_process(str(simplified), str(prepared))
    except Exception as error:  # noqa: BLE001 - the peer's pre-processing crashing is a result
        prepared, note = simplified, f"quant_pre_process crashed after onnxsim ({str(error).splitlines()[0][:80]})"
    quantize_static(str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return note


def _nncf_static(source: Path, out: Path, calib: Path) -> None:
    """NNCF's post-training quantization of the ONNX model (its ONNX Runtime backend), its defaults
    (the PERFORMANCE preset: symmetric int8, per-channel weights) on the same calibration samples."""
    import nncf

    samples = [dict(np.load(path)) for path in sorted(calib.glob("*.npz"))]
    quantized = nncf.quantize(onnx.load(source), nncf.Dataset(samples), subset_size=len(samples))
    onnx.save(quantized, out)


def _run_worker(variant: str, source: Path, out: Path, calib: Path, calibrator: str = "minmax") -> dict:
    completed = subprocess.run([sys.executable, __file__, "--worker", variant, str(source), str(out), str(calib),
                                calibrator], capture_output=True, text=True)
    if completed.returncode != 0:
        lines = (completed.stderr.strip() or completed.stdout.strip() or "no output").splitlines()
        raise RuntimeError(lines[-1][:160])
    return json.loads(completed.stdout.strip().splitlines()[-1])


# -- data --------------------------------------------------------------------------------------

def _calibration_folder(name: str, source: Path, folder: Path) -> Path:
    """The zoo's calibration set for `name`, one .npz per sample (what both quantizers read)."""
    from graphopt.export import calibration_set, zoo_entry

    samples = calibration_set(zoo_entry(name).build(), source)
    if isinstance(samples, Path) and samples.is_dir():  # the text models' sentences, one .npz each
        return samples
    if isinstance(samples, Path):  # a shipped .npz, samples along axis 0 at batch 1
        with np.load(samples) as arrays:
            samples = [{key: arrays[key][index:index + 1] for key in arrays.files}
                       for index in range(len(arrays[arrays.files[0]]))]
    folder.mkdir(parents=True, exist_ok=True)
    for index, sample in enumerate(samples):
        np.savez(folder / f"{index:04d}.npz", **sample)
    return folder


def _image_feeds(path: Path, count: int = 8, seed: int = 100) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    (value,) = _session(path).get_inputs()
    shape = [dim if isinstance(dim, int) else 1 for dim in value.shape]
    return [{value.name: rng.standard_normal(shape).astype(np.float32)} for _ in range(count)]


def _digits_accuracy(path: Path, source: Path) -> float:
    with np.load(source.with_name(source.name.replace(".onnx", ".test.npz"))) as data:
        (logits,) = _session(path).run(None, {"pixels": data["pixels"]})
        return float(np.mean(np.argmax(logits, axis=-1) == data["labels"]))


def _model_path(spec: str) -> Path:
    """The cached export of `name[@exporter]`, dynamo by default (digits-cnn's datasets beside it)."""
    name, _, exporter = spec.partition("@")
    path = exported(f"{name}@{exporter or 'dynamo'}")
    if name == "digits-cnn" and not path.with_name("digits-cnn.dynamo.test.npz").exists():
        path.unlink()
        path = exported(f"{name}@dynamo")
    return path


# -- one model -----------------------------------------------------------------------------------

def bench_model(spec: str, workdir: Path) -> dict:
    name = spec.partition("@")[0]
    path = _model_path(spec)
    calib = _calibration_folder(name, path, workdir / f"{spec}.calib")
    best_float = workdir / f"{spec}.float-O3.onnx"
    graphopt.optimize(path, best_float, preset="O3", target="ort")
    rows: dict[str, dict] = {"float": {}, "float-O3": {}}
    paths: dict[str, Path] = {"float": path, "float-O3": best_float}
    variants = VARIANTS[2:] + (ATTENTION_VARIANTS if name in ATTENTION_MODELS else ()) + \
        (TEXT_VARIANTS if name == "minilm" else ())
    for variant in variants:
        out = workdir / f"{spec}.{variant}.onnx"
        try:
            rows[variant] = _run_worker(variant, path, out, calib)
            paths[variant] = out
        except Exception as error:  # noqa: BLE001 - a quantizer that crashes is a result
            rows[variant] = {"failed": f"crashed: {error}"}
    text = name == "minilm"
    feeds = _sentence_feeds() if text else _image_feeds(path)
    reference = None if name == "digits-cnn" else _outputs(path, feeds, pooled=text)
    for variant, variant_path in list(paths.items()):
        try:
            if name == "digits-cnn":
                rows[variant]["accuracy"] = _digits_accuracy(variant_path, path)
            else:
                outputs = _outputs(variant_path, feeds, pooled=text)
                rows[variant]["min_cosine"] = min(_cosine(a, b) for a, b in zip(reference, outputs))
        except Exception as error:  # noqa: BLE001 - a model ONNX Runtime cannot run is a result
            rows[variant] = {"failed": f"does not run: {str(error).splitlines()[0][:140]}"}
            del paths[variant]
            continue
        rows[variant]["bytes"] = variant_path.stat().st_size
        rows[variant]["fused"] = _fused_ops(variant_path)
    shapes = {value.name: ((1, 128) if text else tuple(dim if isinstance(dim, int) else 1 for dim in value.shape))
              for value in _session(path).get_inputs()}
    labels = list(paths)
    result = graphopt.bench([str(paths[label]) for label in labels], shapes=shapes, labels=labels, runs=BENCH_RUNS)
    for label, numbers in zip(labels, result.models):
        rows[label]["p50_ms"] = numbers.p50_ms
    for row in rows.values():
        if "p50_ms" in row:
            row["speedup"] = rows["float"]["p50_ms"] / row["p50_ms"]
            row["speedup_O3"] = rows["float-O3"]["p50_ms"] / row["p50_ms"]
            row["size_vs_float"] = row["bytes"] / rows["float"]["bytes"]
    fidelity = ("test top-1 accuracy, 450 images" if name == "digits-cnn" else
                f"min cosine, mean-pooled embeddings of {len(feeds)} real sentences" if text else
                f"min output cosine over {len(feeds)} random inputs")
    return {"model": spec, "date": datetime.date.today().isoformat(), "fidelity": fidelity,
            "calibration_samples": len(list(calib.glob("*.npz"))), "shapes": {k: list(v) for k, v in shapes.items()},
            "variants": rows}


def _fused_ops(path: Path) -> dict[str, int]:
    """The int8 kernels ONNX Runtime's fused graph runs, and the Q/DQ nodes it left unfused."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    with tempfile.TemporaryDirectory() as folder:
        options.optimized_model_filepath = str(Path(folder) / "fused.onnx")
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        nodes = onnx.load(options.optimized_model_filepath, load_external_data=False).graph.node
    return {"int8 kernels": sum(node.op_type in QUANTIZED_OPS for node in nodes),
            "unfused Q/DQ": sum(node.op_type in ("QuantizeLinear", "DequantizeLinear") for node in nodes)}


# -- BERT entropy memory ------------------------------------------------------------------------

def bert_memory(workdir: Path) -> dict:
    from graphopt.export.text import pydoc_sentences, sentence_feeds

    path = exported("bert-base@dynamo")
    single = sentence_feeds(len(pydoc_sentences(10**6)))
    pairs = [{key: np.concatenate([a[key], b[key]], axis=1) for key in a} for a, b in zip(single, single[1:])]
    folder = workdir / "bert.calib"
    folder.mkdir()
    for index, sample in enumerate((single + pairs)[:BERT_SAMPLES]):
        np.savez(folder / f"{index:04d}.npz", **sample)
    # a lean child (graphopt alone imported), its peak RSS as the kernel counts it
    code = ("import sys, time, graphopt; start = time.perf_counter(); graphopt.quantize(sys.argv[1], sys.argv[2], "
            "mode='static', scheme='qdq', calibration=sys.argv[3], calibrator='entropy', validate=False, check_speed=False); "
            "print(time.perf_counter() - start)")
    process = subprocess.Popen([sys.executable, "-c", code, str(path), str(workdir / "bert.static.onnx"), str(folder)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(process.stderr.read().strip().splitlines()[-1][:160])
    return {"model": "bert-base entropy calibration", "date": datetime.date.today().isoformat(),
            "samples": BERT_SAMPLES, "seconds": float(process.stdout.read().strip().splitlines()[-1]),
            "peak_rss": usage.ru_maxrss * 1024, "float_bytes": path.stat().st_size}


# -- report --------------------------------------------------------------------------------------

def _markdown(results: list[dict]) -> str:
    lines = []
    for result in results:
        if "variants" not in result:
            lines.append(f"### {result['model']} (run {result['date']})\n")
            lines.append(f"{result['samples']} samples (model {result['float_bytes'] / 2**30:.2f} GiB): peak RSS "
                         f"{result['peak_rss'] / 2**30:.2f} GiB for the whole process, "
                         f"{result['seconds']:.0f} s of quantization\n")
            continue
        digits = result["model"] == "digits-cnn"
        lines.append(f"### {result['model']} ({result['fidelity']}; {result['calibration_samples']} calibration "
                     f"samples; run {result['date']})\n")
        lines.append("| variant | int8 kernels / unfused Q,DQ | size vs float | " +
                     ("top-1 accuracy" if digits else "min cosine") +
                     " | p50 ms | speedup | vs O3 | quantize s | RSS growth GiB | note |")
        lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for variant, row in result["variants"].items():
            if "failed" in row:
                lines.append(f"| {variant} | {row['failed']} |" + " |" * 8)
                continue
            fidelity = f"{row['accuracy']:.2%}" if digits else f"{row['min_cosine']:.4f}"
            fused = f"{row['fused']['int8 kernels']} / {row['fused']['unfused Q/DQ']}"
            quantize = f"{row['seconds']:.1f}" if "seconds" in row else ""
            memory = f"{row['rss_growth'] / 2**30:.2f}" if "rss_growth" in row else ""
            versus_o3 = f"{row['speedup_O3']:.2f}x" if "speedup_O3" in row else "-"
            lines.append(f"| {variant} | {fused} | {row['size_vs_float']:.3f}x | {fidelity} | {row['p50_ms']:.2f} | "
                         f"**{row['speedup']:.2f}x** | {versus_o3} | {quantize} | {memory} | {row.get('note', '')} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=DEFAULT_MODELS)
    parser.add_argument("--bert-memory", action="store_true", help="also the BERT-base entropy memory check")
    parser.add_argument("--worker", nargs=5, metavar=("VARIANT", "SOURCE", "OUT", "CALIB", "CALIBRATOR"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.worker:
        variant, source, out, calib, calibrator = args.worker
        print(json.dumps(worker(variant, Path(source), Path(out), Path(calib), calibrator)))
        return
    saved = RESULTS / "quant_static_vs_ort.json"
    results = json.loads(saved.read_text()) if saved.exists() else []
    with tempfile.TemporaryDirectory() as tmp:
        if args.bert_memory:  # first: a child forked from a big parent counts the parent's pages in its peak RSS
            print("bert-base entropy calibration memory", file=sys.stderr)
            _save(results, bert_memory(Path(tmp)))
        for name in [name for name in args.models.split(",") if name]:
            print(f"benchmarking {name}", file=sys.stderr)
            _save(results, bench_model(name, Path(tmp)))  # each model's entry as soon as it is measured
    print(_markdown(results))


def _save(results: list[dict], entry: dict) -> None:
    merge(results, entry)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "quant_static_vs_ort.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "quant_static_vs_ort.md").write_text(_markdown(results))


if __name__ == "__main__":
    main()
