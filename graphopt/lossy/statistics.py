"""The statistics the passes of one pipeline step declare, measured together and handed over.

Every pass's requests (graphopt.passes.contract.Request) on the model as the step starts are
merged into one measurement (graphopt.runtime.activations.collect: one run over the data per
chunk of values, however many passes and kinds ask), and each pass gets a Statistics holding
what it asked for.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np
import onnx_ir as ir

from graphopt.passes.contract import CHANNELS, GRAM, HISTOGRAMS, LARGEST, MEANS, Pass, Request, Statistics
from graphopt.runtime.activations import Wanted, collect
from graphopt.runtime.providers import SessionConfig


def hand_over(passes: Sequence[Pass], model: ir.Model, data: Iterable[dict[str, np.ndarray]] | None,
              config: SessionConfig, progress: Callable[[int, int], None] | None = None) -> None:
    """Measure what `passes` require on `model` over `data` and set each pass's `statistics`."""
    requests = {id(pass_): pass_.requires(model) for pass_ in passes}
    wanted = _merged([request for asked in requests.values() for request in asked])
    if not wanted.names():
        return
    measured = collect(model, wanted, data, config, progress=progress)
    for pass_ in passes:
        pass_.statistics = _subset(measured, requests[id(pass_)])


def _merged(requests: Sequence[Request]) -> Wanted:
    wanted = Wanted()
    for request in requests:
        if request.kind in (CHANNELS, GRAM):
            wanted.channels.update(request.values)
            wanted.gram = wanted.gram or request.kind == GRAM
            for name in request.values:
                if wanted.axes.get(name, request.axis) != request.axis:
                    raise ValueError(f"{name!r}: channel statistics asked for over axes {wanted.axes[name]} and "
                                     f"{request.axis}")
                if request.axis != -1:
                    wanted.axes[name] = request.axis
        elif request.kind == HISTOGRAMS:
            wanted.histograms.update(request.values)
        elif request.kind == MEANS:
            wanted.means.update((name, request.axis) for name in request.values)
        elif request.kind == LARGEST:
            wanted.largest.update(request.values)
        else:
            raise ValueError(f"unknown statistics request {request.kind!r}")
    return wanted


def _subset(measured, requests: Sequence[Request]) -> Statistics:
    names = {kind: {name for request in requests if request.kind in kinds for name in request.values}
             for kind, kinds in (("channels", (CHANNELS, GRAM)), ("histograms", (HISTOGRAMS,)), ("means", (MEANS,)),
                                 ("largest", (LARGEST,)))}
    return Statistics(
        channels={name: item for name, item in measured.channels.items() if name in names["channels"]},
        histograms={name: item for name, item in measured.histograms.items() if name in names["histograms"]},
        means={name: item for name, item in measured.means.items() if name in names["means"]},
        largest={name: item for name, item in measured.largest.items() if name in names["largest"]})
