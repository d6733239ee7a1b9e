"""Model inputs: synthesized from the signature, or loaded from an .npz file and checked.

Symbolic dims are resolved by name, so `input_ids[batch, seq]` and `attention_mask[batch, seq]`
agree; `--shape name=1x128` fixes one input's shape. Integer inputs stay in a range the model
accepts: ids feeding a Gather on an embedding table stay below its row count, attention masks
are ones, token type ids zeros, and `--input-range name=lo:hi` overrides any of it.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import onnx_ir as ir

from graphopt.errors import InputError

DEFAULT_DIMS = {"batch": 2, "sequence": 16, "other": 8}
SECOND_DIMS = {"batch": 1, "sequence": 7, "other": 5}
_SEQUENCE_WORDS = ("seq", "len", "token", "time", "step", "past", "total")
_BATCH_WORDS = ("batch", "n", "b", "bs")


@dataclasses.dataclass(frozen=True)
class InputInfo:
    name: str
    dtype: np.dtype
    dims: tuple[int | str | None, ...] | None


def signature(model: ir.Model) -> list[InputInfo]:
    """The graph inputs a caller must feed (initializer-backed inputs are optional, left out)."""
    infos = []
    for value in model.graph.inputs:
        if value.const_value is not None:
            continue
        if value.dtype is None:
            raise InputError(f"input {value.name!r} has no element type")
        dims = None
        if value.shape is not None:
            dims = tuple(dim if isinstance(dim, int) else dim.value for dim in value.shape.dims)
        infos.append(InputInfo(value.name, np.dtype(value.dtype.numpy()), dims))
    return infos


def parse_shapes(specs: list[str] | tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    """`name=1x128` strings into {name: (1, 128)}; `name=` (empty) is a scalar."""
    shapes = {}
    for spec in specs:
        name, sep, text = spec.partition("=")
        try:
            if not sep or not name:
                raise ValueError
            shapes[name] = tuple(int(part) for part in text.split("x")) if text else ()
        except ValueError:
            raise InputError(f"--shape {spec!r} must look like name=1x128") from None
        if any(dim < 0 for dim in shapes[name]):
            raise InputError(f"--shape {spec!r} has a negative dimension")
    return shapes


def parse_ranges(specs: list[str] | tuple[str, ...]) -> dict[str, tuple[float, float]]:
    """`name=lo:hi` strings into {name: (lo, hi)} (hi exclusive for integers)."""
    ranges = {}
    for spec in specs:
        name, sep, text = spec.partition("=")
        low, colon, high = text.partition(":")
        try:
            if not sep or not colon or not name:
                raise ValueError
            ranges[name] = (float(low), float(high))
        except ValueError:
            raise InputError(f"--input-range {spec!r} must look like name=0:30522") from None
        if ranges[name][0] >= ranges[name][1]:
            raise InputError(f"--input-range {spec!r}: low must be below high")
    return ranges


def _dim_role(symbol: str | None, position: int) -> str:
    text = (symbol or "").lower()
    if any(word in text for word in _SEQUENCE_WORDS):
        return "sequence"
    if text in _BATCH_WORDS or "batch" in text or (not text and position == 0):
        return "batch"
    return "other"


def resolve_dims(inputs: list[InputInfo], shapes: dict[str, tuple[int, ...]],
                 defaults: dict[str, int] = DEFAULT_DIMS) -> dict[str, tuple[int, ...]]:
    """Concrete shapes for every input; a symbol gets one value across all inputs."""
    unknown = set(shapes) - {info.name for info in inputs}
    if unknown:
        valid = ", ".join(info.name for info in inputs)
        raise InputError(f"--shape names unknown input {sorted(unknown)[0]!r} (inputs: {valid})")
    symbols: dict[str, int] = {}
    for info in inputs:
        if info.name in shapes and info.dims is not None:
            given = shapes[info.name]
            if len(given) != len(info.dims):
                raise InputError(f"--shape {info.name}: rank {len(given)} but the model expects "
                                 f"rank {len(info.dims)} {list(info.dims)}")
            for dim, value in zip(info.dims, given):
                if isinstance(dim, int) and dim != value:
                    raise InputError(f"--shape {info.name}: dimension {dim} is fixed, got {value}")
                if isinstance(dim, str):
                    symbols.setdefault(dim, value)
    resolved = {}
    for info in inputs:
        if info.name in shapes:
            resolved[info.name] = shapes[info.name]
            continue
        if info.dims is None:
            raise InputError(f"input {info.name!r} has an unknown rank: give --shape {info.name}=…")
        concrete = []
        for position, dim in enumerate(info.dims):
            if isinstance(dim, int):
                concrete.append(dim)
            elif dim:
                concrete.append(symbols.setdefault(dim, defaults[_dim_role(dim, position)]))
            else:
                concrete.append(defaults[_dim_role(None, position)])
        resolved[info.name] = tuple(concrete)
    return resolved


def dynamic(inputs: list[InputInfo]) -> bool:
    """Whether any input has a dimension that is not fixed."""
    return any(info.dims is None or any(not isinstance(d, int) for d in info.dims) for info in inputs)


def _embedding_rows(model: ir.Model) -> dict[str, int]:
    """Inputs used (directly or through Cast/Reshape/…) as Gather indices into a constant table."""
    rows: dict[str, int] = {}
    passthrough = {"Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity"}
    for value in model.graph.inputs:
        frontier, seen = [value], set()
        while frontier:
            current = frontier.pop()
            if current in seen:
                continue
            seen.add(current)
            for user, index in current.uses():
                if user.op_type == "Gather" and index == 1:
                    table = user.inputs[0]
                    if table is not None and table.const_value is not None and table.shape is not None:
                        axis = user.attributes.get_int("axis", 0)
                        size = table.shape.dims[axis]
                        if isinstance(size, int):
                            rows[value.name] = min(rows.get(value.name, size), size)
                elif user.op_type in passthrough:
                    frontier.extend(user.outputs)
    return rows


def integer_ranges(model: ir.Model, overrides: dict[str, tuple[float, float]]) -> dict[str, tuple[int, int]]:
    """[low, high) for every integer input: overrides, embedding sizes, masks, type ids."""
    rows = _embedding_rows(model)
    ranges = {}
    for info in signature(model):
        if info.name in overrides:
            low, high = overrides[info.name]
            ranges[info.name] = (int(low), int(high))
        elif info.name in rows:
            ranges[info.name] = (0, rows[info.name])
        elif "mask" in info.name.lower():
            ranges[info.name] = (1, 2)
        elif "type" in info.name.lower():
            ranges[info.name] = (0, 1)
        else:
            ranges[info.name] = (0, 4)
    return ranges


def synthesize(model: ir.Model, shapes: dict[str, tuple[int, ...]] | None = None,
               ranges: dict[str, tuple[float, float]] | None = None, *, seed: int = 0,
               defaults: dict[str, int] = DEFAULT_DIMS) -> dict[str, np.ndarray]:
    """Random inputs that respect dtypes, shapes and the valid ranges of integer inputs."""
    inputs = signature(model)
    ranges = ranges or {}
    unknown = set(ranges) - {info.name for info in inputs}
    if unknown:
        raise InputError(f"--input-range names unknown input {sorted(unknown)[0]!r}")
    concrete = resolve_dims(inputs, shapes or {}, defaults)
    int_ranges = integer_ranges(model, ranges)
    rng = np.random.default_rng(seed)
    feeds = {}
    for info in inputs:
        shape = concrete[info.name]
        kind = info.dtype.kind
        if kind == "b":
            feeds[info.name] = rng.random(shape) > 0.5
        elif kind in "iu":
            low, high = int_ranges[info.name]
            feeds[info.name] = rng.integers(low, high, size=shape).astype(info.dtype)
        elif kind in "fc":
            low, high = ranges.get(info.name, (None, None))
            values = (rng.uniform(low, high, size=shape) if low is not None
                      else rng.standard_normal(shape))
            feeds[info.name] = values.astype(info.dtype)
        else:
            raise InputError(f"input {info.name!r} has dtype {info.dtype}, which graphopt cannot "
                             "synthesize; pass --inputs FILE.npz")
    return feeds


def load_npz(path: str | os.PathLike, model: ir.Model) -> dict[str, np.ndarray]:
    """Inputs from an .npz with one array per input name, checked against the signature."""
    path = Path(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except Exception as error:
        raise InputError(f"{path}: not a readable .npz file ({error})") from None
    with archive:
        arrays = {name: archive[name] for name in archive.files}
    feeds = {}
    for info in signature(model):
        if info.name not in arrays:
            raise InputError(f"{path}: no array for input {info.name!r} "
                             f"(has: {', '.join(sorted(arrays)) or 'nothing'})")
        array = arrays[info.name]
        if array.dtype != info.dtype:
            raise InputError(f"{path}: {info.name!r} is {array.dtype}, the model expects {info.dtype}")
        if info.dims is not None:
            if array.ndim != len(info.dims):
                raise InputError(f"{path}: {info.name!r} has rank {array.ndim}, the model expects "
                                 f"rank {len(info.dims)} {list(info.dims)}")
            for dim, size in zip(info.dims, array.shape):
                if isinstance(dim, int) and dim != size:
                    raise InputError(f"{path}: {info.name!r} has shape {list(array.shape)}, "
                                     f"the model fixes {list(info.dims)}")
        feeds[info.name] = array
    return feeds
