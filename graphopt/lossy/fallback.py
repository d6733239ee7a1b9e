"""The sensitivity fallback: which layers to back off along their ladders to meet a budget.

The caller measures (it runs the model); this module only decides. `measure(backed_off)` builds
the model with those layers at those forms ({layer: form}) and judges it (budget.Judgement).
A layer's sensitivity is the rank gained when it alone moves one step down its ladder (int8 →
float, int4 → int8, 50% → 25% pruned). Layers move greedily, the most sensitive first — or the
most sensitive per cost, with costs (the bytes a step adds): the fewest bytes rather than the
fewest layers — one step at a time, every layer's first step before any layer's second, until
the budget is met.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from graphopt.lossy.budget import Judgement


@dataclasses.dataclass(frozen=True)
class Layer:
    """A layer the lossy passes changed: its name, the forms it can back off to (mildest last),
    and what one step costs (1 for every layer when the fewest layers should move)."""

    name: str
    ladder: tuple[str, ...]
    cost: float = 1.0


@dataclasses.dataclass
class Trial:
    backed_off: dict[str, str]
    score: float
    within_tolerance: bool = True

    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(self.backed_off)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Fallback:
    """What the search measured and chose."""

    budget: float
    backed_off: dict[str, str]
    score: float
    met: bool
    sensitivity: dict[str, float]
    trials: list[Trial]
    # the greedy path: nothing backed off, then the 1, 2, … most sensitive layers' steps
    path: list[Trial] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict:
        return {"budget": self.budget, "backed_off": self.backed_off, "score": self.score, "met": self.met,
                "sensitivity": self.sensitivity, "trials": [trial.to_dict() for trial in self.trials],
                "path": [trial.to_dict() for trial in self.path]}


Measure = Callable[[dict[str, str]], Judgement]


def choose(layers: Sequence[Layer], measure: Measure, budget: float, costs: bool = False) -> Fallback:
    """Back off the fewest layers (or bytes, with `costs`) that bring the score to `budget`."""
    judged: dict[tuple, Trial] = {}

    def trial(backed_off: dict[str, str]) -> Trial:
        key = tuple(sorted(backed_off.items()))
        if key not in judged:
            judgement = measure(dict(backed_off))
            judged[key] = Trial(dict(backed_off), judgement.score, judgement.within_tolerance)
        return judged[key]

    def rank(item: Trial) -> float:
        return Judgement(item.score, item.within_tolerance).rank(budget)

    baseline = trial({})
    if rank(baseline) >= budget:
        return Fallback(budget, {}, baseline.score, True, {}, [baseline], [baseline])
    sensitivity = {layer.name: rank(trial({layer.name: layer.ladder[0]})) - rank(baseline) for layer in layers}
    ranked = sorted(layers, key=lambda layer: -sensitivity[layer.name] / (layer.cost if costs else 1.0))
    best, path, backed_off = baseline, [baseline], {}
    for step in range(max((len(layer.ladder) for layer in layers), default=0)):
        for layer in ranked:
            if step >= len(layer.ladder):
                continue
            backed_off[layer.name] = layer.ladder[step]
            path.append(trial(backed_off))
            if rank(path[-1]) > rank(best):
                best = path[-1]
            if rank(path[-1]) >= budget:
                return Fallback(budget, dict(backed_off), path[-1].score, True, sensitivity, list(judged.values()), path)
    return Fallback(budget, dict(best.backed_off), best.score, False, sensitivity, list(judged.values()), path)
