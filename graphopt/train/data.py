"""Training data for distillation: the teacher's inputs, samples along axis 0, and optional labels.

A text file (.txt) is one sample per line, tokenized with the model's tokenizer (graphopt.train.text).
An .npz holds one array per teacher input (every array the same number of samples) and, for
classifiers, `labels` (one class index per sample); a folder holds such .npz files, read in name
order and joined along axis 0. Checked against the teacher before any
training: names, dtypes, ranks, the sample counts, the labels' length.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import onnx_ir as ir

from graphopt.errors import InputError
from graphopt.runtime import inputs as input_io

LABELS = "labels"


@dataclasses.dataclass
class TrainingSet:
    arrays: dict[str, np.ndarray]  # by the teacher's input names, samples along axis 0
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))

    def batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        return {name: array[indices] for name, array in self.arrays.items()}

    def subset(self, indices: np.ndarray) -> TrainingSet:
        return TrainingSet(self.batch(indices), None if self.labels is None else self.labels[indices])

    def split(self, fraction: float, seed: int) -> tuple[TrainingSet, TrainingSet]:
        """(training, held out): a seeded `fraction` of the samples held out, at least one each side."""
        order = np.random.default_rng(seed).permutation(len(self))
        count = min(max(1, round(fraction * len(self))), len(self) - 1)
        return self.subset(np.sort(order[count:])), self.subset(np.sort(order[:count]))


def load(source: str | os.PathLike | dict[str, np.ndarray], teacher: ir.Model, *,
         tokenizer: str | os.PathLike | None = None, max_length: int = 128) -> TrainingSet:
    """The training set from an .npz path, a folder of them, a text file (tokenized with `tokenizer`) or
    {name: array}, checked against the teacher's inputs."""
    where = str(source) if isinstance(source, (str, os.PathLike)) else "the training data"
    if isinstance(source, (str, os.PathLike)) and Path(source).suffix == ".txt":
        from graphopt.train.text import tokenize_file

        dtypes = {info.name: np.dtype(info.dtype) for info in input_io.signature(teacher)}
        arrays = tokenize_file(source, tokenizer, dtypes, max_length)
    elif isinstance(source, (str, os.PathLike)):
        arrays = _folder(Path(source)) if Path(source).is_dir() else input_io.read_npz(source)
    else:
        arrays = {name: np.asarray(array) for name, array in source.items()}
    names = [info.name for info in input_io.signature(teacher)]
    missing = [name for name in names if name not in arrays]
    if missing:
        raise InputError(f"{where}: no array for the teacher's input {missing[0]!r} (has: "
                         f"{', '.join(sorted(arrays)) or 'nothing'}; the teacher takes {', '.join(names)})")
    inputs = {name: arrays[name] for name in names}
    counts = {name: array.shape[0] if array.ndim else 0 for name, array in inputs.items()}
    if len(set(counts.values())) != 1 or 0 in counts.values():
        raise InputError(f"{where}: every input needs the same number of samples along axis 0, got "
                         + ", ".join(f"{name} {count}" for name, count in counts.items()))
    data = TrainingSet(inputs, arrays.get(LABELS))
    input_io.check_feeds(teacher, data.batch(np.arange(min(2, len(data)))), f"{where} (its first samples)")
    if data.labels is not None:
        labels = data.labels
        if labels.ndim != 1 or len(labels) != len(data) or not np.issubdtype(labels.dtype, np.integer):
            raise InputError(f"{where}: labels must be one class index per sample ({len(data)} integers), got "
                             f"{labels.dtype} {list(labels.shape)}")
    return data


def _folder(folder: Path) -> dict[str, np.ndarray]:
    files = sorted(folder.glob("*.npz"))
    if not files:
        raise InputError(f"{folder}: no .npz files")
    parts = [input_io.read_npz(file) for file in files]
    for file, part in zip(files[1:], parts[1:]):
        if set(part) != set(parts[0]):
            raise InputError(f"{file}: holds {', '.join(sorted(part))}, {files[0].name} holds "
                             f"{', '.join(sorted(parts[0]))}: every file needs the same arrays")
    try:
        return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
    except ValueError as error:
        raise InputError(f"{folder}: the files' arrays do not join along axis 0 ({error})") from None
