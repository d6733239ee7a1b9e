"""The teacher: any ONNX model, run by ONNX Runtime, online (per batch, on exactly what the student
sees) or offline (its outputs computed once into memory-mapped files and reused every epoch).

Its session spins no threads while idle, so torch has the cores between teacher runs.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from graphopt import model as model_io
from graphopt.runtime.providers import SessionConfig, create_session
from graphopt.train.data import TrainingSet

CHUNK = 256  # samples per teacher run when the outputs are cached


class Teacher:
    """`hidden`: names of inner values the teacher also returns, after its own outputs (the hidden states
    a --drop-layers student matches)."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None, hidden: list[str] = ()) -> None:
        self.path = Path(path)
        self.model = model_io.load(self.path)
        config = SessionConfig(threads=threads, spinning=False)
        source = self.path
        if hidden:
            source = model_io.load(self.path)
            values = {value.name: value for node in source.graph for value in node.outputs}
            source.graph.outputs.extend(values[name] for name in hidden)
        self.session = create_session(source, config, label=self.path.name)
        outputs = self.session.inner.get_outputs()
        self.output_names = [output.name for output in outputs]
        self.output_shapes = [list(output.shape) for output in outputs]

    def __call__(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(feeds)


class OfflineTargets:
    """The teacher's outputs for every sample of `data`, in .npy files under `folder`, opened
    memory-mapped; a folder written for the same teacher file and data is reused (a resumed run)."""

    def __init__(self, teacher: Teacher, data: TrainingSet, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        key = _fingerprint(teacher.path, data)
        stamp = folder / "teacher.json"
        files = [folder / f"output{index}.npy" for index in range(len(teacher.output_names))]
        if not (stamp.exists() and json.loads(stamp.read_text()).get("key") == key and all(f.exists() for f in files)):
            stamp.unlink(missing_ok=True)
            _compute(teacher, data, files)
            model_io.write_text_atomic(stamp, json.dumps({"key": key, "outputs": teacher.output_names}))
        self.outputs = [np.load(file, mmap_mode="r") for file in files]

    def batch(self, indices: np.ndarray) -> list[np.ndarray]:
        return [np.asarray(output[indices]) for output in self.outputs]


def _compute(teacher: Teacher, data: TrainingSet, files: list[Path]) -> None:
    written = None
    for start in range(0, len(data), CHUNK):
        outputs = teacher(data.batch(np.arange(start, min(start + CHUNK, len(data)))))
        if written is None:
            written = [np.lib.format.open_memmap(file.with_suffix(".partial.npy"), mode="w+", dtype=output.dtype,
                                                 shape=(len(data), *output.shape[1:]))
                       for file, output in zip(files, outputs)]
        for target, output in zip(written, outputs):
            target[start:start + len(output)] = output
    for target, file in zip(written, files):
        target.flush()
        os.replace(file.with_suffix(".partial.npy"), file)


def _fingerprint(path: Path, data: TrainingSet) -> str:
    digest = hashlib.sha256(path.read_bytes())
    for name, array in data.arrays.items():
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()
