"""Execution providers and sessions: the one place that turns `--ep` and friends into ORT sessions.

A model is given as a path, an onnx.ModelProto or an onnx_ir.Model; in-memory models with
external (lazy) tensors or near the 2 GB protobuf limit go through a temporary file.
A requested GPU provider that ONNX Runtime cannot use is an error, never a silent CPU run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx
import onnx_ir as ir
import onnxruntime as ort

from graphopt.errors import InputError

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


@dataclasses.dataclass(frozen=True)
class SessionConfig:
    """How to run a model: provider, device, threads, ORT's own graph optimizations."""

    ep: str = "cpu"
    device_id: int = 0
    threads: int | None = None
    opt_level: str = "all"
    provider_options: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.ep not in EP_CHOICES:
            raise InputError(f"unknown execution provider {self.ep!r} (choose from {', '.join(EP_CHOICES)})")
        if self.opt_level not in OPT_LEVELS:
            raise InputError(f"unknown graph optimization level {self.opt_level!r} "
                             f"(choose from {', '.join(OPT_LEVELS)})")
        if self.threads is not None and self.threads < 1:
            raise InputError("--threads must be at least 1")

    def resolved_ep(self) -> str:
        """The provider that will run: `auto` becomes cuda when ONNX Runtime has it, else cpu."""
        if self.ep != "auto":
            return self.ep
        return "cuda" if EP_NAMES["cuda"] in ort.get_available_providers() else "cpu"

    @property
    def device(self) -> str:
        return "cpu" if self.resolved_ep() == "cpu" else "cuda"


def parse_provider_options(pairs: list[str] | tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """`key=value` strings from the command line."""
    options = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InputError(f"provider option {pair!r} must look like key=value")
        options.append((key, value))
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
        return [EP_NAMES["cpu"]]
    options = {"device_id": str(config.device_id), **dict(config.provider_options)}
    return [(EP_NAMES[ep], options), EP_NAMES["cpu"]]


def session_options(config: SessionConfig) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = OPT_LEVELS[config.opt_level]
    if config.threads is not None:
        options.intra_op_num_threads = config.threads
    return options


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

    def run(self, feeds: dict[str, Any], outputs: list[str] | None = None) -> list[Any]:
        return self.inner.run(outputs, feeds)


def create_session(model, config: SessionConfig = SessionConfig()) -> Session:
    """An ORT session for `model`; a GPU provider that ORT silently drops is an error."""
    providers = _providers(config)
    options = session_options(config)
    with model_source(model) as source:
        start = time.perf_counter()
        try:
            inner = ort.InferenceSession(source, options, providers=providers)
        except Exception as error:
            message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise InputError(f"ONNX Runtime cannot load the model: {message}") from None
        created = time.perf_counter() - start
    ep = config.resolved_ep()
    if EP_NAMES[ep] not in inner.get_providers():
        raise InputError(f"ONNX Runtime could not start the {ep.upper()} execution provider "
                         f"(is a GPU present and are CUDA/cuDNN libraries loadable?)")
    return Session(inner, ep, created)
