"""torch -> ONNX export with parity checks, and the built-in model zoo (needs graphopt[export])."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from graphopt import model as model_io
from graphopt.export.torch_export import (
    EXPORTERS,
    ExportFailed,
    ExportResult,
    check_parity,
    from_torch,
)
from graphopt.export.factory import load_factory
from graphopt.export.zoo import ZOO, ZooEntry, ZooModel, zoo_entry

__all__ = [
    "EXPORTERS",
    "ZOO",
    "ExportFailed",
    "ExportResult",
    "ZooEntry",
    "ZooModel",
    "check_parity",
    "dataset_paths",
    "export_zoo",
    "export_spec",
    "from_torch",
    "load_factory",
    "zoo_entry",
]


def dataset_paths(model_path: str | os.PathLike, names) -> dict[str, Path]:
    """Where the datasets of a zoo model are written: beside it, as <stem>.<name>.npz."""
    path = Path(model_path)
    return {name: path.with_name(f"{path.stem}.{name}.npz") for name in names}


def export_zoo(name: str, path: str | os.PathLike, **options) -> ExportResult:
    """Export a zoo model to `path`, with its datasets (if any) beside it as .npz files."""
    return export_spec(zoo_entry(name).build(), path, **options)


def export_spec(spec: ZooModel, path: str | os.PathLike, *, exporter: str = "dynamo",
                opset: int | None = None, fallback: bool = True, parity: bool = True) -> ExportResult:
    """Export a built model (zoo entry or --module factory) and write its datasets beside it."""
    result = from_torch(spec.module, spec.example_inputs, path, input_names=spec.input_names or None,
                        output_names=spec.output_names or None, dynamic_axes=spec.dynamic_axes,
                        exporter=exporter, opset=opset, fallback=fallback, parity=parity)
    for dataset, target in dataset_paths(path, spec.datasets).items():
        buffer = _npz_bytes(spec.datasets[dataset])
        model_io.write_bytes_atomic(target, buffer)
    return result


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    import io

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()
