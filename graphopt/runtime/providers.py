"""Execution providers and sessions: the one place that turns `--ep` and friends into ORT sessions.

A model is given as a path, an onnx.ModelProto or an onnx_ir.Model; in-memory models with
external (lazy) tensors or near the 2 GB protobuf limit go through a temporary file.
A requested GPU provider that ONNX Runtime cannot use is an error, never a silent CPU run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx
import onnx_ir as ir
import onnxruntime as ort

from graphopt.checks import first_line
from graphopt.errors import InputError
from graphopt.model import model_opset

EP_NAMES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
EP_CHOICES = ("cpu", "cuda", "tensorrt", "auto")
OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
_INLINE_LIMIT_BYTES = 1 << 30


EXECUTION_MODES = {
    "sequential": ort.ExecutionMode.ORT_SEQUENTIAL,
    "parallel": ort.ExecutionMode.ORT_PARALLEL,
}
SPINNING_KEYS = ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning")


@dataclasses.dataclass(frozen=True)
class SessionConfig:
    """How to run a model: provider, device, threads, ORT's own graph optimizations and options.

    `spinning` is ONNX Runtime's `session.*.allow_spinning` (on by default, as in ORT);
    `extra_entries` holds any other session config entries (KEY, VALUE) and wins over it.
    """

    ep: str = "cpu"
    device_id: int = 0
    threads: int | None = None
    opt_level: str = "all"
    provider_options: tuple[tuple[str, str], ...] = ()
    inter_op: int | None = None
    execution_mode: str = "sequential"
    spinning: bool = True
    extra_entries: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.ep not in EP_CHOICES:
            raise InputError(f"unknown execution provider {self.ep!r} (choose from {', '.join(EP_CHOICES)})")
        if self.opt_level not in OPT_LEVELS:
            raise InputError(f"unknown graph optimization level {self.opt_level!r} "
                             f"(choose from {', '.join(OPT_LEVELS)})")
        if self.execution_mode not in EXECUTION_MODES:
            raise InputError(f"unknown execution mode {self.execution_mode!r} "
                             f"(choose from {', '.join(EXECUTION_MODES)})")
        if self.threads is not None and self.threads < 1:
            raise InputError("--threads must be at least 1")
        if self.inter_op is not None and self.inter_op < 1:
            raise InputError("--inter-op must be at least 1")
        if self.provider_options and self.ep == "cpu":
            raise InputError("--provider-option configures a GPU execution provider; the CPU provider "
                             "takes none (session settings go in --session-config KEY=VALUE)")

    def resolved_ep(self) -> str:
        """The provider that will run: `auto` becomes cuda when ONNX Runtime has it, else cpu."""
        if self.ep != "auto":
            return self.ep
        return "cuda" if EP_NAMES["cuda"] in ort.get_available_providers() else "cpu"

    @property
    def device(self) -> str:
        return "cpu" if self.resolved_ep() == "cpu" else "cuda"

    def config_entries(self) -> dict[str, str]:
        """The session config entries a session gets: spinning first, then the user's own."""
        entries = {} if self.spinning else {key: "0" for key in SPINNING_KEYS}
        entries.update(self.extra_entries)
        return entries

    @property
    def spinning_effective(self) -> bool:
        """Whether intra-op threads spin, after --session-config had its say."""
        return self.config_entries().get(SPINNING_KEYS[0], "1") != "0"

    def describe(self) -> dict[str, Any]:
        """The settings as they go into the session, for reports."""
        return {
            "ep": self.resolved_ep(), "device_id": self.device_id,
            "threads": self.threads, "inter_op_threads": self.inter_op,
            "execution_mode": self.execution_mode, "spinning": self.spinning_effective,
            "graph_optimization_level": self.opt_level,
            "session_config": self.config_entries(),
            "provider_options": dict(self.provider_options),
        }


def parse_key_values(pairs: list[str] | tuple[str, ...], flag: str = "--provider-option") -> tuple[tuple[str, str], ...]:
    """`key=value` strings from the command line."""
    options = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InputError(f"{flag} {pair!r} must look like KEY=VALUE")
        options.append((key.strip(), value))
    return tuple(options)


def _check_available(ep: str) -> None:
    name = EP_NAMES[ep]
    available = ort.get_available_providers()
    if name not in available:
        hint = " (install onnxruntime-gpu, e.g. pip install 'graphopt[gpu]', on a machine with an NVIDIA GPU)"
        raise InputError(f"the {ep.upper()} execution provider is not available: this onnxruntime "
                         f"{ort.__version__} offers {', '.join(available)}{hint if ep != 'cpu' else ''}")


def _providers(config: SessionConfig) -> list[Any]:
    ep = config.resolved_ep()
    _check_available(ep)
    if ep == "cpu":
        if config.provider_options:
            raise InputError("--provider-option configures a GPU execution provider, and --ep auto "
                             "found none: ONNX Runtime offers " + ", ".join(ort.get_available_providers()))
        return [EP_NAMES["cpu"]]
    _preload_gpu_libraries()
    options = {"device_id": str(config.device_id), **dict(config.provider_options)}
    return [(EP_NAMES[ep], options), EP_NAMES["cpu"]]


@functools.cache
def _preload_gpu_libraries() -> None:
    """Load CUDA, cuDNN and cuBLAS from the nvidia-* pip packages when they are installed
    (onnxruntime-gpu's preload_dlls, 1.21+): without it the CUDA EP finds them only on
    LD_LIBRARY_PATH. Libraries already loaded or absent are left to the session's own error."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        try:
            preload()
        except Exception:  # noqa: BLE001 - a missing package is reported when the session starts
            pass


def session_options(config: SessionConfig) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.log_severity_level = 4  # failures reach the user as one line of ours, not ORT's log
    options.graph_optimization_level = OPT_LEVELS[config.opt_level]
    options.execution_mode = EXECUTION_MODES[config.execution_mode]
    if config.threads is not None:
        options.intra_op_num_threads = config.threads
    if config.inter_op is not None:
        options.inter_op_num_threads = config.inter_op
    for key, value in config.config_entries().items():
        options.add_session_config_entry(key, value)
    return options


def ort_version() -> str:
    return ort.__version__


@functools.lru_cache(maxsize=None)
def runs_opset(version: int) -> bool:
    """Whether this ONNX Runtime loads models of ONNX opset `version` (probed with a tiny model)."""
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["y"])], "probe",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    probe = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", version)], ir_version=8)
    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:
        ort.InferenceSession(probe.SerializeToString(), options, providers=[EP_NAMES["cpu"]])
    except Exception:
        return False
    return True


@contextlib.contextmanager
def model_source(model) -> Iterator[str | bytes]:
    """A path or serialized bytes ONNX Runtime can load, for any accepted model form."""
    if isinstance(model, (str, os.PathLike)):
        yield os.fspath(model)
        return
    if isinstance(model, onnx.ModelProto):
        if model.ByteSize() < _INLINE_LIMIT_BYTES:
            yield model.SerializeToString()
            return
        model = ir.serde.deserialize_model(model)
    external = any(isinstance(value.const_value, ir.ExternalTensor)
                   for graph in model.graphs() for value in graph.initializers.values())
    size = sum(value.const_value.nbytes for graph in model.graphs()
               for value in graph.initializers.values() if value.const_value is not None)
    if not external and size < _INLINE_LIMIT_BYTES:
        yield ir.serde.serialize_model(model).SerializeToString()
        return
    from graphopt import model as model_io

    with tempfile.TemporaryDirectory(prefix="graphopt-session-") as folder:
        path = Path(folder) / "model.onnx"
        model_io.save(model, path, external_data=True)
        yield str(path)


@dataclasses.dataclass
class Session:
    """An ONNX Runtime session with the provider that actually runs it and its creation time."""

    inner: ort.InferenceSession
    ep: str
    created_seconds: float
    label: str = "the model"

    def run(self, feeds: dict[str, Any], outputs: list[str] | None = None) -> list[Any]:
        """Run once; ONNX Runtime's failure becomes one line naming the model and input shapes."""
        try:
            return self.inner.run(outputs, feeds)
        except Exception as error:
            raise run_failure(self.label, feeds, error) from None


def run_failure(label: str, feeds: dict[str, Any], error: Exception) -> InputError:
    """The error for a run ONNX Runtime refused (bad input values or shapes for this model)."""
    return InputError(f"ONNX Runtime failed running {label} on {describe_feeds(feeds)}: {ort_message(error)}")


def describe_feeds(feeds: dict[str, Any]) -> str:
    return ", ".join(f"{name} {list(getattr(array, 'shape', []))}" for name, array in feeds.items()) or "no inputs"


def ort_message(error: Exception) -> str:
    """The first line of an ONNX Runtime error without its status-code prefix and the C++ source
    location and function signature it quotes."""
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : ", "", first_line(str(error)) or type(error).__name__)
    return re.sub(r"/onnxruntime_src/\S+:\d+ \S.*?\)\s(?=[A-Z\[])", "", text)


def model_label(model, fallback: str = "the model") -> str:
    """How messages name a model: its path, or `fallback` for one in memory."""
    return os.fspath(model) if isinstance(model, (str, os.PathLike)) else fallback


def create_session(model, config: SessionConfig = SessionConfig(), label: str | None = None) -> Session:
    """An ORT session for `model`; a GPU provider that ORT silently drops is an error."""
    providers = _providers(config)
    options = session_options(config)
    label = label or model_label(model)
    with model_source(model) as source:
        start = time.perf_counter()
        try:
            inner = ort.InferenceSession(source, options, providers=providers)
        except Exception as error:
            raise InputError(f"ONNX Runtime cannot load {label}: {ort_message(error)}") from None
        created = time.perf_counter() - start
    ep = config.resolved_ep()
    if EP_NAMES[ep] not in inner.get_providers():
        raise InputError(f"ONNX Runtime could not start the {ep.upper()} execution provider "
                         f"(is a GPU present and are CUDA/cuDNN libraries loadable?)")
    return Session(inner, ep, created, label)


OPSET_FLOOR = 7


def opset_warnings(model: ir.Model) -> list[str]:
    """What could not be checked for a model outside the opsets graphopt and its tools support."""
    opset = model_opset(model)
    if opset < OPSET_FLOOR:
        return [f"opset {opset} is below {OPSET_FLOOR}, the oldest graphopt supports: the ONNX checker and "
                "graphopt's invariants passed, but the passes are untested at this opset; check the result "
                f"with --validate, or convert it with --opset {OPSET_FLOOR}"]
    problems = []
    if opset > onnx.defs.onnx_opset_version():
        problems.append(f"than onnx {onnx.__version__} knows ({onnx.defs.onnx_opset_version()}), so its ops "
                        "were not checked against their schemas")
    if not runs_opset(opset):
        problems.append(f"than onnxruntime {ort_version()} runs, so it could not be run, validated or "
                        "benchmarked")
    if not problems:
        return []
    return [f"opset {opset} is newer {' and newer '.join(problems)}; graphopt's structural invariants passed"]
