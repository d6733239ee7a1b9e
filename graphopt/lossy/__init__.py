"""The one pipeline for every technique that trades accuracy: quantization, pruning and the rest.

A technique is a LossyPass (graphopt.passes.contract) plus its declarations; this package gives
every one of them the same statistics hand-over, budget, fallback, guards and report (run.py).
"""

from graphopt.lossy.budget import Budget, Judgement, default_tolerance
from graphopt.lossy.fallback import Fallback, Layer, Trial, choose
from graphopt.lossy.guards import Alternative, SizeCheck
from graphopt.lossy.result import LossyResult
from graphopt.lossy.run import Checks, Plan, Source, load, run

__all__ = ["Alternative", "Budget", "Checks", "Fallback", "Judgement", "Layer", "LossyResult", "Plan", "SizeCheck",
           "Source", "Trial", "choose", "default_tolerance", "load", "run"]
