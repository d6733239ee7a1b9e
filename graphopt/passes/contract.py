"""The pass contract: what a pass declares, what it is handed before it runs, what it records.

Every pass is an onnx-ir in-place pass with a registered name, a one-line summary, typed options
and an opset window (graphopt.passes.registry). A pass that needs measurements (SmoothQuant's
channel peaks, static int8's histograms) declares them in `requires(model)` and reads them from
`statistics`, which the lossy pipeline fills before it runs (passes never run a model). A lossy
pass (LossyPass: quantization, pruning …) also declares how it is judged and backed off, and
records one LayerOutcome per layer it considered: what became of it, its bytes, and why a layer
was left alone. The report, the summary and the fallback read those records.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, ClassVar

import numpy as np
import onnx_ir as ir

logger = logging.getLogger(__name__)

TARGETS = ("portable", "ort")

# Statistics a pass may request, each per named value, measured on the model as the passes
# before it left it: CHANNELS, per channel of the last axis (or of `axis`) its peak |x|, mean and
# mean x² (GRAM adds the channels' Gram matrix xᵀx / count); HISTOGRAMS, its whole distribution;
# MEANS, its mean per channel of `axis`; LARGEST, its largest magnitude (float32's extremes and
# infinities aside: a mask's "minus infinity"; NaN where it held one).
CHANNELS, GRAM, HISTOGRAMS, MEANS, LARGEST = "channels", "gram", "histograms", "means", "largest"


@dataclasses.dataclass(frozen=True)
class Request:
    kind: str
    values: tuple[str, ...]
    axis: int = -1  # the channel axis (a Conv input's is 1, or -3 counted from the last)


@dataclasses.dataclass
class Statistics:
    """What the pipeline measured for a pass's requests, by value name."""

    channels: dict[str, Any] = dataclasses.field(default_factory=dict)  # peak, mean_square, count, gram
    histograms: dict[str, Any] = dataclasses.field(default_factory=dict)  # graphopt.runtime.histograms
    means: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    largest: dict[str, float] = dataclasses.field(default_factory=dict)
    synthesized: bool = False  # measured on synthesized inputs (no calibration data, no --inputs)

    def peaks(self) -> dict[str, np.ndarray]:
        return {name: item.peak for name, item in self.channels.items()}


@dataclasses.dataclass(frozen=True)
class OpTyping:
    """An op's schema as a pass that changes element types reads it: each input's and output's type
    (a type parameter such as "T", or a fixed type such as "tensor(float)"), what each parameter
    allows, and whether the last input or output repeats."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    allowed: dict[str, frozenset[str]]
    variadic_input: bool = False
    variadic_output: bool = False

    def input_type(self, index: int) -> str | None:
        return _nth(self.inputs, index, self.variadic_input)

    def output_type(self, index: int) -> str | None:
        return _nth(self.outputs, index, self.variadic_output)


def _nth(types: tuple[str, ...], index: int, variadic: bool) -> str | None:
    if index < len(types):
        return types[index]
    return types[-1] if variadic and types else None


@dataclasses.dataclass(frozen=True)
class Kernels:
    """What the lossy pipeline knows of the execution provider a result will run on, for the ops of
    one model (graphopt.runtime.kernels.table): each op's typing by (domain, op) ("" for ONNX's),
    the ops the provider has a kernel for in the type asked, and whether it lists kernels at all."""

    ep: str
    typing: dict[tuple[str, str], OpTyping]
    typed: frozenset[tuple[str, str]]
    listed: bool = True


@dataclasses.dataclass
class LayerOutcome:
    """What a lossy pass did to one layer (a node of the model it was given, by name)."""

    layer: str
    op_type: str
    form: str            # what it became ("int8", "int4", "pruned 50%"), or the untouched form ("float")
    changed: bool
    planned: str = ""    # the pass's own form (its ladder's first): what it would have become
    reason: str = ""     # why it was left alone or given another form than planned
    bytes_before: int = 0  # its constant weights' bytes before the pass
    bytes_after: int = 0
    detail: str = ""     # what was measured of it, for the reader ("50.2% of its values zero")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Pass(ir.passes.InPlacePass):
    """Base of graphopt passes: a pure graph rewrite that records what it changed and skipped."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    min_opset: ClassVar[int] = 1
    targets: ClassVar[frozenset[str]] = frozenset(TARGETS)
    # True for a pass that emits different ops for portable and ort (it reads self.target).
    target_aware: ClassVar[bool] = False
    lossy: ClassVar[bool] = False
    # What it measures, for a pass that needs real data (static int8's "every activation's range");
    # the run is refused without calibration data, and the result judged on held-out samples of it.
    needs_calibration: ClassVar[str] = ""

    def __init__(self) -> None:
        super().__init__()
        self.skipped: list[str] = []
        self.changes: list[str] = []
        self.outcomes: list[LayerOutcome] = []
        # The pass manager sets the target before each run; a pass that emits different ops
        # for portable and ort reads it.
        self.target: str = "portable"
        # Filled by the lossy pipeline from requires(): measurements, not options.
        self.statistics = Statistics()
        # {layer: why} the lossy pipeline wants left as it is (the float part of an earlier rewrite)
        self.frozen: dict[str, str] = {}

    def measures(self) -> bool:
        """Whether its options make it ask for statistics (what requires() returns then)."""
        return bool(self.needs_calibration)

    def requires(self, model: ir.Model) -> list[Request]:
        """The statistics this pass needs on `model` (none by default)."""
        return []

    def skip(self, reason: str) -> None:
        """Record a case the pass left alone, for the report."""
        logger.debug("%s skipped: %s", self.name, reason)
        self.skipped.append(reason)

    def changed(self, description: str) -> None:
        """Record what the pass changed (e.g. "folded 3 nodes"), for the report."""
        logger.debug("%s changed: %s", self.name, description)
        self.changes.append(description)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class LossyPass(Pass):
    """A pass that changes the numbers on purpose, judged and backed off by the lossy pipeline.

    Declarations: `tolerance` (what it is judged at without a budget: a name of
    graphopt.runtime.compare.TOLERANCES, or a Tolerance of its own), `ladder()`
    (a layer's forms from the pass's own to the mildest; the fallback moves a layer down it),
    `untouched` (the form of a layer the pass leaves alone), `cost` ("layers": every layer held
    back costs the same, so the fewest go first; "bytes": by its weight's bytes, so the fewest bytes
    go first), `objective` ("latency", "size", or "size+latency": which guards judge it — what it
    buys, and what it must not cost), `verb` (how the summary says what it did), `handles` (the
    layers it acts on, said when a model has none), `folds_at_load`. The fallback hands
    `backed_off` ({layer: a form of the ladder}) before a run.
    """

    lossy: ClassVar[bool] = True
    tolerance: ClassVar[Any] = "int8"
    untouched: ClassVar[str] = "float"
    cost: ClassVar[str] = "layers"
    objective: ClassVar[str] = "latency"
    verb: ClassVar[str] = "quantized"
    # True for a pass whose result ONNX Runtime completes at load (a weight decoder on constants,
    # folded by its basic optimizations): the pipeline validates at that level, not as written
    folds_at_load: ClassVar[bool] = False
    # True for a pass whose result is smaller only as a compressed file stores it (zeroed weights): the
    # size guard then compares the weights zlib-compressed, else their bytes (compressing takes seconds)
    smaller_compressed: ClassVar[bool] = False
    handles: ClassVar[str] = ""  # the layers it acts on, for the user whose model has none

    def __init__(self) -> None:
        super().__init__()
        self.backed_off: dict[str, str] = {}
        # A pass that changes element types names the type ("tensor(float16)"); the lossy pipeline
        # hands it `kernels`: the execution provider's, for the ops of the model it will change.
        self.kernel_type: str = ""
        self.kernels: Kernels | None = None

    def ladder(self) -> tuple[str, ...]:
        return ("int8", "float")

    def needs_opset(self, target: str) -> int:
        """The opset the pass needs to do its work for `target`; the lossy pipeline converts a model
        below it (saying so) rather than let the pass leave every layer alone."""
        return self.min_opset

    def record(self, node: ir.Node, form: str, *, before: int = 0, after: int = 0, reason: str = "",
               layer: str | None = None, detail: str = "") -> None:
        """The layer `node` (or the one named `layer` it came from) became `form` (`reason`: why,
        when that is not the pass's own form)."""
        name = layer or node.name
        if not reason and form != self.ladder()[0] and self.backed_off.get(name) == form:
            reason = FALLBACK_REASON  # the fallback chose this form
        self.outcomes.append(LayerOutcome(name, node.op_type, form, True, self.ladder()[0], reason,
                                          before, after, detail))

    def keep(self, node: ir.Node, reason: str, *, before: int = 0, layer: str | None = None) -> None:
        """The layer stays as it is, for `reason` (also a skip line of the pass's report)."""
        name = layer or node.name
        self.skip(f"{node.op_type} {name!r} kept {self.untouched}: {reason}")
        self.outcomes.append(LayerOutcome(name, node.op_type, self.untouched, False, self.ladder()[0], reason,
                                          before, before))

    def held(self, node: ir.Node) -> str | None:
        """Why the pipeline holds this layer as it is (frozen, or backed off to the untouched form),
        or None."""
        if node.name in self.frozen:
            return self.frozen[node.name]
        if self.backed_off.get(node.name) == self.untouched:
            return FALLBACK_REASON
        return None


FALLBACK_REASON = "held back by the fallback"  # a layer's reason until the pipeline says what it measured
