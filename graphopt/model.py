"""Load, save, convert and inspect ONNX models on onnx-ir.

Loading is lazy (external tensors stay on disk, memory-mapped when a pass reads them) and
checks the file before any work; saving is atomic (a temp folder beside the output, then
rename), uses external data above the protobuf limit, and never writes over its input.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import onnx
import onnx_ir as ir

from graphopt import checks, writer
from graphopt.errors import InputError
from graphopt.memory import gc_paused
from graphopt.outputs import write_error

SOURCE_KEY = "graphopt.source"
LEGACY_DIMS_KEY = "graphopt.legacy_dims"
ZERO_DIMS_KEY = "graphopt.zero_dims"
PROTOBUF_LIMIT_BYTES = 2**31 - 1
_STRUCTURE_MARGIN_BYTES = 64 << 20


def model_opset(model: ir.Model) -> int:
    """The model's ONNX (default-domain) opset version."""
    return model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1))


def load(path: str | os.PathLike) -> ir.Model:
    """Read and check a model; tensors in external data stay on disk until a pass needs them."""
    with gc_paused():
        return _load(Path(path))


def _load(path: Path) -> ir.Model:
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if not path.is_file():
        raise InputError(f"{path}: not a file")
    try:
        proto = onnx.load(path, load_external_data=False)
    except Exception as error:  # protobuf raises several types for bytes that are not a model
        raise InputError(f"{path}: not an ONNX model ({checks.first_line(str(error)) or type(error).__name__})") from None
    _check_proto(path, proto)
    try:
        model = ir.serde.deserialize_model(proto)
    except Exception as error:
        raise InputError(f"{path}: unreadable model ({checks.first_line(str(error))})") from None
    ir.external_data.set_base_dir(model.graph, str(path.parent))
    _check_external_data(path, model)
    model.meta[SOURCE_KEY] = str(path.resolve())
    dynamic_legacy_dims(model)
    return model


def dynamic_legacy_dims(model: ir.Model) -> None:
    """Read the dimensions old exporters wrote as -1 or 0 for "dynamic", and paddle2onnx's "?", as the
    unknown dimensions they mean, on every value of every graph, and keep a note naming the inputs
    that had -1 or 0."""
    inputs = []
    for graph in model.graphs():
        values = [*graph.inputs, *graph.outputs, *(out for node in graph for out in node.outputs)]
        for value in values:
            if value.shape is None or value.const_value is not None:
                continue
            dims = value.shape.dims
            legacy = any(isinstance(dim, int) and dim <= 0 for dim in dims)
            if legacy and graph is model.graph and value in graph.inputs:
                inputs.append(f"{value.name} {[getattr(dim, 'value', dim) for dim in dims]}")
                if 0 in dims:  # ONNX Runtime reads 0 as a fixed 0: run this model, not the file
                    model.meta[ZERO_DIMS_KEY] = True
            if legacy or any(getattr(dim, "value", None) == "?" for dim in dims):  # "?" names no dimension
                value.shape = ir.Shape([ir.SymbolicDim(None) if _unknown(dim) else dim for dim in dims])
    if inputs:
        model.meta[LEGACY_DIMS_KEY] = (f"dimensions written -1 or 0 were read as dynamic (the old exporters' "
                                       f"convention): {'; '.join(inputs)}")


def _unknown(dim) -> bool:
    return dim <= 0 if isinstance(dim, int) else dim.value == "?"


def notes(model: ir.Model) -> list[str]:
    """What graphopt read differently from how the file wrote it, for the user to know once."""
    return [model.meta[LEGACY_DIMS_KEY]] if LEGACY_DIMS_KEY in model.meta else []


def _check_proto(path: Path, proto: onnx.ModelProto) -> None:
    if not proto.HasField("graph"):
        raise InputError(f"{path}: not an ONNX model (no graph)")
    if not proto.graph.output:
        raise InputError(f"{path}: the graph has no outputs")
    try:
        checks.check_structure_proto(checks.structure_of_proto(proto))
    except checks.InvariantError as error:
        raise InputError(f"{path}: invalid model: {error}") from None


def _check_external_data(path: Path, model: ir.Model) -> None:
    folder = path.parent.resolve()
    for graph in model.graphs():
        for value in graph.initializers.values():
            tensor = value.const_value
            if not isinstance(tensor, ir.ExternalTensor):
                continue
            location = Path(tensor.location)
            if location.is_absolute() or ".." in location.parts:
                raise InputError(f"{path}: external data location {tensor.location!r} "
                                 "must stay inside the model's folder")
            data_path = Path(tensor.path)
            # A symlink may lead anywhere; what counts is where it resolves.
            target = data_path.resolve()
            if not target.is_relative_to(folder):
                raise InputError(f"{path}: external data file {tensor.location!r} links to {target}, "
                                 "outside the model's folder")
            if not data_path.is_file():
                raise InputError(f"{path}: external data file {tensor.location!r} is missing "
                                 f"(needed by {value.name!r})")
            end = (tensor.offset or 0) + (tensor.length if tensor.length is not None else tensor.nbytes)
            if data_path.stat().st_size < end:
                raise InputError(f"{path}: external data file {tensor.location!r} is too short "
                                 f"for {value.name!r}")


def check_input(model: ir.Model) -> None:
    """Check an in-memory model handed to the API, so a broken input is not blamed on a pass."""
    try:
        checks.check_model(model)
    except checks.InvariantError as error:
        raise InputError(f"invalid model: {error}") from None


def from_proto(proto: onnx.ModelProto) -> ir.Model:
    """An in-memory ModelProto as an IR model, checked like a loaded file."""
    _check_proto(Path("<model>"), proto)
    model = ir.serde.deserialize_model(proto)
    dynamic_legacy_dims(model)
    return model


def parameter_bytes(model: ir.Model) -> int:
    return sum(
        value.const_value.nbytes
        for graph in model.graphs()
        for value in graph.initializers.values()
        if value.const_value is not None
    )


def _external_sources(model: ir.Model) -> set[str]:
    return {
        os.path.realpath(value.const_value.path)
        for graph in model.graphs()
        for value in graph.initializers.values()
        if isinstance(value.const_value, ir.ExternalTensor)
    }


def save(model: ir.Model, path: str | os.PathLike, *, external_data: bool | None = None) -> list[Path]:
    """Write the model atomically; return the files written.

    external_data: True writes tensors to `<name>.data` beside the model, False inlines them,
    None decides: external when the input used external data or the tensors near 2 GB.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a folder, expected a file path")
    real_path = os.path.realpath(path)
    sources = _external_sources(model)
    if real_path == model.meta.get(SOURCE_KEY) or real_path in sources:
        raise InputError(f"{path}: refusing to overwrite the input model")
    if external_data is None:
        external_data = bool(sources) or (
            parameter_bytes(model) > PROTOBUF_LIMIT_BYTES - _STRUCTURE_MARGIN_BYTES
        )
    elif not external_data and parameter_bytes(model) > PROTOBUF_LIMIT_BYTES - _STRUCTURE_MARGIN_BYTES:
        raise InputError(f"{path}: tensors exceed the 2 GB protobuf limit; use external data")
    data_name = f"{path.name}.data" if external_data else None
    if data_name and os.path.realpath(path.with_name(data_name)) in sources:
        raise InputError(f"{path}: refusing to overwrite the input's external data {data_name}")
    try:
        return _save_staged(model, path, external_data, data_name)
    except OSError as error:
        raise write_error(path, error) from None


def _save_staged(model: ir.Model, path: Path, external_data: bool, data_name: str | None) -> list[Path]:
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    try:
        staged_model = staging / path.name
        if external_data:
            ir.save(model, staged_model, external_data=data_name)
        else:
            writer.write_model(model, staged_model)
        written = []
        if data_name:
            os.replace(staging / data_name, path.with_name(data_name))
            written.append(path.with_name(data_name))
        os.replace(staged_model, path)
        written.insert(0, path)
        return written
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def convert_opset(model: ir.Model, version: int) -> ir.Model:
    """A copy of the model converted to ONNX opset `version` with ONNX's version converter."""
    current = model.opset_imports.get("", 1)
    if version == current:
        return model
    if version < 7:
        raise InputError(f"cannot convert to opset {version}: graphopt supports opset 7 and newer")
    proto = ir.serde.serialize_model(model)
    try:
        converted = onnx.version_converter.convert_version(proto, version)
    except Exception as error:
        raise InputError(f"cannot convert from opset {current} to {version}: {_converter_message(error)}") from None
    result = ir.serde.deserialize_model(converted)
    base_dirs = {os.path.dirname(t) for t in _external_sources(model)}
    if base_dirs:
        ir.external_data.set_base_dir(result.graph, base_dirs.pop())
    result.meta.update(model.meta)
    return result


def _converter_message(error: Exception) -> str:
    """ONNX's version converter's reason, without its C++ source location and assertion text."""
    text = checks.first_line(str(error)) or type(error).__name__
    text = text.rpartition(" failed: ")[2] if "Assertion" in text else text
    return re.sub(r"^(Warning|Error): ", "", text.strip())


@dataclasses.dataclass
class TensorInfo:
    name: str
    dtype: str
    shape: list[int | str | None] | None


@dataclasses.dataclass
class ModelInfo:
    path: str | None
    file_bytes: int | None
    ir_version: int
    producer: str
    opsets: dict[str, int]
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    nodes: int
    op_counts: dict[str, int]
    initializers: int
    parameters: int
    parameter_bytes: int
    parameters_by_dtype: dict[str, dict[str, int]]
    external_data: bool

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def file_bytes(model: ir.Model) -> int | None:
    """Size on disk of the file a model was loaded from plus its external data files."""
    source = model.meta.get(SOURCE_KEY)
    if source is None:
        return None
    return os.path.getsize(source) + sum(os.path.getsize(path) for path in _external_sources(model))


def _tensor_info(value: ir.Value) -> TensorInfo:
    shape = None
    if value.shape is not None:
        shape = [dim if isinstance(dim, int) else dim.value for dim in value.shape.dims]
    dtype = value.dtype.name.lower() if value.dtype is not None else "unknown"
    return TensorInfo(value.name or "", dtype, shape)


def _op_key(node: ir.Node) -> str:
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"


def inspect(model: ir.Model | str | os.PathLike) -> ModelInfo:
    """Summarize a model: opsets, signature, op histogram, parameters by dtype, file size."""
    if not isinstance(model, ir.Model):
        model = load(model)
    source = model.meta.get(SOURCE_KEY)
    ops = collections.Counter(_op_key(node) for node in ir.traversal.RecursiveGraphIterator(model.graph))
    by_dtype: dict[str, dict[str, int]] = {}
    external = False
    initializers = parameters = total_bytes = 0
    for graph in model.graphs():
        for value in graph.initializers.values():
            tensor = value.const_value
            if tensor is None:
                continue
            external |= isinstance(tensor, ir.ExternalTensor)
            size = math.prod(tensor.shape.numpy())
            nbytes = math.ceil(size * tensor.dtype.itemsize)
            entry = by_dtype.setdefault(tensor.dtype.name.lower(), {"tensors": 0, "parameters": 0, "bytes": 0})
            entry["tensors"] += 1
            entry["parameters"] += size
            entry["bytes"] += nbytes
            initializers += 1
            parameters += size
            total_bytes += nbytes
    return ModelInfo(
        path=source,
        file_bytes=file_bytes(model),
        ir_version=model.ir_version,
        producer=" ".join(filter(None, [model.producer_name, model.producer_version])),
        opsets=dict(sorted(model.opset_imports.items())),
        inputs=[_tensor_info(value) for value in model.graph.inputs],
        outputs=[_tensor_info(value) for value in model.graph.outputs],
        nodes=sum(ops.values()),
        op_counts=dict(ops.most_common()),
        initializers=initializers,
        parameters=parameters,
        parameter_bytes=total_bytes,
        parameters_by_dtype=by_dtype,
        external_data=external,
    )


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write a small text file (a report) through a temp file and a rename."""
    write_bytes_atomic(path, text.encode())


def write_folder_atomic(path: str | os.PathLike, files: dict[str, bytes]) -> None:
    """Write a folder of small files (calibration input sets) through a staged folder and a rename;
    a folder already there is replaced whole."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{path}: is a file, expected a folder path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        staged = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    except OSError as error:
        raise write_error(path, error) from None
    try:
        for name, data in files.items():
            (staged / name).write_bytes(data)
        replace_folder(staged, path)
    except OSError as error:
        raise write_error(path, error) from None
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def replace_folder(source: Path, target: Path) -> None:
    """Move a staged folder into place, replacing a folder of that name (moved aside, then removed)."""
    if not target.is_dir():
        os.replace(source, target)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
    os.replace(target, aside / target.name)
    os.replace(source, target)
    shutil.rmtree(aside, ignore_errors=True)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write a small file (a report, a plot) through a temp file and a rename."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a folder, expected a file path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, staged = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    except OSError as error:
        raise write_error(path, error) from None
    try:
        os.fchmod(handle, 0o666 & ~_umask())
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.replace(staged, path)
    except OSError as error:
        raise write_error(path, error) from None
    finally:
        if os.path.exists(staged):
            os.unlink(staged)
