"""Sensitivity-driven float fallback: the fewest quantized layers to keep float for a budget.

The caller measures (it runs the model through graphopt.runtime); this module only decides.
`measure(kept_float)` builds the model with those layers float and returns a score where higher
is better (min cosine, top-1 agreement). Sensitivity of a layer = the score with only that
layer float minus the score with everything quantized; layers go back to float greedily, most
sensitive first, until the score meets the budget. With a `cost` per layer (the bytes it adds when
raised) they go in order of sensitivity per cost instead: the fewest bytes rather than the fewest
layers (a 12 MB embedding table that helps a little comes after 1 MB layers that help as much).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence


@dataclasses.dataclass
class Trial:
    kept_float: tuple[str, ...]
    score: float


@dataclasses.dataclass
class Fallback:
    """What the search measured and chose."""

    budget: float
    kept_float: tuple[str, ...]
    score: float
    met: bool
    sensitivity: dict[str, float]
    trials: list[Trial]
    # the greedy path: everything quantized, then the 1, 2, … most sensitive layers float
    path: list[Trial] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def choose_float(candidates: Sequence[str], measure: Callable[[tuple[str, ...]], float], budget: float,
                 max_float: int | None = None, cost: Mapping[str, float] | None = None) -> Fallback:
    """Keep the fewest candidates float (most sensitive first, or most sensitive per `cost`) that
    bring the score to `budget`."""
    baseline = measure(())
    trials = [Trial((), baseline)]
    if baseline >= budget:
        return Fallback(budget, (), baseline, True, {}, trials, [trials[0]])
    sensitivity = {}
    for name in candidates:
        score = measure((name,))
        trials.append(Trial((name,), score))
        sensitivity[name] = score - baseline
    ranked = sorted(candidates, key=lambda name: -sensitivity[name] / (cost[name] if cost else 1.0))
    limit = len(ranked) if max_float is None else min(max_float, len(ranked))
    best = trials[0]
    path = [trials[0]]
    for count in range(1, limit + 1):
        kept = tuple(ranked[:count])
        score = sensitivity[kept[0]] + baseline if count == 1 else measure(kept)
        if count > 1:
            trials.append(Trial(kept, score))
        path.append(Trial(kept, score))
        if score > best.score:
            best = path[-1]
        if score >= budget:
            return Fallback(budget, kept, score, True, sensitivity, trials, path)
    return Fallback(budget, best.kept_float, best.score, False, sensitivity, trials, path)
