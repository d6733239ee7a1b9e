"""Distillation in PyTorch: an ONNX teacher run by ONNX Runtime, a torch student, the losses, the data
and the training loop (issue: `graphopt distill`; the CLI and the ONNX-student converter come next)."""

from graphopt.train.data import TrainingSet, load
from graphopt.train.loop import DistillResult, DistillSettings, EpochRecord, distill
from graphopt.train.teacher import OfflineTargets, Teacher

__all__ = ["DistillResult", "DistillSettings", "EpochRecord", "OfflineTargets", "Teacher", "TrainingSet", "distill",
           "load"]
