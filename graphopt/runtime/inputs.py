"""Model inputs: synthesized from the signature, or loaded from an .npz file and checked.

Symbolic dims are resolved by name, so `input_ids[batch, seq]` and `attention_mask[batch, seq]`
agree; `--shape name=1x128` fixes one input's shape. Integer inputs stay in a range the model
accepts: ids feeding a Gather on an embedding table stay below its row count, attention masks
are ones, token type ids zeros, and `--input-range name=lo:hi` overrides any of it.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
from pathlib import Path

import numpy as np
import onnx_ir as ir

from graphopt.errors import InputError

DEFAULT_DIMS = {"batch": 2, "sequence": 16, "other": 8, "spatial": 64}
SECOND_DIMS = {"batch": 1, "sequence": 7, "other": 5, "spatial": 96}
_SEQUENCE_WORDS = ("seq", "len", "token", "time", "step", "past", "total")
_BATCH_WORDS = ("batch", "n", "b", "bs")
_MAX_SYNTHESIZED_BYTES = 4 << 30


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
            # -1 and 0 are how old exporters wrote "dynamic"; "?" names no dimension (paddle2onnx's [-1, 3, ?, ?])
            dims = tuple((dim if dim > 0 else None) if isinstance(dim, int) else
                         (None if dim.value in ("?", "") else dim.value) for dim in value.shape.dims)
        infos.append(InputInfo(value.name, np.dtype(value.dtype.numpy()), dims))
    return infos


def same_inputs(reference: ir.Model, candidate: ir.Model, names: tuple[str, str] = ("the reference", "the candidate")
                 ) -> None:
    """Both models take the same input names, dtypes and ranks (an unknown rank matches any)."""
    want = {info.name: info for info in signature(reference)}
    got = {info.name: info for info in signature(candidate)}

    def text(info) -> str:
        return "absent" if info is None else f"{info.dtype} rank {'?' if info.dims is None else len(info.dims)}"

    for name in sorted(want.keys() | got.keys()):
        a, b = want.get(name), got.get(name)
        if a is None or b is None or a.dtype != b.dtype or (
                a.dims is not None and b.dims is not None and len(a.dims) != len(b.dims)):
            raise InputError(f"the models take different inputs: {name!r} is {text(a)} in {names[0]}, "
                             f"{text(b)} in {names[1]}")


def parse_shapes(specs: list[str] | tuple[str, ...], flag: str = "--shape") -> dict[str, tuple[int, ...]]:
    """`name=1x128` strings into {name: (1, 128)}; `name=` (empty) is a scalar."""
    shapes = {}
    for spec in specs:
        name, sep, text = spec.partition("=")
        try:
            if not sep or not name:
                raise ValueError
            shapes[name] = tuple(int(part) for part in text.split("x")) if text else ()
        except ValueError:
            raise InputError(f"{flag} {spec!r} must look like name=1x128") from None
        if any(dim < 0 for dim in shapes[name]):
            raise InputError(f"{flag} {spec!r} has a negative dimension")
        if 0 in shapes[name]:
            raise InputError(f"{flag} {spec!r}: a dimension of 0 is an empty tensor, with nothing to run or compare")
    return shapes


def parse_sweep(specs: list[str] | tuple[str, ...]) -> list[dict[str, tuple[int, ...]]]:
    """`--sweep` specs into shape sets: `input_ids=1x32,1x128` (an input's shapes) or `seq=32,128`
    (a named dimension's sizes, for every input that has it); several specs multiply."""
    axes: dict[str, list[tuple[int, ...]]] = {}
    for spec in specs:
        name, sep, text = spec.partition("=")
        name = name.strip()
        try:
            if not sep or not name or not text.strip():
                raise ValueError
            values = [tuple(int(part) for part in item.strip().split("x")) for item in text.split(",")]
        except ValueError:
            raise InputError(f"--sweep {spec!r} must look like input_ids=1x32,1x128 or seq=32,128") from None
        if any(dim < 0 for value in values for dim in value):
            raise InputError(f"--sweep {spec!r} has a negative dimension")
        if any(dim == 0 for value in values for dim in value):
            raise InputError(f"--sweep {spec!r}: a dimension of 0 is an empty tensor, with nothing to run or compare")
        if name in axes:
            raise InputError(f"--sweep names {name!r} twice")
        axes[name] = list(dict.fromkeys(values))
    if not axes:
        return []
    return [dict(zip(axes, combination)) for combination in itertools.product(*axes.values())]


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
        if not all(map(math.isfinite, ranges[name])):
            raise InputError(f"--input-range {spec!r}: both ends must be finite numbers")
        if ranges[name][0] >= ranges[name][1]:
            raise InputError(f"--input-range {spec!r}: low must be below high")
    return ranges


def _dim_role(symbol: str | None, position: int, dims: tuple = ()) -> str:
    """batch, sequence, spatial (an image's height or width: [N, C, H, W] with 1, 3 or 4 channels
    fixed; a few pixels would not survive a CNN's downsampling) or other."""
    text = (symbol or "").lower()
    if any(word in text for word in _SEQUENCE_WORDS):
        return "sequence"
    if text in _BATCH_WORDS or "batch" in text or position == 0:
        return "batch"
    if len(dims) == 4 and position >= 2 and dims[1] in (1, 3, 4):
        return "spatial"
    return "other"


def resolve_dims(inputs: list[InputInfo], shapes: dict[str, tuple[int, ...]],
                 defaults: dict[str, int] = DEFAULT_DIMS,
                 symbols: dict[str, int] | None = None) -> dict[str, tuple[int, ...]]:
    """Concrete shapes for every input; a symbol gets one value across all inputs.

    `symbols` fixes named dimensions (`seq=128`) for every input that uses them; given shapes
    that disagree about a shared symbol, or with `symbols`, are an error before any run.
    """
    unknown = set(shapes) - {info.name for info in inputs}
    if unknown:
        valid = ", ".join(info.name for info in inputs)
        raise InputError(f"--shape names unknown input {sorted(unknown)[0]!r} (inputs: {valid})")
    known_symbols = {dim for info in inputs for dim in info.dims or () if isinstance(dim, str) and dim}
    stray = set(symbols or {}) - known_symbols
    if stray:
        raise InputError(f"{sorted(stray)[0]!r} is neither an input nor a named dimension of one "
                         f"(inputs: {', '.join(info.name for info in inputs)}; dimensions: "
                         f"{', '.join(sorted(known_symbols)) or 'none'})")
    bound: dict[str, tuple[int, str]] = {name: (value, f"{name}={value}") for name, value in (symbols or {}).items()}
    for info in inputs:
        if info.name in shapes and info.dims is not None:
            given = shapes[info.name]
            if len(given) != len(info.dims):
                raise InputError(f"--shape {info.name}: rank {len(given)} but the model expects "
                                 f"rank {len(info.dims)} {list(info.dims)}")
            for dim, value in zip(info.dims, given):
                if isinstance(dim, int) and dim != value:
                    raise InputError(f"--shape {info.name}: dimension {dim} is fixed, got {value}")
                if isinstance(dim, str) and dim:
                    source = f"{info.name}={'x'.join(map(str, given))}"
                    earlier = bound.setdefault(dim, (value, source))
                    if earlier[0] != value:
                        raise InputError(f"shapes disagree on dimension {dim!r}: {earlier[1]} makes it "
                                         f"{earlier[0]}, {source} makes it {value}")
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
                concrete.append(bound.setdefault(dim, (defaults[_dim_role(dim, position, info.dims)], ""))[0])
            else:
                concrete.append(defaults[_dim_role(None, position, info.dims)])
        resolved[info.name] = tuple(concrete)
    return resolved


def check_consistent(inputs: list[InputInfo], feeds: dict[str, np.ndarray], source: str) -> None:
    """Arrays given by the user agree on every named dimension they share."""
    seen: dict[str, tuple[int, str]] = {}
    for info in inputs:
        array = feeds.get(info.name)
        if array is None or info.dims is None or array.ndim != len(info.dims):
            continue
        for dim, size in zip(info.dims, array.shape):
            if isinstance(dim, str) and dim:
                earlier = seen.setdefault(dim, (size, info.name))
                if earlier[0] != size:
                    raise InputError(f"{source}: inputs disagree on dimension {dim!r}: {earlier[1]!r} has "
                                     f"{earlier[0]}, {info.name!r} has {size}")


def dynamic(inputs: list[InputInfo]) -> bool:
    """Whether any input has a dimension that is not fixed."""
    return any(info.dims is None or any(not isinstance(d, int) for d in info.dims) for info in inputs)


@dataclasses.dataclass(frozen=True)
class _Table:
    rows: int
    name: str


def _embedding_tables(model: ir.Model) -> dict[str, _Table]:
    """Inputs used (directly or through Cast/Reshape/…) as Gather indices into a constant table."""
    tables: dict[str, _Table] = {}
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
                        if isinstance(size, int) and (value.name not in tables or size < tables[value.name].rows):
                            tables[value.name] = _Table(size, table.name or "")
                elif user.op_type in passthrough:
                    frontier.extend(user.outputs)
    return tables


def check_index_ranges(model: ir.Model, feeds: dict[str, np.ndarray], source: str) -> None:
    """Integer inputs that index an embedding table stay inside it (ONNX Runtime fails otherwise)."""
    for name, table in _embedding_tables(model).items():
        array = feeds.get(name)
        if array is None or array.size == 0 or array.dtype.kind not in "iu":
            continue
        low, high = int(array.min()), int(array.max())
        if high >= table.rows or low < -table.rows:
            bad = high if high >= table.rows else low
            raise InputError(f"{source}: {name!r} holds {bad}, outside the {table.rows} rows of the "
                             f"embedding table {table.name!r} it indexes")


def integer_ranges(model: ir.Model, overrides: dict[str, tuple[float, float]]) -> dict[str, tuple[int, int]]:
    """[low, high) for every integer input: overrides, embedding sizes, masks, type ids."""
    tables = _embedding_tables(model)
    ranges = {}
    for info in signature(model):
        if info.name in overrides:
            low, high = overrides[info.name]
            ranges[info.name] = (math.ceil(low), math.ceil(high))
            if ranges[info.name][0] >= ranges[info.name][1]:
                raise InputError(f"--input-range {info.name}={low:g}:{high:g} holds no integer for this "
                                 f"{info.dtype} input (the high end is exclusive)")
            table = tables.get(info.name)
            if table is not None and (ranges[info.name][1] > table.rows or ranges[info.name][0] < -table.rows):
                raise InputError(f"--input-range {info.name}={low:g}:{high:g} reaches outside the "
                                 f"{table.rows} rows of the embedding table {table.name!r} it indexes "
                                 f"(ids {-table.rows} to {table.rows - 1})")
        elif info.name in tables:
            ranges[info.name] = (0, tables[info.name].rows)
        elif "mask" in info.name.lower():
            ranges[info.name] = (1, 2)
        elif "type" in info.name.lower():
            ranges[info.name] = (0, 1)
        else:
            ranges[info.name] = (0, 4)
    return ranges


def synthesize(model: ir.Model, shapes: dict[str, tuple[int, ...]] | None = None,
               ranges: dict[str, tuple[float, float]] | None = None, *, seed: int = 0,
               defaults: dict[str, int] = DEFAULT_DIMS,
               symbols: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """Random inputs that respect dtypes, shapes and the valid ranges of integer inputs."""
    inputs = signature(model)
    ranges = ranges or {}
    unknown = set(ranges) - {info.name for info in inputs}
    if unknown:
        raise InputError(f"--input-range names unknown input {sorted(unknown)[0]!r}")
    concrete = resolve_dims(inputs, shapes or {}, defaults, symbols)
    int_ranges = integer_ranges(model, ranges)
    rng = np.random.default_rng(seed)
    feeds = {}
    for info in inputs:
        shape = concrete[info.name]
        nbytes = math.prod(shape) * info.dtype.itemsize
        if nbytes > _MAX_SYNTHESIZED_BYTES:
            raise InputError(f"input {info.name!r} at shape {list(shape)} would take {nbytes / 2**30:.1f} GiB; "
                             f"graphopt synthesizes at most {_MAX_SYNTHESIZED_BYTES // 2**30} GiB per input")
        kind = info.dtype.kind
        if kind == "b":
            feeds[info.name] = np.asarray(rng.random(shape) > 0.5)  # a 0-d one too: ONNX Runtime takes no np.bool_
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


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every array of an .npz, by name; a missing or unreadable file is an InputError."""
    path = Path(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except Exception:
        raise InputError(f"{path}: not an .npz file of arrays (numpy.savez writes one)") from None
    with archive:
        return {name: archive[name] for name in archive.files}


def load_npz(path: str | os.PathLike, model: ir.Model) -> dict[str, np.ndarray]:
    """Inputs from an .npz with one array per input name, checked against the signature."""
    return check_feeds(model, read_npz(path), str(path))


def user_feeds(model: ir.Model, given: str | os.PathLike | dict) -> dict[str, np.ndarray]:
    """The user's inputs (an .npz path or {name: array}), checked against the model."""
    if isinstance(given, (str, os.PathLike)):
        return load_npz(given, model)
    return check_feeds(model, {name: np.asarray(array) for name, array in given.items()}, "inputs")


def check_feeds(model: ir.Model, arrays: dict[str, np.ndarray], source: str) -> dict[str, np.ndarray]:
    """One array per input with the model's dtype, rank and fixed dims, shared dims agreeing,
    embedding indices inside their table; extra arrays are ignored."""
    inputs = signature(model)
    feeds = {}
    for info in inputs:
        if info.name not in arrays:
            raise InputError(f"{source}: no array for input {info.name!r} "
                             f"(has: {', '.join(sorted(arrays)) or 'nothing'})")
        array = arrays[info.name]
        if array.dtype != info.dtype:
            raise InputError(f"{source}: {info.name!r} is {array.dtype}, the model expects {info.dtype}")
        if info.dims is not None:
            if array.ndim != len(info.dims):
                raise InputError(f"{source}: {info.name!r} has rank {array.ndim}, the model expects "
                                 f"rank {len(info.dims)} {list(info.dims)}")
            for dim, size in zip(info.dims, array.shape):
                if isinstance(dim, int) and dim != size:
                    raise InputError(f"{source}: {info.name!r} has shape {list(array.shape)}, "
                                     f"the model fixes {list(info.dims)}")
        feeds[info.name] = array
    check_consistent(inputs, feeds, source)
    check_index_ranges(model, feeds, source)
    return feeds
