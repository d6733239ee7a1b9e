"""The budget a lossy result is judged by: a tolerance, an accuracy score to meet, guard targets.

One place picks the tolerance: the one the user named, else the loosest the lossy passes declare
(default_tolerance; fp32 when none is lossy). With a score target — `min_cosine`
(the worst output cosine) or `max_drop` (top-1 agreement lost, for logits) — the score judges
instead of elementwise closeness (int8 hidden states differ by more than 10% in many small
elements at a cosine of 0.999), and the tolerance's other checks (top-1 under a cosine budget)
must still pass. `min_speedup` and `max_size` are the guards' thresholds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from graphopt.errors import InputError
from graphopt.options import between, check_fields, option
from graphopt.runtime.compare import Tolerance
from graphopt.runtime.compare import tolerance as named_tolerance
from graphopt.runtime.validate import ValidationResult

def default_tolerance(passes: Sequence) -> Tolerance:
    """fp32, or the loosest tolerance a lossy pass among `passes` declares (a name, or a Tolerance of
    its own): the lowest cosine, then the most elements allowed outside (int4 over int8-static over int8)."""
    declared = [pass_.tolerance if isinstance(pass_.tolerance, Tolerance) else named_tolerance(pass_.tolerance)
                for pass_ in passes if pass_.lossy]
    return min(declared, key=lambda tol: (tol.min_cosine, -tol.max_mismatch), default=named_tolerance("fp32"))


@dataclasses.dataclass(frozen=True)
class Judgement:
    """A candidate's score (higher is better) and whether it passes the tolerance's other checks."""

    score: float
    within_tolerance: bool

    def rank(self, target: float) -> float:
        """The score to compare against others: one that meets `target` yet fails the other checks
        ranks under every candidate that does not meet it (cosines and agreements lie in [-1, 1])."""
        return self.score - 2.0 if self.score >= target and not self.within_tolerance else self.score

    def meets(self, target: float) -> bool:
        return self.score >= target and self.within_tolerance


@dataclasses.dataclass(frozen=True)
class Budget:
    tolerance: str | Tolerance | None = option(None, "The tolerance validation judges at; None: the passes' "
                                               "default (default_tolerance).", cli=False)
    min_cosine: float | None = option(None, "Budget: the worst output cosine; the most sensitive layers are held "
                                      "back (float, or 8 bits under weight-only) until it is met.",
                                      check=between(-1.0, 1.0))
    max_drop: float | None = option(None, "Budget: top-1 agreement lost at most (0.01 = 1 point), for classifiers' "
                                    "logits; layers are held back until it is met.", check=between(0.0, 1.0))
    fallback: bool = option(True, "Without --min-cosine/--max-drop, a result that fails its tolerance has its most "
                            "sensitive layers held back until it passes (said in the report); --all-or-nothing "
                            "refuses it instead.", flag="--fallback/--all-or-nothing")
    min_speedup: float = option(1.0, "The latency guard: refuse a result under this many times the float model's "
                                "speed (1.0: any slower one).", check=between(0.0, 1e9, open_low=True))
    max_size: float = option(1.0, "The size guard: refuse a result whose weights are above this fraction of the "
                             "float model's (compressed, for sparsity and for techniques that buy speed; checked for "
                             "techniques that buy size, or when below 1).",
                             check=between(0.0, 1e9, open_low=True))

    def check(self) -> None:
        check_fields(self)
        if self.min_cosine is not None and self.max_drop is not None:
            raise InputError("give --min-cosine or --max-drop, not both")

    @property
    def target(self) -> float | None:
        """The score to meet, or None without a score budget."""
        if self.min_cosine is not None:
            return self.min_cosine
        return None if self.max_drop is None else 1.0 - self.max_drop

    def resolve(self, passes: Sequence) -> Tolerance:
        """The tolerance validation judges at: named (or the passes' default), loosened to the score
        budget when there is one."""
        tol = self.tolerance if isinstance(self.tolerance, Tolerance) else \
            named_tolerance(self.tolerance) if self.tolerance else default_tolerance(passes)
        if self.min_cosine is not None:
            tol = dataclasses.replace(tol, min_cosine=self.min_cosine, max_mismatch=1.0)
        if self.max_drop is not None:
            tol = dataclasses.replace(tol, min_top1=1.0 - self.max_drop, max_mismatch=1.0)
        return tol

    def judge(self, result: ValidationResult) -> Judgement:
        """The budget's measure — worst output cosine, or worst top-1 agreement, over every input set."""
        outputs = [output for run in result.input_sets for output in run.outputs]
        if self.max_drop is not None:
            agreements = [output.top1_agreement for output in outputs if output.top1_agreement is not None]
            if not agreements:
                raise InputError("--max-drop measures top-1 agreement, and no output looks like logits "
                                 "(use --min-cosine)")
            return Judgement(min(agreements), result.passed)
        return Judgement(min((output.cosine for output in outputs), default=0.0), result.passed)
