"""The Python API behind every CLI command: optimize a model or a file, list passes and presets."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import onnx
import onnx_ir as ir

from graphopt import model as model_io
from graphopt.errors import InputError
from graphopt.passes import pass_class, pass_names, pass_options
from graphopt.pipeline import PassManager, PassObserver, PipelineReport, resolve_spec


@dataclasses.dataclass
class OptimizeResult:
    model: ir.Model
    report: PipelineReport
    written: list[Path]


def optimize(
    model: ir.Model | onnx.ModelProto | str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    preset: str | None = None,
    passes: str | Sequence[str] | None = None,
    recipe: str | os.PathLike | None = None,
    target: str = "portable",
    opset: int | None = None,
    fixed_point: bool | None = None,
    max_iterations: int | None = None,
    check: bool = True,
    external_data: bool | None = None,
    observer: PassObserver | None = None,
) -> OptimizeResult:
    """Optimize a model (an ir.Model is changed in place) and optionally write it atomically.

    Give at most one of `preset` (O0-O3, default O1), `passes` ("a,b,c" or a list) and
    `recipe` (a TOML/YAML file). `fixed_point` repeats the passes until nothing changes.
    """
    spec = resolve_spec(preset, passes, recipe)
    if fixed_point is not None:
        spec.fixed_point = fixed_point
    if max_iterations is not None:
        spec.max_iterations = max_iterations
    manager = PassManager(spec.build(), target=target, fixed_point=spec.fixed_point,
                          max_iterations=spec.max_iterations, check=check, observer=observer)
    if isinstance(model, onnx.ModelProto):
        model = model_io.from_proto(model)
    elif isinstance(model, ir.Model):
        model_io.check_input(model)
    else:
        model = model_io.load(model)
    if opset is not None:
        model = model_io.convert_opset(model, opset)
    report = manager.run(model)
    written = model_io.save(model, output, external_data=external_data) if output is not None else []
    return OptimizeResult(model, report, written)


@dataclasses.dataclass
class PassInfo:
    name: str
    summary: str
    min_opset: int
    targets: list[str]
    options: dict[str, object]


def list_passes() -> list[PassInfo]:
    """Every registered pass with its summary, opset window, targets and option defaults."""
    infos = []
    for name in pass_names():
        cls = pass_class(name)
        options = {option.name: option.default for option in pass_options(cls)}
        infos.append(PassInfo(name, cls.summary, cls.min_opset, sorted(cls.targets), options))
    return infos


def check_output_differs(source: str | os.PathLike, output: str | os.PathLike) -> None:
    """Refuse an output path that is the input (before any work is done)."""
    if os.path.exists(output) and os.path.samefile(source, output):
        raise InputError(f"{output}: refusing to overwrite the input model")
