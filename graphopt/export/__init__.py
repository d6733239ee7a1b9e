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
    "calibration_folder",
    "calibration_set",
    "check_parity",
    "dataset_paths",
    "export_zoo",
    "export_spec",
    "from_torch",
    "load_factory",
    "text_paths",
    "written_data",
    "zoo_entry",
]


def dataset_paths(model_path: str | os.PathLike, names) -> dict[str, Path]:
    """Where the datasets of a zoo model are written: beside it, as <stem>.<name>.npz."""
    path = Path(model_path)
    return {name: path.with_name(f"{path.stem}.{name}.npz") for name in names}


def calibration_folder(model_path: str | os.PathLike) -> Path:
    """Where a model's calibration input sets of their own shapes (the text models' sentences) are
    written: beside it, as <stem>.calibration/ with one .npz per input set (what --calib reads)."""
    path = Path(model_path)
    return path.with_name(f"{path.stem}.calibration")


def text_paths(model_path: str | os.PathLike, spec: ZooModel) -> dict[str, Path]:
    """Where a text model's text files (<stem>.<name>.txt) and tokenizer (<stem>.tokenizer.json) are written."""
    path = Path(model_path)
    paths = {name: path.with_name(f"{path.stem}.{name}.txt") for name in spec.texts}
    if spec.tokenizer is not None:
        paths["tokenizer"] = path.with_name(f"{path.stem}.tokenizer.json")
    return paths


def written_data(model_path: str | os.PathLike, spec: ZooModel) -> list[Path]:
    """The data files export_spec writes beside the model."""
    paths = list(dataset_paths(model_path, spec.datasets).values())
    if spec.calibration is not None and "calibration" not in spec.datasets:
        paths.append(calibration_folder(model_path))
    return paths + list(text_paths(model_path, spec).values())


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
    if calibration_folder(path) in written_data(path, spec):
        model_io.write_folder_atomic(calibration_folder(path), {
            f"{index:03d}.npz": _npz_bytes(feeds) for index, feeds in enumerate(spec.calibration())})
    for name, target in text_paths(path, spec).items():
        data = spec.tokenizer.read_bytes() if name == "tokenizer" else "\n".join(spec.texts[name]).encode() + b"\n"
        model_io.write_bytes_atomic(target, data)
    return result


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    import io

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


SYNTHESIZED_SAMPLES = 16  # static int8's calibration set for a model that ships none


def calibration_set(spec: ZooModel, exported_path: str | os.PathLike,
                    shapes: dict[str, tuple[int, ...]] | None = None) -> Path | list[dict[str, np.ndarray]]:
    """What static int8 calibrates a built model on: its shipped calibration dataset (digits-cnn's
    training images, written beside the export), else its calibration inputs (the text models: real
    sentences, written beside the export as a folder), else SYNTHESIZED_SAMPLES seeded random input sets at `shapes` (random-weight models)."""
    from graphopt.runtime import inputs as input_io

    shipped = dataset_paths(exported_path, spec.datasets).get("calibration")
    if shipped is not None:
        return shipped
    if calibration_folder(exported_path).is_dir():
        return calibration_folder(exported_path)
    if spec.calibration is not None:
        return spec.calibration()
    model = model_io.load(exported_path)
    return [input_io.synthesize(model, shapes, seed=seed) for seed in range(1, SYNTHESIZED_SAMPLES + 1)]
