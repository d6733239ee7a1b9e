"""Calibration data: the samples the quantizers' statistics are measured on.

Three forms, all checked against the model's inputs (names, dtypes, ranks, fixed dims, embedding
indices) before any sample runs, so a bad set fails in a second, not after an hour:
  an .npz       one array per input name, the samples along axis 0: an array of the input's rank
                gives sample i as array[i:i+1] (batch 1), one rank more gives array[i];
  a folder      of .npz files, each one input set at its own shapes (sentences of their own lengths);
  an iterable   (API) of {name: array} input sets; a one-shot iterator is read into a list, since
                the statistics pass over the data once per chunk of exposed values.
Samples are produced one at a time (a folder's files are read as they are reached, an .npz is held
once as given), so the statistics' memory stays flat however many samples there are.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import onnx_ir as ir

from graphopt.errors import InputError
from graphopt.runtime import inputs as input_io


class CalibrationData:
    """A re-iterable, checked set of input sets; len() is the number of samples."""

    def __init__(self, model: ir.Model, source: str | os.PathLike | Iterable[dict]) -> None:
        untensored = [value for value in model.graph.inputs if value.const_value is None
                      and value.type is not None and not isinstance(value.type, ir.TensorType)]
        if untensored:
            raise InputError(f"input {untensored[0].name!r} is a {untensored[0].type}, not a tensor: calibration "
                             "data holds tensors, so this model cannot be calibrated")
        self._model = model
        self._folder: list[Path] | None = None
        self._arrays: dict[str, np.ndarray] | None = None
        self._sets: list[dict[str, np.ndarray]] | None = None
        self.source = str(source) if isinstance(source, (str, os.PathLike)) else "the calibration data"
        if isinstance(source, (str, os.PathLike)):
            path = Path(source)
            if path.is_dir():
                self._folder = sorted(path.glob("*.npz"))
                for file in self._folder:
                    input_io.load_npz(file, model)
                self._count = len(self._folder)
            else:
                self._arrays = _stacked(model, path)
                self._count = len(next(iter(self._arrays.values()))) if self._arrays else 0
        else:
            self._sets = [input_io.check_feeds(model, {name: np.asarray(array) for name, array in item.items()},
                                               f"calibration set {index}")
                          for index, item in enumerate(_items(source))]
            self._count = len(self._sets)
        if self._count == 0:
            raise InputError(f"{self.source}: no calibration samples")

    def __len__(self) -> int:
        return self._count

    def split_off(self, count: int) -> list[dict[str, np.ndarray]]:
        """The last `count` samples, as a list, and no longer part of this data (a held-out slice:
        what the statistics never saw judges the result)."""
        if not 0 < count < self._count:
            raise ValueError(f"cannot hold out {count} of {self._count} samples")
        held_out = list(itertools.islice(self, self._count - count, None))
        self._count -= count
        return held_out

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        if self._sets is not None:
            yield from self._sets[:self._count]
        elif self._folder is not None:
            for file in self._folder[:self._count]:
                yield input_io.load_npz(file, self._model)
        else:
            ranks = _ranks(self._model)
            for index in range(self._count):
                yield {name: _sample(array, index, ranks[name]) for name, array in self._arrays.items()}


def _ranks(model: ir.Model) -> dict[str, int]:
    return {info.name: len(info.dims) if info.dims is not None else -1 for info in input_io.signature(model)}


def _items(source) -> list:
    if isinstance(source, dict):
        raise InputError("calibration data: give an iterable of {input name: array} sets, not one set")
    try:
        return list(source)
    except TypeError:
        raise InputError(f"calibration data: expected an .npz, a folder of .npz or an iterable of input "
                         f"sets, got {type(source).__name__}") from None


def _stacked(model: ir.Model, path: Path) -> dict[str, np.ndarray]:
    """The .npz's arrays, samples along axis 0; every sample checked as the input set it will be."""
    arrays = input_io.read_npz(path)
    infos = input_io.signature(model)
    ranks = _ranks(model)
    counts = set()
    for info in infos:
        array = arrays.get(info.name)
        if array is None:
            raise InputError(f"{path}: no array for input {info.name!r} (has: {', '.join(sorted(arrays)) or 'nothing'})")
        if array.ndim == 0:
            raise InputError(f"{path}: {info.name!r} is a scalar; calibration arrays hold samples along axis 0")
        counts.add(len(array))
    if len(counts) > 1:
        raise InputError(f"{path}: the inputs hold different numbers of samples along axis 0 ({sorted(counts)})")
    stacked = {info.name: arrays[info.name] for info in infos}
    for index in range(len(next(iter(stacked.values()))) if stacked else 0):
        input_io.check_feeds(model, {name: _sample(array, index, ranks[name]) for name, array in stacked.items()},
                             f"{path} sample {index}")
    return stacked


def _sample(array: np.ndarray, index: int, rank: int) -> np.ndarray:
    """Sample `index` of an array holding samples along axis 0: array[i] when the array has one
    axis more than the input, else array[i:i+1] (a batch of one)."""
    return array[index] if array.ndim == rank + 1 else array[index:index + 1]
