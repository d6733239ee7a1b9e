"""graphopt's float16 against onnxconverter-common's and ONNX Runtime's transformers converter, one run.

Three parts, every converter given the same model and judged by the same check (ONNX Runtime's CPU
EP, the fp16 tolerance of graphopt.runtime.compare: cosine 0.999, elements within rtol 1e-2 / atol
1e-3 or 1e-3 of the output's largest, at most 0.1% of them outside):

  corpus   ONNX's node test cases (tensor inputs), the foreign-models corpus (tests/foreign_models.py)
           and the small zoo models, each converted by
             graphopt        convert_precision compute=all min_weights=0 (every node its schema allows,
                             every weight), validated on one input set (the fallback backing nodes off);
             graphopt-fp16   the fp16 preset as a CPU user runs it (after O3; weights only on this EP);
             onnxconverter   onnxconverter_common.float16.convert_float_to_float16(keep_io_types=True);
             ort-float16     onnxruntime.transformers.float16.convert_float_to_float16(keep_io_types=True),
                             what ONNX Runtime's transformers optimizer's fp16 conversion calls;
           and counted: ok (within the tolerance on another input set where the case has one), refused
           with a reason (graphopt writes nothing), unloadable, fails to run, divergent, the converter
           crashed, or the converted model crashed ONNX Runtime (judged in a child process).
  models   MiniLM (real weights, 256 real sentences: lowest cosine of the mean-pooled embeddings), BERT-base,
           ResNet-18, ViT-base, GPT-2 (random weights: 8 synthesized inputs, cosine of every output, top-1
           agreement of the classifiers' and GPT-2's logits): the file against O3 float of the same
           export (--target ort), the lowest cosine, top-1, the conversion's seconds.
  mixed    auto mixed precision: onnxconverter_common.auto_mixed_precision.auto_convert_mixed_precision
           (keep_io_types, a validate_fn asking cosine >= 0.999 of every output) against graphopt
           convert_precision compute=all --min-cosine 0.999 on the same O3 portable file and input:
           seconds, and the nodes left computing in float32. The five models fit float16 whole (on
           this EP auto mixed precision's first try passes, it never searches); `tabular` (--models
           tabular) is where it must: a classifier fed raw units (dollars up to 250,000, square
           metres, years) with its standard scaler inside the graph, as feature pipelines ship them.

    python benchmarks/precision_vs_peers.py [--parts corpus,models,mixed] [--models minilm,resnet18,tabular]

Writes benchmarks/results/precision_vs_peers.{json,md}; a run of some parts or models replaces only theirs.
No latency here: on this CPU EP half precision buys no speed (ONNX Runtime's x86 build has no half
MatMul); the size is the objective. Speed belongs to the CUDA EP (docs: GPU).
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import datetime
import json
import logging
import multiprocessing
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = ("minilm", "bert-base", "resnet18", "vit-base", "gpt2")
CLASSIFIERS = ("resnet18", "vit-base", "gpt2")  # logits whose top-1 means something
SMALL_ZOO = ("mlp", "cnn", "lstm", "digits-cnn")
TOOLS = ("graphopt", "graphopt-fp16", "onnxconverter", "ort-float16")
DIMS = {"batch": 1, "sequence": 128, "other": 64, "spatial": 224}
HALF_CHECK = "convert_precision:compute=all:min_weights=0"


def _tolerance():
    from graphopt.runtime.compare import TOLERANCES

    return TOLERANCES["fp16"]


def _session(model):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def _run(model, feeds: dict) -> list:
    session = _session(model)
    names = [value.name for value in session.get_inputs()]
    return session.run(None, {name: feeds[name] for name in names})


def convert(tool: str, model: onnx.ModelProto, feeds: dict) -> onnx.ModelProto:
    """`model` in float16 by `tool`; graphopt raises GraphoptError when it refuses (nothing written)."""
    import graphopt

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    if tool == "onnxconverter":
        from onnxconverter_common import float16

        return float16.convert_float_to_float16(copy, keep_io_types=True)
    if tool == "ort-float16":
        from onnxruntime.transformers import float16

        return float16.convert_float_to_float16(copy, keep_io_types=True)
    from tests.helpers import to_proto

    options = {"passes": HALF_CHECK} if tool == "graphopt" else {"preset": "fp16"}
    result = graphopt.optimize(copy, validate=True, check_speed=False, inputs=feeds, **options)
    return to_proto(result.model)


def judge(tool: str, model: onnx.ModelProto, convert_feeds: dict, judge_feeds: dict, expected: list) -> str:
    """ok, refused (with graphopt's reason after a colon), crashed, unloadable, fails to run or divergent."""
    import graphopt
    from graphopt.runtime.compare import compare

    try:
        converted = convert(tool, model, convert_feeds)
    except graphopt.GraphoptError as error:
        return f"refused: {str(error)[:300]}"
    except Exception:  # noqa: BLE001 - a peer's crash is what is counted
        return "crashed"
    try:
        session = _session(converted)
    except Exception:  # noqa: BLE001
        return "unloadable"
    try:
        names = [value.name for value in session.get_inputs()]
        got = session.run(None, {name: judge_feeds[name] for name in names})
    except Exception:  # noqa: BLE001
        return "fails to run"
    for index, (want, have) in enumerate(zip(expected, got)):
        want, have = np.asarray(want), np.asarray(have)
        if want.dtype != have.dtype and want.dtype.kind == have.dtype.kind == "f":
            have = have.astype(want.dtype)
        if not compare(f"output {index}", want, have, _tolerance()).passed:
            return "divergent"
    return "ok"


def _corpus_cases():
    """(family, name, model, feeds to convert on, feeds to judge on, expected outputs on those)."""
    from graphopt import model as model_io
    from graphopt.export import export_zoo
    from graphopt.runtime import inputs as input_io
    from tests.corpus import _input_names, node_cases
    from tests.foreign_models import CORPUS

    for name, model, inputs, expected, _ in node_cases():
        if all(isinstance(array, np.ndarray) and array.dtype.kind in "biuf" for array in (*inputs, *expected)):
            feeds = dict(zip(_input_names(model), inputs))
            yield "node", name, model, feeds, feeds, expected
    for foreign in CORPUS:
        model = onnx.load(foreign.path())
        first, second = foreign.samples(2, 7)
        yield "foreign", foreign.name, model, first, second, _run(model, second)
    with tempfile.TemporaryDirectory() as folder:
        for name in SMALL_ZOO:
            path = export_zoo(name, Path(folder) / f"{name}.onnx").path
            model = onnx.load(path)
            ir_model = model_io.load(path)
            first, second = (input_io.synthesize(ir_model, seed=seed, defaults=DIMS) for seed in (0, 1))
            yield "zoo", name, model, first, second, _run(model, second)


class _Isolated:
    """judge() in a child process: a converted model that crashes ONNX Runtime (a segmentation fault
    loading one of the peers' files) is a verdict, not the end of the run."""

    def __init__(self) -> None:
        self.pool = self._start()

    @staticmethod
    def _start() -> concurrent.futures.ProcessPoolExecutor:
        return concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                                      initializer=_quiet)

    def judge(self, *args) -> str:
        try:
            return self.pool.submit(judge, *args).result()
        except concurrent.futures.process.BrokenProcessPool:
            self.pool = self._start()
            return "crashes ONNX Runtime"


def _quiet() -> None:
    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")


def corpus() -> dict:
    counts = {tool: collections.defaultdict(collections.Counter) for tool in TOOLS}
    failures = {tool: collections.defaultdict(list) for tool in TOOLS}
    seconds = collections.Counter()
    isolated = _Isolated()
    for family, name, model, first, second, expected in _corpus_cases():
        for tool in TOOLS:
            start = time.perf_counter()
            verdict = isolated.judge(tool, model, first, second, expected)
            seconds[tool] += time.perf_counter() - start
            verdict, _, reason = verdict.partition(": ")
            counts[tool][family][verdict] += 1
            if verdict != "ok" and (verdict != "refused" or family != "node"):
                failures[tool][verdict].append(f"{family}:{name}" + (f" ({reason})" if reason else ""))
    return {"counts": {tool: {family: dict(counter) for family, counter in families.items()}
                       for tool, families in counts.items()},
            "failures": {tool: {verdict: names for verdict, names in verdicts.items()}
                         for tool, verdicts in failures.items()},
            "seconds": dict(seconds)}


# the tabular case's features: their units' typical largest values (dollars, square metres, years, counts)
TABULAR_SCALES = np.array([2.5e5, 1.2e5, 8e4, 5e3, 3e3, 1e3, 400, 120, 100, 60, 30, 12, 10, 5, 2, 1], np.float32)


def _tabular(path: Path) -> None:
    """Export the tabular classifier: (features - mean) / std inside the graph, then an MLP (random
    weights; the inputs, not the weights, are what float16 cannot hold)."""
    import torch

    from graphopt.export import ZooModel, export_spec

    torch.manual_seed(0)
    scales = torch.from_numpy(TABULAR_SCALES)

    class Tabular(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mean", scales * 0.5)
            self.register_buffer("std", scales * 0.29)
            layers = []
            for width_in, width_out in ((16, 512), (512, 512), (512, 512)):
                layers += [torch.nn.Linear(width_in, width_out), torch.nn.GELU(), torch.nn.LayerNorm(width_out)]
            self.body = torch.nn.Sequential(*layers, torch.nn.Linear(512, 10))

        def forward(self, features):
            return self.body((features - self.mean) / self.std)

    example = torch.from_numpy(_tabular_rows(np.random.default_rng(0), 64))
    export_spec(ZooModel(Tabular().eval(), (example,), ["features"], ["logits"], {"features": {0: "batch"}}), path)


def _tabular_rows(rng: np.random.Generator, count: int) -> np.ndarray:
    return (rng.uniform(0.0, 1.0, (count, len(TABULAR_SCALES))) * TABULAR_SCALES).astype(np.float32)


def _evaluation(name: str, path: Path) -> list[dict]:
    from graphopt import model as model_io
    from graphopt.runtime import inputs as input_io

    if name == "tabular":
        rng = np.random.default_rng(1)
        return [{"features": _tabular_rows(rng, 64)} for _ in range(8)]
    if name == "minilm":
        from benchmarks.quant_vs_ort import _sentence_feeds

        return _sentence_feeds()
    ir_model = model_io.load(path)
    return [input_io.synthesize(ir_model, seed=seed, defaults=DIMS) for seed in range(8)]


def _fidelity(name: str, reference: Path, candidate, evaluation: list[dict]) -> tuple[float, float | None]:
    """(lowest cosine, top-1 agreement or None)."""
    from benchmarks.quant_vs_ort import _cosine

    cosines, agreements = [], []
    want_session, got_session = _session(reference), _session(candidate)
    for feeds in evaluation:
        names = [value.name for value in want_session.get_inputs()]
        want = want_session.run(None, {key: feeds[key] for key in names})
        got = got_session.run(None, {key: feeds[key] for key in names})
        if name == "minilm":
            mask = feeds["attention_mask"][..., None].astype(np.float32)
            want, got = [(output * mask).sum(1) / mask.sum(1) for output in (want[0], got[0].astype(np.float32))]
            cosines.append(_cosine(want, got))
            continue
        cosines.extend(_cosine(a, b.astype(a.dtype)) for a, b in zip(want, got))
        if name in CLASSIFIERS:
            agreements.append(np.mean(want[0].argmax(-1) == got[0].argmax(-1)))
    return min(cosines), (float(np.mean(agreements)) if agreements else None)


def models(names: list[str], work: Path) -> dict:
    import graphopt
    from graphopt.export import export_zoo

    rows = {}
    for name in names:
        export = export_zoo(name, work / f"{name}.onnx", fallback=False).path
        o3 = work / f"{name}.O3.onnx"
        graphopt.optimize(export, o3, preset="O3", target="ort")
        evaluation = _evaluation(name, o3)
        o3_model = onnx.load(o3)
        entries = {"O3 float": {"file": 1.0, "cosine": 1.0, "top1": 1.0 if name in CLASSIFIERS else None,
                                "bytes": o3.stat().st_size}}
        for label, tool in (("graphopt --preset fp16", "graphopt-fp16"), ("graphopt compute=all", "graphopt"),
                            ("onnxconverter-common", "onnxconverter"), ("ORT transformers float16", "ort-float16")):
            out = work / f"{name}.{tool}.onnx"
            start = time.perf_counter()
            try:
                if tool.startswith("graphopt"):
                    options = {"preset": "fp16"} if tool == "graphopt-fp16" else {"passes": HALF_CHECK}
                    graphopt.optimize(o3, out, target="ort", validate=True, check_speed=False, **options)
                else:
                    onnx.save(convert(tool, o3_model, {}), out)
                seconds = time.perf_counter() - start
                cosine, top1 = _fidelity(name, o3, out, evaluation)
                entries[label] = {"file": out.stat().st_size / o3.stat().st_size, "cosine": cosine, "top1": top1,
                                  "seconds": seconds, "bytes": out.stat().st_size}
            except Exception as error:  # noqa: BLE001 - a refusal or a peer's failure is a row
                entries[label] = {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"}
            print(f"{name} {label}: {entries[label]}", flush=True)
        rows[name] = entries
    return rows


def _float32_nodes(model: onnx.ModelProto) -> int:
    """Nodes computing on float32 (an output of tensor(float)), Casts, Constants and shape ops aside."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {value.name: value.type.tensor_type.elem_type for value in
             (*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input)}
    types.update({tensor.name: tensor.data_type for tensor in inferred.graph.initializer})
    aside = {"Cast", "Constant", "Shape", "Size", "ConstantOfShape"}
    return sum(1 for node in inferred.graph.node if node.op_type not in aside
               and any(types.get(output) == onnx.TensorProto.FLOAT for output in node.output))


def mixed(names: list[str], work: Path) -> dict:
    import graphopt
    from graphopt.export import export_zoo
    from tests.helpers import to_proto
    from benchmarks.quant_vs_ort import _cosine

    rows = {}
    for name in names:
        export = work / f"{name}.onnx"
        if not export.exists():
            _tabular(export) if name == "tabular" else export_zoo(name, export, fallback=False)
        portable = work / f"{name}.O3-portable.onnx"
        graphopt.optimize(export, portable, preset="O3")
        model = onnx.load(portable)
        feeds = _evaluation(name, portable)[0]
        feeds = {value.name: feeds[value.name] for value in _session(portable).get_inputs()}
        expected = _run(model, feeds)
        entries = {"float32 nodes before": _float32_nodes(model)}

        def validate(want, got) -> bool:
            return all(_cosine(np.asarray(a, np.float32), np.asarray(b, np.float32)) >= 0.999 for a, b in zip(want, got))

        from onnxconverter_common import auto_mixed_precision

        start = time.perf_counter()
        try:
            converted = auto_mixed_precision.auto_convert_mixed_precision(model, feeds, validate_fn=validate,
                                                                          keep_io_types=True)
            entries["onnxconverter auto_mixed_precision"] = {
                "seconds": time.perf_counter() - start, "float32 nodes": _float32_nodes(converted),
                "passes": validate(expected, _run(converted, feeds))}
        except Exception as error:  # noqa: BLE001
            entries["onnxconverter auto_mixed_precision"] = {"error": f"{type(error).__name__}: {str(error)[:200]}",
                                                             "seconds": time.perf_counter() - start}
        start = time.perf_counter()
        try:
            result = graphopt.optimize(portable, passes="convert_precision:compute=all", validate=True,
                                       check_speed=False, inputs=feeds, min_cosine=0.999)
            converted = to_proto(result.model)
            entries["graphopt --min-cosine 0.999"] = {
                "seconds": time.perf_counter() - start, "float32 nodes": _float32_nodes(converted),
                "passes": validate(expected, _run(converted, feeds))}
        except Exception as error:  # noqa: BLE001
            entries["graphopt --min-cosine 0.999"] = {"error": f"{type(error).__name__}: {str(error)[:200]}"}
        print(f"{name} mixed: {entries}", flush=True)
        rows[name] = entries
    return rows


def markdown(results: dict) -> str:
    lines = ["# float16: graphopt vs onnxconverter-common and ONNX Runtime's transformers converter", "",
             "`benchmarks/precision_vs_peers.py`; " + "; ".join(f"{part} {date}" for part, date in
                                                               sorted(results.get("dates", {}).items())), ""]
    corpus_ = results.get("corpus")
    if corpus_:
        lines += ["## Corpus: broken models", "", "| converter | family | ok | refused (reason given) | unloadable | "
                  "fails to run | divergent | converter crashed | crashes ONNX Runtime |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for tool, families in corpus_["counts"].items():
            for family, counts in families.items():
                lines.append(f"| {tool} | {family} | " + " | ".join(str(counts.get(key, 0)) for key in
                             ("ok", "refused", "unloadable", "fails to run", "divergent", "crashed",
                              "crashes ONNX Runtime")) + " |")
        lines += [""] + [f"- {tool} {verdict}: {', '.join(names[:12])}{' …' if len(names) > 12 else ''}"
                         for tool, verdicts in corpus_["failures"].items() for verdict, names in verdicts.items()]
    if results.get("models"):
        lines += ["", "## Models (file against O3 float of the same export, --target ort)", "",
                  "| model | variant | file | lowest cosine | top-1 agreement | seconds |", "|---|---|---|---|---|---|"]
        for name, entries in results["models"].items():
            for label, row in entries.items():
                if "error" in row:
                    lines.append(f"| {name} | {label} | {row['error']} | | | |")
                    continue
                top1 = "" if row.get("top1") is None else f"{row['top1']:.2%}"
                seconds = f"{row['seconds']:.1f}" if "seconds" in row else ""
                lines.append(f"| {name} | {label} | {row['file']:.3f}x | {row['cosine']:.6f} | {top1} | {seconds} |")
    if results.get("mixed"):
        lines += ["", "## Mixed precision (cosine >= 0.999, O3 portable file)", "",
                  "| model | tool | seconds | float32 nodes | meets the cosine |", "|---|---|---|---|---|"]
        for name, entries in results["mixed"].items():
            for label, row in entries.items():
                if not isinstance(row, dict):
                    lines.append(f"| {name} | ({label}) | | {row} | |")
                elif "error" in row:
                    seconds = f"{row['seconds']:.1f} s, then " if "seconds" in row else ""
                    lines.append(f"| {name} | {label} | {seconds}{row['error']} | | |")
                else:
                    lines.append(f"| {name} | {label} | {row['seconds']:.1f} | {row['float32 nodes']} | {row['passes']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="corpus,models,mixed")
    parser.add_argument("--models", default=",".join(MODELS))
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")
    saved = RESULTS / "precision_vs_peers.json"
    results = json.loads(saved.read_text()) if saved.exists() else {}
    results.setdefault("dates", {})
    names = [name for name in args.models.split(",") if name]
    today = datetime.date.today().isoformat()
    with tempfile.TemporaryDirectory(prefix="precision-") as folder:
        work = Path(folder)
        for part in args.parts.split(","):
            if part == "corpus":
                results["corpus"] = corpus()
            elif part in ("models", "mixed"):
                found = (models if part == "models" else mixed)(names, work)
                results[part] = {**results.get(part, {}), **found}
            else:
                raise SystemExit(f"unknown part {part!r}")
            results["dates"][part] = today
            RESULTS.mkdir(exist_ok=True)
            saved.write_text(json.dumps(results, indent=1))
            (RESULTS / "precision_vs_peers.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
