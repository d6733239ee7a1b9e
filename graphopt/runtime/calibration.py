"""Calibration data: the samples the quantizers' statistics are measured on.

Three forms, all checked against the model's inputs (names, dtypes, ranks, fixed dims, embedding
indices) before any sample runs, so a bad set fails in a second, not after an hour:
  an .npz       one array per input name: one rank more than the input gives sample i as array[i];
                at the input's rank, samples lie along its batch axis (its first unfixed dimension:
                axis 0 of images, axis 1 of an RNN state [2, batch, 128]), each a batch of one; a
                scalar input's array (a sample rate) is the same for every sample;
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
                self._arrays, self._count = _stacked(model, path)
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
            infos = input_io.signature(self._model)
            for index in range(self._count):
                yield _sample_set(infos, self._arrays, index)


def _items(source) -> list:
    if isinstance(source, dict):
        raise InputError("calibration data: give an iterable of {input name: array} sets, not one set")
    try:
        return list(source)
    except TypeError:
        raise InputError(f"calibration data: expected an .npz, a folder of .npz or an iterable of input "
                         f"sets, got {type(source).__name__}") from None


def _stacked(model: ir.Model, path: Path) -> tuple[dict[str, np.ndarray], int]:
    """The .npz's arrays and how many samples they hold along their sample axes; every sample checked
    as the input set it will be. An array for a scalar input (a sample rate) serves every sample."""
    arrays = input_io.read_npz(path)
    infos = input_io.signature(model)
    ranks = {info.name: len(info.dims) if info.dims is not None else -1 for info in infos}
    counts = set()
    for info in infos:
        array = arrays.get(info.name)
        if array is None:
            raise InputError(f"{path}: no array for input {info.name!r} (has: {', '.join(sorted(arrays)) or 'nothing'})")
        if array.ndim == 0 and ranks[info.name] != 0:
            raise InputError(f"{path}: {info.name!r} is a scalar, the model's input has rank {ranks[info.name]}; "
                             "calibration arrays hold samples along their batch axis")
        if ranks[info.name] != 0:
            counts.add(array.shape[_sample_axis(info, array)])
    if len(counts) > 1:
        raise InputError(f"{path}: the inputs hold different numbers of samples ({sorted(counts)}) along their "
                         "batch axes")
    stacked = {info.name: arrays[info.name] for info in infos}
    count = counts.pop() if counts else 1
    for index in range(count):
        input_io.check_feeds(model, _sample_set(infos, stacked, index), f"{path} sample {index}")
    return stacked, count


def _sample_axis(info: input_io.InputInfo, array: np.ndarray) -> int:
    """Where the samples lie: axis 0 of an array with one axis more than the input (samples stacked);
    else the input's batch axis — its first unfixed dimension ([2, batch, 128]: an RNN state), 0 when
    every dimension is fixed or the rank is unknown."""
    if info.dims is None or array.ndim == len(info.dims) + 1:
        return 0
    return next((axis for axis, dim in enumerate(info.dims) if not isinstance(dim, int)), 0)


def _sample_set(infos: list[input_io.InputInfo], stacked: dict[str, np.ndarray],
                index: int) -> dict[str, np.ndarray]:
    """Sample `index`: a stacked array's [i]; an array at the input's rank gives a batch of one along
    its batch axis; a scalar input's array is the same for every sample."""
    sample = {}
    for info in infos:
        name, array = info.name, stacked[info.name]
        if info.dims is not None and len(info.dims) == 0:
            sample[name] = array
        elif info.dims is not None and array.ndim == len(info.dims) + 1:
            sample[name] = array[index]
        else:
            sample[name] = np.take(array, [index], axis=_sample_axis(info, array))
    return sample
