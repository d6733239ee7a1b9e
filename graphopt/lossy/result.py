"""What a lossy run hands back: the model, its per-layer outcomes, the fallback, the guards' measures.

Everything is data: the summary, the report JSON and the docs read the same records
(graphopt.render draws them), and nothing is parsed back out of text.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import onnx_ir as ir

from graphopt.lossy.fallback import Fallback
from graphopt.lossy.guards import Alternative, SizeCheck
from graphopt.passes.contract import FALLBACK_REASON, LayerOutcome
from graphopt.pipeline import PipelineReport
from graphopt.runtime.guard import LatencyCheck
from graphopt.runtime.validate import ValidationResult


@dataclasses.dataclass
class LossyResult:
    model: ir.Model
    report: PipelineReport  # the float passes', the data-dependent rewrites' and the lossy passes'
    written: list
    validation: ValidationResult | None
    warnings: list[str]
    outcomes: list[LayerOutcome]  # one per layer the lossy passes considered, as written
    float_bytes: int  # the float model's parameters (after the float passes)
    result_bytes: int
    verb: str  # what the lossy passes did ("quantized", "pruned")
    fallback: Fallback | None = None
    latency: LatencyCheck | None = None
    size: SizeCheck | None = None
    alternatives: list[Alternative] = dataclasses.field(default_factory=list)

    @property
    def changed(self) -> list[str]:
        """The layers the lossy passes changed."""
        return [outcome.layer for outcome in self.outcomes if outcome.changed]

    @property
    def untouched(self) -> list[tuple[str, str]]:
        """(layer, why) for the layers left as they were."""
        return [(outcome.layer, self.reason(outcome)) for outcome in self.outcomes if not outcome.changed]

    @property
    def other_forms(self) -> list[tuple[str, str, str]]:
        """(layer, form, why) for changed layers given another form than their pass's own (int8, not int4)."""
        return [(outcome.layer, outcome.form, self.reason(outcome)) for outcome in self.outcomes
                if outcome.changed and outcome.form != outcome.planned]

    def reason(self, outcome: LayerOutcome) -> str:
        """Why a layer is not in its pass's own form; for the fallback's, what it measured."""
        if outcome.reason != FALLBACK_REASON or self.fallback is None:
            return outcome.reason
        gain = self.fallback.sensitivity.get(outcome.layer, 0.0)
        if gain > 1.0:  # the rank jumped: alone it passes the tolerance's other checks
            return "the fallback: alone it brings the model within the tolerance's other checks"
        return f"the fallback: alone it raises the score by {gain:+.4f}"

    def summary_lines(self) -> list[str]:
        """What the command line prints of it (graphopt.render.lossy_lines)."""
        from graphopt.render import lossy_lines  # render draws results: it imports this module

        return lossy_lines(self)

    def to_dict(self) -> dict[str, Any]:
        return {"verb": self.verb, "changed": self.changed,
                "untouched": [list(item) for item in self.untouched],
                "other_forms": [list(item) for item in self.other_forms],
                "outcomes": [outcome.to_dict() for outcome in self.outcomes],
                "float_bytes": self.float_bytes, "result_bytes": self.result_bytes,
                "fallback": self.fallback.to_dict() if self.fallback else None,
                "alternatives": [alternative.to_dict() for alternative in self.alternatives],
                "latency": self.latency.to_dict() if self.latency else None,
                "size": self.size.to_dict() if self.size else None}
