"""The distillation loop: a torch student trained against the teacher's outputs, seeded and
deterministic on the CPU, judged each epoch on held-out samples by its agreement with the teacher,
checkpointed each epoch (written atomically: Ctrl-C leaves the last one usable) and resumable.

Agreement: top-1 agreement for class scores (kl), the mean cosine for embeddings (mse, cosine); the
best epoch's weights are the result, and training stops after `patience` epochs without a better one.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from graphopt.errors import InputError
from graphopt.options import between, check_fields, option
from graphopt.train.data import TrainingSet
from graphopt.train.losses import LOSSES, MASK, default_loss, distillation_loss
from graphopt.train.teacher import OfflineTargets, Teacher

CHECKPOINT = "checkpoint.pt"
SCRATCH_LR, TRAINED_LR = 1e-3, 1e-4  # the default learning rates: a student from scratch, one from trained weights
Progress = Callable[[int, int, float], None]  # (batches done, batches in the epoch, running loss)


def _positive(value) -> str:
    return "" if value > 0 else "it must be positive"


@dataclasses.dataclass
class DistillSettings:
    """How the student is trained (declared once: the distill command's flags, the API's keywords, the docs)."""

    epochs: int = option(10, "Passes over the training data, at most (early stopping may end sooner).",
                         check=_positive)
    batch_size: int = option(64, "Samples per training step.", check=_positive)
    lr: float | None = option(None, "AdamW's learning rate; default: 1e-3 for a --student trained from scratch, "
                                    "1e-4 for one that starts from trained weights (--student-onnx, --drop-layers).",
                              check=lambda value: "" if value is None else _positive(value))
    temperature: float = option(2.0, "The soft targets' temperature T (the kl loss is scaled by T²).",
                                check=_positive)
    alpha: float = option(0.5, "With labels in the data: the soft targets' share of the kl loss, the rest "
                               "cross-entropy on the labels.", check=between(0.0, 1.0))
    loss: str | None = option(None, "kl (class scores), mse or cosine (embeddings, hidden states); default: by "
                                    "each output's rank (2: kl, more: cosine).", choices=LOSSES)
    online: bool = option(False, "Run the teacher on every batch (on exactly what the student sees); default: its "
                                 "outputs computed once, cached memory-mapped and reused every epoch.",
                          flag="--online/--offline")
    held_out: float = option(0.1, "The share of the data held out to judge each epoch (early stopping) and the "
                                  "result.", check=between(0.0, 1.0, open_low=True, open_high=True))
    patience: int = option(3, "Epochs without a better held-out agreement before training stops.", check=_positive)
    max_minutes: float | None = option(None, "Train at most this long: no epoch starts that the last one's time says "
                                             "would end past it.", check=lambda value: "" if value is None
                                       else _positive(value))
    seed: int = option(0, "Seeds the split, the batch order and the student's initialization.")
    drop_layers: int | None = option(None, "The student is the teacher keeping every K-th layer (0, K, 2K…), "
                                           "initialised with its weights, as DistilBERT was made.",
                                     check=lambda value: "" if value is None or value >= 2 else "it must be 2 or more")
    match_layers: bool = option(False, "--drop-layers: also match each kept layer's hidden state to the teacher's "
                                       "at the same depth (a cosine loss each).",
                                flag="--match-layers/--no-match-layers")
    hard_labels_only: bool = option(False, "The baseline: train on the labels alone (cross-entropy), no teacher.",
                                    flag="--hard-labels-only/--with-teacher")

    def check(self) -> None:
        check_fields(self)
        if self.match_layers and self.drop_layers is None:
            raise InputError("--match-layers needs --drop-layers (the hidden states of a student made from the teacher)")


@dataclasses.dataclass
class EpochRecord:
    epoch: int
    loss: float
    agreement: float
    seconds: float
    samples_per_second: float


@dataclasses.dataclass
class DistillResult:
    history: list[EpochRecord]
    best_epoch: int
    stopped_early: bool
    losses: list[str]  # per output
    out_of_time: bool = False  # max_minutes ended it

    @property
    def agreement(self) -> float:
        return next(record.agreement for record in self.history if record.epoch == self.best_epoch)


@dataclasses.dataclass
class _State:
    """What a checkpoint holds besides the optimizer: the best weights so far and the history."""

    best: dict
    best_score: float
    best_epoch: int
    history: list[EpochRecord]


class _Run:
    def __init__(self, student, teacher: Teacher, data: TrainingSet, settings: DistillSettings, folder: Path) -> None:
        import torch

        self.student, self.teacher, self.settings = student, teacher, settings
        self.names = list(data.arrays)
        self.train_set, self.held_out = data.split(settings.held_out, settings.seed)
        self.reference = teacher(self.held_out.arrays)
        self.losses = _losses(student, self.reference, self.held_out, self.names, settings)
        self.targets = None if settings.online or settings.hard_labels_only else \
            OfflineTargets(teacher, self.train_set, folder / "teacher-outputs")
        torch.manual_seed(settings.seed)
        self.optimizer = torch.optim.AdamW(student.parameters(), lr=settings.lr or SCRATCH_LR)

    def epoch(self, epoch: int, progress: Progress | None) -> tuple[float, float]:
        """(mean loss, held-out agreement) after one epoch, its batch order seeded by (seed, epoch)."""
        import torch

        settings, data = self.settings, self.train_set
        order = np.random.default_rng([settings.seed, epoch]).permutation(len(data))
        batches = np.array_split(order, -(-len(order) // settings.batch_size))
        total, seen = 0.0, 0
        self.student.train()
        for done, indices in enumerate(batches, 1):
            indices = np.sort(indices)
            batch = data.batch(indices)
            wanted = None if settings.hard_labels_only else \
                self.teacher(batch) if self.targets is None else self.targets.batch(indices)
            labels = None if data.labels is None else torch.from_numpy(data.labels[indices])
            mask = torch.from_numpy(batch[MASK]) if MASK in batch else None
            loss = _loss(_forward(self.student, batch, self.names), wanted, labels, self.losses, settings, mask)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            total, seen = total + loss.item() * len(indices), seen + len(indices)
            if progress is not None:
                progress(done, len(batches), total / seen)
        return total / seen, _agreement(self.student, self.held_out, self.reference, self.names, self.losses[0])


def distill(student, teacher: Teacher, data: TrainingSet, settings: DistillSettings, folder: Path, *,
            resume: bool = False, progress: Progress | None = None) -> DistillResult:
    """Train `student` (a torch.nn.Module taking the teacher's inputs in order) in place; its weights
    end as the best epoch's. `folder` holds the checkpoint and the teacher's cached outputs."""
    settings.check()
    if settings.hard_labels_only and data.labels is None:
        raise InputError("training on hard labels only needs labels in the data")
    run = _Run(student, teacher, data, settings, folder)  # checks the student before anything is written
    folder.mkdir(parents=True, exist_ok=True)
    state = _State({key: value.detach().clone() for key, value in student.state_dict().items()}, -2.0, 0, [])
    checkpoint = folder / CHECKPOINT
    if resume and checkpoint.exists():
        state = _restore(checkpoint, student, run.optimizer)
    stopped = out_of_time = False
    for epoch in range(len(state.history) + 1, settings.epochs + 1):
        if state.best_epoch and epoch - state.best_epoch > settings.patience:
            stopped = True
            break
        spent = sum(record.seconds for record in state.history)
        if settings.max_minutes and state.history and spent + state.history[-1].seconds > settings.max_minutes * 60:
            out_of_time = True
            break
        start = time.perf_counter()
        loss, agreement = run.epoch(epoch, progress)
        seconds = time.perf_counter() - start
        state.history.append(EpochRecord(epoch, loss, agreement, seconds, len(run.train_set) / seconds))
        if agreement > state.best_score:
            state.best = {key: value.detach().clone() for key, value in student.state_dict().items()}
            state.best_score, state.best_epoch = agreement, epoch
        _save(checkpoint, student, run.optimizer, state)
    student.load_state_dict(state.best)
    student.eval()
    return DistillResult(state.history, state.best_epoch, stopped, run.losses, out_of_time)


def _forward(student, batch: dict[str, np.ndarray], names: list[str]) -> list:
    import torch

    outputs = student(*(torch.from_numpy(np.ascontiguousarray(batch[name])) for name in names))
    return list(outputs) if isinstance(outputs, (tuple, list)) else [outputs]


def _losses(student, reference: list[np.ndarray], held_out: TrainingSet, names: list[str],
            settings: DistillSettings) -> list[str]:
    """Each output's loss, once the student's outputs are checked against the teacher's (count, shape)."""
    import torch

    with torch.no_grad():
        student.eval()
        outputs = _forward(student, held_out.batch(np.arange(min(2, len(held_out)))), names)
    if len(outputs) != len(reference):
        raise InputError(f"the student returns {len(outputs)} output(s), the teacher {len(reference)}")
    for index, (mine, theirs) in enumerate(zip(outputs, reference)):
        if list(mine.shape[1:]) != list(theirs.shape[1:]):
            raise InputError(f"output {index}: the student's is {list(mine.shape)}, the teacher's "
                             f"{[len(mine), *theirs.shape[1:]]}: they must match to be distilled")
    return [settings.loss or default_loss(theirs.shape) for theirs in reference]


def _loss(outputs: list, wanted: list[np.ndarray] | None, labels, losses: list[str], settings: DistillSettings,
          mask=None):
    import torch.nn.functional as F
    import torch

    if wanted is None:  # the hard-label baseline
        return F.cross_entropy(outputs[0], labels)
    total = 0.0
    for output, target, kind in zip(outputs, wanted, losses):
        total = total + distillation_loss(kind, output, torch.from_numpy(np.asarray(target)), labels=labels,
                                          alpha=settings.alpha, temperature=settings.temperature, mask=mask)
    return total


def _agreement(student, held_out: TrainingSet, reference: list[np.ndarray], names: list[str], kind: str) -> float:
    import torch

    student.eval()
    with torch.no_grad():
        output = _forward(student, held_out.arrays, names)[0].numpy()
    return agreement(output, reference[0], kind, held_out.arrays.get(MASK))


def agreement(output: np.ndarray, reference: np.ndarray, kind: str, mask: np.ndarray | None = None) -> float:
    """How far a student's first output agrees with the teacher's: top-1 agreement for class scores
    (kl), else the mean cosine per sample (`sample_cosines`)."""
    if kind == "kl":
        return float(np.mean(output.argmax(-1) == reference.argmax(-1)))
    return float(np.mean(sample_cosines(output, reference, mask)))


def sample_cosines(output: np.ndarray, reference: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Each sample's cosine between the student's output and the teacher's; hidden states [batch, tokens,
    hidden] with a text model's attention mask are mean-pooled over the real tokens first (a sentence
    embedding, as sentence-transformers pools them)."""
    if mask is not None and output.ndim == 3 and output.shape[:2] == mask.shape:
        weights = mask[..., None].astype(np.float64)
        count = np.maximum(weights.sum(1), 1.0)
        output, reference = (output * weights).sum(1) / count, (reference * weights).sum(1) / count
    mine, theirs = output.reshape(len(output), -1), reference.reshape(len(reference), -1)
    norms = np.linalg.norm(mine, axis=1) * np.linalg.norm(theirs, axis=1)
    return np.sum(mine * theirs, axis=1) / np.maximum(norms, 1e-12)


def _save(path: Path, student, optimizer, state: _State) -> None:
    import torch

    staged = path.with_suffix(".partial")
    torch.save({"student": student.state_dict(), "optimizer": optimizer.state_dict(),
                "state": dataclasses.asdict(state), "torch_rng": torch.get_rng_state()}, staged)
    os.replace(staged, path)


def _restore(path: Path, student, optimizer) -> _State:
    import torch

    saved = torch.load(path, weights_only=True)
    student.load_state_dict(saved["student"])
    optimizer.load_state_dict(saved["optimizer"])
    torch.set_rng_state(saved["torch_rng"])
    state = saved["state"]
    return _State(state["best"], state["best_score"], state["best_epoch"],
                  [EpochRecord(**record) for record in state["history"]])
