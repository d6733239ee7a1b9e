"""Peak memory of graphopt on a multi-GB model with external data, per preset and quantizer.

Builds (once, cached under results/large/) a synthetic decoder-shaped model: an embedding
table and N transformer blocks (attention projections, MLP, decomposed LayerNorm) in float32,
about 3.5 GB of weights in one external data file, with the debris exporters leave behind
(Identity, Dropout, same-type Cast, x*1, duplicate small constants, shape arithmetic on
dynamic batch/sequence). Each preset runs as `graphopt optimize`, each quantizer as
`graphopt quantize ... --target ort --no-validate --no-check-speed` (validation and the latency
guard load the float model into ONNX Runtime, which takes the model's size; so do the activation
statistics that dynamic int8's outlier channels are chosen by, hence a row with
--outlier-ratio 0), in a fresh process; its peak resident set size comes from wait4().
Targets: cleanup and fusion at most 0.5x the model size (tensors a pass does not touch are
never loaded); quantization at most the output's size (model file + external data) + 1 GiB
(one float weight in memory at a time). Writes results/large_model_memory.{json,md}.

    python benchmarks/large_model_memory.py [--layers 16] [--hidden 2048]
        [--presets O1,O2,O3,int8-dynamic] [--quantize "--mode dynamic;--mode weight-only"]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

RESULTS = Path(__file__).resolve().parent / "results"
_BLOCK_FLOATS = 1 << 18
CLEANUP_RATIO = 0.5
QUANTIZE_HEADROOM_BYTES = 1 << 30


class _DataWriter:
    """Appends tensors to one external data file without holding them in memory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.stream = open(path, "wb")
        self.offset = 0
        self.seed = 0

    def tensor(self, name: str, shape: tuple[int, ...], scale: float = 0.02) -> TensorProto:
        count = int(np.prod(shape))
        self.seed += 1
        block = (np.random.default_rng(self.seed).standard_normal(_BLOCK_FLOATS) * scale).astype(np.float32)
        written = 0
        while written < count:
            chunk = block[: min(_BLOCK_FLOATS, count - written)]
            self.stream.write(chunk.tobytes())
            written += len(chunk)
        tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=shape)
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", self.path.name), ("offset", str(self.offset)),
                           ("length", str(count * 4))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        self.offset += count * 4
        return tensor

    def close(self) -> None:
        self.stream.close()


def build(path: Path, layers: int, hidden: int, vocab: int) -> Path:
    """Write the synthetic model and its external data; returns the model path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = _DataWriter(path.with_name(path.name + ".data"))
    inits, nodes = [], []

    def const(name, values, dtype=np.int64):
        inits.append(onnx.numpy_helper.from_array(np.asarray(values, dtype=dtype), name))
        return name

    inits.append(data.tensor("embedding", (vocab, hidden)))
    nodes.append(helper.make_node("Gather", ["embedding", "input_ids"], ["h0"]))
    const("one", 1.0, np.float32)
    const("eps", 1e-5, np.float32)
    const("axis_last", [-1])
    hidden_state = "h0"
    for layer in range(layers):
        p = f"l{layer}"
        for proj in ("q", "k", "v", "o"):
            inits.append(data.tensor(f"{p}.{proj}", (hidden, hidden)))
        inits.append(data.tensor(f"{p}.up", (hidden, 4 * hidden)))
        inits.append(data.tensor(f"{p}.down", (4 * hidden, hidden)))
        const(f"{p}.gamma", np.ones(hidden), np.float32)
        nodes += [
            helper.make_node("Identity", [hidden_state], [f"{p}.in"]),
            helper.make_node("ReduceMean", [f"{p}.in", "axis_last"], [f"{p}.mean"], keepdims=1),
            helper.make_node("Sub", [f"{p}.in", f"{p}.mean"], [f"{p}.centered"]),
            helper.make_node("Mul", [f"{p}.centered", f"{p}.centered"], [f"{p}.sq"]),
            helper.make_node("ReduceMean", [f"{p}.sq", "axis_last"], [f"{p}.var"], keepdims=1),
            helper.make_node("Add", [f"{p}.var", "eps"], [f"{p}.var_eps"]),
            helper.make_node("Sqrt", [f"{p}.var_eps"], [f"{p}.std"]),
            helper.make_node("Div", [f"{p}.centered", f"{p}.std"], [f"{p}.normed"]),
            helper.make_node("Mul", [f"{p}.normed", f"{p}.gamma"], [f"{p}.ln"]),
            helper.make_node("MatMul", [f"{p}.ln", f"{p}.q"], [f"{p}.qh"]),
            helper.make_node("MatMul", [f"{p}.ln", f"{p}.k"], [f"{p}.kh"]),
            helper.make_node("MatMul", [f"{p}.ln", f"{p}.v"], [f"{p}.vh"]),
            helper.make_node("Transpose", [f"{p}.kh"], [f"{p}.kt"], perm=[0, 2, 1]),
            helper.make_node("MatMul", [f"{p}.qh", f"{p}.kt"], [f"{p}.scores"]),
            helper.make_node("Softmax", [f"{p}.scores"], [f"{p}.probs"], axis=-1),
            helper.make_node("Dropout", [f"{p}.probs"], [f"{p}.probs_d"]),
            helper.make_node("MatMul", [f"{p}.probs_d", f"{p}.vh"], [f"{p}.ctx"]),
            helper.make_node("MatMul", [f"{p}.ctx", f"{p}.o"], [f"{p}.attn"]),
            helper.make_node("Mul", [f"{p}.attn", "one"], [f"{p}.attn1"]),
            helper.make_node("Add", [f"{p}.in", f"{p}.attn1"], [f"{p}.res1"]),
            helper.make_node("Shape", [f"{p}.res1"], [f"{p}.shape"]),
            helper.make_node("Reshape", [f"{p}.res1", f"{p}.shape"], [f"{p}.res1r"]),
            helper.make_node("MatMul", [f"{p}.res1r", f"{p}.up"], [f"{p}.up_h"]),
            helper.make_node("Relu", [f"{p}.up_h"], [f"{p}.act"]),
            helper.make_node("Cast", [f"{p}.act"], [f"{p}.act_c"], to=TensorProto.FLOAT),
            helper.make_node("MatMul", [f"{p}.act_c", f"{p}.down"], [f"{p}.mlp"]),
            helper.make_node("Add", [f"{p}.res1r", f"{p}.mlp"], [f"{p}.out"]),
        ]
        hidden_state = f"{p}.out"
    nodes.append(helper.make_node("Identity", [hidden_state], ["hidden"]))
    data.close()
    graph = helper.make_graph(
        nodes, "synthetic_decoder",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["batch", "seq", hidden])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    onnx.save(model, path)
    return path


def model_bytes(path: Path) -> int:
    """The model file plus its external data file, when it has one."""
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def target_bytes(row: dict, size: int) -> int | None:
    """The peak RSS a row may reach: quantizers the output + 1 GiB, cleanup and fusion half the model."""
    if row["quantizes"]:
        return None if row["output_bytes"] is None else row["output_bytes"] + QUANTIZE_HEADROOM_BYTES
    return int(CLEANUP_RATIO * size) if row["command"].startswith("optimize") else None


def measure(command: list[str]) -> tuple[int, float, int]:
    """Run a command in a fresh process; (peak RSS bytes, seconds, exit code)."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        print(process.stderr.read().decode()[-500:], file=sys.stderr)
    return usage.ru_maxrss * 1024, seconds, process.returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--presets", default="O1,O2,O3,int8-dynamic",
                        help="`graphopt optimize --preset` runs (comma-separated, empty for none)")
    parser.add_argument("--quantize", default="--mode dynamic;--mode dynamic --outlier-ratio 0;--mode weight-only",
                        help="`graphopt quantize` runs: options of each, semicolon-separated (empty for none)")
    args = parser.parse_args(argv)
    path = RESULTS / "large" / f"decoder-{args.layers}x{args.hidden}.onnx"
    if not path.exists():
        print(f"building {path} …", file=sys.stderr)
        build(path, args.layers, args.hidden, args.vocab)
    size = model_bytes(path)
    print(f"model: {path.name}, {size / 2**30:.2f} GiB of weights in external data", file=sys.stderr)
    graphopt = [sys.executable, "-m", "graphopt"]
    runs = [("inspect", ["inspect", str(path), "--json"], False)]
    runs += [(f"optimize --preset {preset}", ["optimize", "--preset", preset], preset.startswith("int"))
             for preset in filter(None, args.presets.split(","))]
    runs += [(" ".join(arguments), arguments, True) for arguments in (
        ["quantize", *shlex.split(options), "--target", "ort", "--no-validate", "--no-check-speed"]
        for options in args.quantize.split(";") if options.strip())]
    rows = []
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        for index, (label, arguments, quantizes) in enumerate(runs):
            out = Path(scratch) / f"{index}.onnx"
            writes = arguments[0] != "inspect"
            command = graphopt + arguments + ([str(path), "-o", str(out), "-q"] if writes else [])
            rss, seconds, code = measure(command)
            row = {"command": label, "peak_rss_bytes": rss, "seconds": seconds, "exit_code": code,
                   "quantizes": quantizes}
            if writes:
                row["output_bytes"] = model_bytes(out) if code == 0 else None
            row["target_bytes"] = target_bytes(row, size)
            row["met"] = None if row["target_bytes"] is None else rss <= row["target_bytes"]
            rows.append(row)
            out.unlink(missing_ok=True)
            out.with_name(out.name + ".data").unlink(missing_ok=True)
    lines = [f"Model: {path.name}, {size / 2**30:.2f} GiB (float32 weights in external data)", "",
             "Targets: optimize at most 0.5x the model size; quantizing at most the output + 1 GiB.", "",
             "| command | peak RSS GiB | RSS / model size | output GiB | target GiB | met | seconds | exit |",
             "|---|---:|---:|---:|---:|:-:|---:|---:|"]
    for row in rows:
        output = "—" if row.get("output_bytes") is None else f"{row['output_bytes'] / 2**30:.2f}"
        target = "—" if row["target_bytes"] is None else f"{row['target_bytes'] / 2**30:.2f}"
        met = {None: "—", True: "yes", False: "**no**"}[row["met"]]
        lines.append(f"| {row['command']} | {row['peak_rss_bytes'] / 2**30:.2f} | "
                     f"{row['peak_rss_bytes'] / size:.2f}x | {output} | {target} | {met} | "
                     f"{row['seconds']:.1f} | {row['exit_code']} |")
    markdown = "\n".join(lines) + "\n"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "large_model_memory.json").write_text(
        json.dumps({"model": path.name, "model_bytes": size, "runs": rows}, indent=2) + "\n")
    (RESULTS / "large_model_memory.md").write_text(markdown)
    print(markdown)
    return 0 if all(row["exit_code"] == 0 and row["met"] is not False for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
