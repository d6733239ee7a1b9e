"""Which ONNX models can be made trainable students: graphopt's converter (graphopt.train.trainable)
against onnx2torch, the converter users reach for, on the zoo and the foreign-models corpus, one run.

Each model is converted by both and judged the same way: the torch module's outputs against ONNX
Runtime's on the same inputs (realistic samples for the corpus models, synthesized ones for the zoo),
at graphopt's fp32 tolerance (rtol 1e-4, atol 1e-5). A row says ok (with the largest abs error),
unsupported (the operators named), or wrong (it converts but computes something else).

Models: every zoo model as exported (dynamo), after O3 for ONNX Runtime (fused com.microsoft ops) and
after O3 portable; `graphopt compress`'s outputs that distillation recovers (MiniLM pruned, factored,
clustered; the digits CNN pruned); the 11 foreign models (tests/foreign_models.py).

onnx2torch 1.5.15 needs torchvision, which does not import beside this torch: it is fetched from
the registry into a cache folder and imported with torchvision stubbed (only its NMS and RoIAlign
converters use it; no model here has those ops).

    python benchmarks/student_onnx_coverage.py [--work FOLDER] [--zoo minilm,digits-cnn]

Writes benchmarks/results/student_onnx_coverage.{json,md}.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
import types
import warnings
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
ONNX2TORCH = "onnx2torch==1.5.15"
COMPRESSED = {  # (zoo model, name): graphopt compress flags
    ("minilm", "pruned"): ["--prune-channels", "0.5", "--prune-heads", "0.25"],
    ("minilm", "low-rank"): ["--rank-ratio", "0.5"],
    ("minilm", "clustered"): ["--cluster-bits", "6"],
    ("digits-cnn", "pruned"): ["--prune-channels", "0.5"],
}


def _graphopt(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "graphopt", *args], check=True, capture_output=True, text=True)


def zoo_models(work: Path, names: list[str]) -> list[tuple[str, Path, str]]:
    """(row name, file, source) for each zoo model's export, O3 ort and O3 portable, and the compressed ones."""
    rows = []
    for name in names:
        export = work / f"{name}.onnx"
        if not export.exists():
            _graphopt("export", "--zoo", name, "-o", str(export), "--no-parity")
        rows.append((f"{name} (export)", export, "zoo"))
        for target in ("ort", "portable"):
            optimized = work / f"{name}.O3-{target}.onnx"
            if not optimized.exists():
                _graphopt("optimize", str(export), "-o", str(optimized), "--preset", "O3", "--target", target)
            rows.append((f"{name} (O3 {target})", optimized, "zoo"))
        for (model, kind), flags in COMPRESSED.items():
            if model != name:
                continue
            compressed = work / f"{name}.{kind}.onnx"
            if not compressed.exists():
                _graphopt("compress", str(export), "-o", str(compressed), *flags, "--no-check-speed", "--force")
            rows.append((f"{name} ({kind}, compress)", compressed, "compress"))
    return rows


def _feeds(path: Path, source: str, foreign) -> dict[str, np.ndarray]:
    from graphopt import model as model_io
    from graphopt.runtime import inputs as input_io

    if foreign is not None:
        return foreign.samples(2, 0)[0]
    return input_io.synthesize(model_io.load(path))


def ours(path: Path, feeds: dict) -> dict:
    from graphopt import model as model_io
    from graphopt.errors import InputError
    from graphopt.train.trainable import TrainableGraph, round_trip, unsupported_ops

    model = model_io.load(path)
    missing = unsupported_ops(model)
    if missing:
        return {"status": "unsupported", "detail": ", ".join(sorted(missing))}
    try:
        module = TrainableGraph(model)
        return {"status": "ok", "max_abs": round_trip(module, path, feeds), "trained": module.parameter_count()}
    except InputError as error:
        return {"status": "wrong", "detail": str(error)[:160]}


def _onnx2torch(cache: Path):
    folder = cache / "onnx2torch"
    if not (folder / "onnx2torch").exists():
        with tempfile.TemporaryDirectory() as download:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", download,
                            ONNX2TORCH], check=True, capture_output=True)
            with zipfile.ZipFile(next(Path(download).glob("*.whl"))) as wheel:
                wheel.extractall(folder)
    stub = types.ModuleType("torchvision")
    stub.ops = types.ModuleType("torchvision.ops")
    stub.ops.roi_align = None
    sys.modules.setdefault("torchvision", stub)
    sys.modules.setdefault("torchvision.ops", stub.ops)
    sys.path.insert(0, str(folder))
    import onnx2torch

    return onnx2torch


def theirs(converter, path: Path, feeds: dict) -> dict:
    import onnx
    import torch

    from graphopt.runtime.compare import TOLERANCES, compare
    from graphopt.runtime.providers import SessionConfig, create_session

    try:
        module = converter.convert(onnx.load(path))
    except NotImplementedError as error:
        return {"status": "unsupported", "detail": str(error).split("operation_type='")[-1].split("'")[0]}
    except Exception as error:  # noqa: BLE001  (the converter's own crash, recorded)
        return {"status": "crash", "detail": f"{type(error).__name__}: {str(error)[:120]}"}
    session = create_session(path, SessionConfig(spinning=False, opt_level="disable"))
    wanted = session.run(feeds)
    names = [value.name for value in session.inner.get_inputs()]
    try:
        with torch.no_grad():
            got = module(*(torch.from_numpy(np.ascontiguousarray(feeds[name])) for name in names))
    except Exception as error:  # noqa: BLE001
        return {"status": "crash", "detail": f"running: {type(error).__name__}: {str(error)[:120]}"}
    got = got if isinstance(got, (tuple, list)) else [got]
    results = [compare(str(index), want, have.numpy(), TOLERANCES["fp32"])
               for index, (want, have) in enumerate(zip(wanted, got))]
    worst = max(result.max_abs_error for result in results)
    if all(result.passed for result in results) and len(got) == len(wanted):
        return {"status": "ok", "max_abs": worst}
    return {"status": "wrong", "detail": f"max abs error {worst:.3g}"}


def _cell(result: dict) -> str:
    if result["status"] == "ok":
        return f"ok ({result['max_abs']:.1e})"
    return f"{result['status']}: {result.get('detail', '')}"


def markdown(rows: list[dict], date: str) -> str:
    count = {side: sum(row[side]["status"] == "ok" for row in rows) for side in ("graphopt", "onnx2torch")}
    lines = [f"# ONNX students made trainable: graphopt vs onnx2torch ({date})", "",
             f"`benchmarks/student_onnx_coverage.py`, 2-core CPU. Converted and computing what ONNX Runtime "
             f"computes (fp32 tolerance): **graphopt {count['graphopt']} of {len(rows)}**, onnx2torch "
             f"{count['onnx2torch']} of {len(rows)}.", "",
             "| model | source | graphopt | onnx2torch |", "|---|---|---|---|"]
    lines += [f"| {row['model']} | {row['source']} | {_cell(row['graphopt'])} | {_cell(row['onnx2torch'])} |"
              for row in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "graphopt-student-coverage")
    parser.add_argument("--zoo", default="digits-cnn,mlp,cnn,lstm,minilm,resnet18,mobilenetv2,convnext-tiny,vit-base,"
                                          "bert-base,gpt2,resnet50")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    from graphopt.export.digits import cache_dir
    from tests.foreign_models import CORPUS

    args.work.mkdir(parents=True, exist_ok=True)
    converter = _onnx2torch(cache_dir())
    models = [(row, path, source, None) for row, path, source in zoo_models(args.work, args.zoo.split(","))]
    models += [(f"{model.name} ({model.producer})", model.path(), "foreign", model) for model in CORPUS]
    rows = []
    for name, path, source, foreign in models:
        feeds = _feeds(path, source, foreign)
        row = {"model": name, "source": source, "graphopt": ours(path, feeds),
               "onnx2torch": theirs(converter, path, feeds)}
        print(f"{name:40} graphopt {_cell(row['graphopt'])[:60]:60} onnx2torch {_cell(row['onnx2torch'])[:60]}",
              flush=True)
        rows.append(row)
    date = datetime.date.today().isoformat()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "student_onnx_coverage.json").write_text(json.dumps({"date": date, "rows": rows}, indent=2) + "\n")
    (RESULTS / "student_onnx_coverage.md").write_text(markdown(rows, date))
    print(markdown(rows, date))


if __name__ == "__main__":
    main()
