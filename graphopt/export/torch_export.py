"""torch.nn.Module -> ONNX, with a parity check against torch at every dynamic shape.

The dynamo exporter (torch.onnx, `dynamo=True`) is the default; the TorchScript exporter runs
on request, or as a stated fallback when dynamo fails. After export the model runs in ONNX
Runtime on the example inputs and, for each dynamic axis, on inputs resized along it; the
largest difference from torch is reported and a disagreement is an error naming the exporter
and opset.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import io
import logging
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from graphopt import model as model_io
from graphopt.errors import ExportFailed, GraphoptError, InputError, ValidationFailed
from graphopt.runtime.compare import Tolerance, compare
from graphopt.runtime.providers import create_session
from graphopt.runtime.validate import InputSetResult

EXPORTERS = ("dynamo", "torchscript")
PARITY_TOLERANCE = Tolerance("export", rtol=1e-3, atol=1e-4)
TORCHSCRIPT_OPSET = 17


@dataclasses.dataclass
class ExportResult:
    model: ir.Model
    path: Path | None
    exporter: str
    opset: int
    input_names: list[str]
    output_names: list[str]
    parity: list[InputSetResult]
    notes: list[str]

    @property
    def max_abs_error(self) -> float:
        return max((check.max_abs_error for check in self.parity), default=0.0)

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path) if self.path else None, "exporter": self.exporter,
                "opset": self.opset, "inputs": self.input_names, "outputs": self.output_names,
                "max_abs_error": self.max_abs_error, "parity": [c.to_dict() for c in self.parity],
                "notes": self.notes}


def _as_tuple(example_inputs) -> tuple:
    return tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)


def _default_input_names(module, count: int) -> list[str]:
    try:
        parameters = [p.name for p in inspect.signature(module.forward).parameters.values()
                      if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        parameters = []
    return parameters[:count] if len(parameters) >= count else [f"input_{i}" for i in range(count)]


def flatten_outputs(value) -> list:
    """Tensors of a module's result in the order ONNX exporters emit them."""
    import torch

    if isinstance(value, torch.Tensor):
        return [value]
    if hasattr(value, "to_tuple"):
        value = value.to_tuple()
    if isinstance(value, Mapping):
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        return [tensor for item in value for tensor in flatten_outputs(item)]
    if value is None:
        return []
    raise InputError(f"the module returned a {type(value).__name__}; return tensors, tuples or dicts")


def _axes(name: str, dynamic_axes: Mapping[str, Any]) -> dict[int, str]:
    axes = dynamic_axes.get(name) or {}
    return dict(axes) if isinstance(axes, Mapping) else {axis: f"{name}_dim{axis}" for axis in axes}


def _dynamic_shapes(input_names: list[str], dynamic_axes: Mapping[str, Any]) -> tuple:
    """torch.export's dynamic_shapes, positional (forward's parameter names need not match)."""
    import torch

    dims: dict[str, Any] = {}
    return tuple(
        {axis: dims.setdefault(symbol, torch.export.Dim(symbol)) for axis, symbol in _axes(name, dynamic_axes).items()}
        or None
        for name in input_names
    )


@contextlib.contextmanager
def _quiet_export():
    """torch's exporters print progress, warnings and (from C++) graphs of failed exports; keep
    the user's terminal for our own output by sending file descriptors 1 and 2 to a scratch file."""
    sys.stdout.flush()
    sys.stderr.flush()
    stream = io.StringIO()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as scratch, warnings.catch_warnings(), \
            contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):
        warnings.simplefilter("ignore")
        previous = logging.root.manager.disable
        logging.disable(logging.WARNING)
        os.dup2(scratch.fileno(), 1)
        os.dup2(scratch.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for descriptor in saved:
                os.close(descriptor)
            logging.disable(previous)


def _export_dynamo(module, args, input_names, output_names, dynamic_axes, opset) -> ir.Model:
    import torch

    with _quiet_export():
        program = torch.onnx.export(
            module, args, dynamo=True, input_names=input_names, output_names=output_names,
            dynamic_shapes=_dynamic_shapes(input_names, dynamic_axes) if dynamic_axes else None,
            opset_version=opset, optimize=False, verbose=False,
        )
    return program.model


def _export_torchscript(module, args, input_names, output_names, dynamic_axes, opset, folder) -> ir.Model:
    import torch

    path = Path(folder) / "torchscript.onnx"
    with _quiet_export():
        torch.onnx.export(module, args, str(path), dynamo=False, input_names=input_names,
                          output_names=output_names, dynamic_axes=dict(dynamic_axes or {}),
                          opset_version=opset or TORCHSCRIPT_OPSET)
    return model_io.load(path)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _first_line(error: BaseException) -> str:
    """The root cause's type and first line (exporters wrap the real error several times)."""
    while error.__cause__ is not None:
        error = error.__cause__
    text = _ANSI.sub("", str(error)).strip()
    line = text.splitlines()[0] if text else ""
    return f"{type(error).__name__}: {line}"[:300] if line else type(error).__name__


def _resized(tensor, axis: int, size: int):
    import torch

    index = torch.arange(size) % tensor.shape[axis]
    return tensor.index_select(axis, index)


def _parity_inputs(args: tuple, input_names: list[str], dynamic_axes) -> list[tuple]:
    """The example inputs, then one variant per dynamic symbol with that symbol's dims grown by 1."""
    sets = [args]
    if not dynamic_axes:
        return sets
    symbols: dict[str, list[tuple[int, int]]] = {}
    for position, name in enumerate(input_names):
        for axis, symbol in _axes(name, dynamic_axes).items():
            symbols.setdefault(symbol, []).append((position, axis))
    for places in symbols.values():
        variant = list(args)
        for position, axis in places:
            variant[position] = _resized(variant[position], axis, variant[position].shape[axis] + 1)
        sets.append(tuple(variant))
    return sets


def check_parity(module, model: ir.Model, args_sets: Sequence[tuple], input_names: list[str],
                 tolerance: Tolerance = PARITY_TOLERANCE) -> list[InputSetResult]:
    """Run torch and ONNX Runtime on each input set and compare every output."""
    import torch

    session = create_session(model)
    onnx_inputs = [value.name for value in session.inner.get_inputs()]
    output_names = [value.name for value in session.inner.get_outputs()]
    checks = []
    for args in args_sets:
        with torch.no_grad():
            expected = [t.detach().cpu().numpy() for t in flatten_outputs(module(*args))]
        feeds = {name: tensor.detach().cpu().numpy() for name, tensor in zip(input_names, args)
                 if name in onnx_inputs}
        actual = session.run(feeds)
        if len(actual) != len(expected):
            raise ValidationFailed(f"the ONNX model has {len(actual)} outputs, torch returned {len(expected)}")
        comparisons = [compare(name, want, np.asarray(got), tolerance)
                       for name, want, got in zip(output_names, expected, actual)]
        checks.append(InputSetResult({name: list(array.shape) for name, array in feeds.items()}, comparisons))
    return checks


def from_torch(
    module,
    example_inputs,
    path: str | os.PathLike | None = None,
    *,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    dynamic_axes: Mapping[str, Mapping[int, str] | Sequence[int]] | None = None,
    opset: int | None = None,
    exporter: str = "dynamo",
    fallback: bool = True,
    parity: bool = True,
    external_data: bool | None = None,
) -> ExportResult:
    """Export `module` to ONNX (written atomically to `path` when given) and check parity.

    dynamic_axes: {input_name: {axis: symbol}} (or a list of axes); inputs sharing a symbol
    share the dimension, e.g. {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}}.
    Raises ExportFailed when no exporter succeeds, ValidationFailed when outputs disagree.
    """
    import torch

    if exporter not in EXPORTERS:
        raise InputError(f"unknown exporter {exporter!r} (choose from {', '.join(EXPORTERS)})")
    module = module.eval()
    args = _as_tuple(example_inputs)
    input_names = list(input_names or _default_input_names(module, len(args)))
    if len(input_names) != len(args):
        raise InputError(f"{len(input_names)} input names for {len(args)} example inputs")
    with torch.no_grad():
        reference_outputs = flatten_outputs(module(*args))
    output_names = list(output_names or (["output"] if len(reference_outputs) == 1
                                         else [f"output_{i}" for i in range(len(reference_outputs))]))
    unknown = set(dynamic_axes or {}) - set(input_names)
    if unknown:
        raise InputError(f"dynamic_axes names unknown input {sorted(unknown)[0]!r} (inputs: {input_names})")
    notes: list[str] = []
    order = [exporter] + ([name for name in EXPORTERS if name != exporter] if fallback else [])
    errors = []
    model = None
    used = exporter
    with tempfile.TemporaryDirectory(prefix="graphopt-export-") as folder:
        for name in order:
            try:
                with torch.no_grad():
                    if name == "dynamo":
                        model = _export_dynamo(module, args, input_names, output_names, dynamic_axes, opset)
                    else:
                        model = _export_torchscript(module, args, input_names, output_names,
                                                    dynamic_axes, opset, folder)
                used = name
                break
            except GraphoptError:
                raise
            except Exception as error:  # exporters raise anything; report the cause
                errors.append(f"{name} exporter: {_first_line(error)}")
                if name != order[-1]:
                    notes.append(f"the {name} exporter failed ({_first_line(error)}); "
                                 f"falling back to the {order[order.index(name) + 1]} exporter")
        if model is None:
            raise ExportFailed("could not export the module: " + "; ".join(errors))
        ir.external_data.load_to_model(model)
    opset_used = model.opset_imports.get("", 0)
    checks = []
    if parity:
        checks = check_parity(module, model, _parity_inputs(args, input_names, dynamic_axes), input_names)
        failing = [(check, output) for check in checks for output in check.outputs if not output.passed]
        if failing:
            check, output = failing[0]
            raise ValidationFailed(
                f"export parity failed ({used} exporter, opset {opset_used}): output {output.name!r} "
                f"differs from torch by up to {output.max_abs_error:.3g} at input shapes {check.shapes}")
    written = None
    if path is not None:
        model_io.save(model, path, external_data=external_data)
        written = Path(path)
    return ExportResult(model, written, used, opset_used, input_names,
                        [value.name for value in model.graph.outputs], checks, notes)
