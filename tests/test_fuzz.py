"""Property: every pass alone and every preset keeps ONNX Runtime outputs on random valid graphs
(float16 within its tolerance).

The default run tries a modest number of graphs; `pytest --full` raises the budget. A graph
that fails is shrunk by hypothesis and belongs in tests/test_fuzz_regressions.py.
"""

from __future__ import annotations

import onnx
from hypothesis import HealthCheck, given, settings

import graphopt
from graphopt.errors import NothingChanged, ValidationFailed
from graphopt.passes import TARGETS, pass_class, pass_names
from graphopt.pipeline import PRESETS, resolve_spec
from graphopt.runtime.compare import TOLERANCES, compare
from tests.corpus import same_outputs
from tests.fuzz_graphs import onnx_graphs
from tests.helpers import random_feeds, run

_PASSES = [name for name in pass_names() if not name.startswith("test_")]
_PRESETS = [name for name in PRESETS if name != "O0"]


def _budget(request) -> int:
    return 300 if request.config.getoption("--full") else 25


def check_graph(model: onnx.ModelProto, dynamic: bool) -> None:
    onnx.checker.check_model(model)
    feed_sets = [random_feeds(model, seed=0, dim=2)]
    if dynamic:
        feed_sets.append(random_feeds(model, seed=1, dim=3))
    expected = [run(model, feeds) for feeds in feed_sets]
    presets = [{"preset": name, "target": target} for name in _PRESETS for target in TARGETS]
    for options in [{"passes": [name]} for name in _PASSES] + presets:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        spec = resolve_spec(options.get("preset"), options.get("passes"))
        if any(pass_class(name).needs_calibration for name, _ in spec.passes):
            options = {**options, "calibration": feed_sets}  # ranges from the inputs it is run on
        lossy = spec.lossy
        if lossy:
            options = {**options, "force": True}  # a graph with nothing to quantize is refused without it
        optimized = graphopt.optimize(copy, **options).model
        for feeds, want in zip(feed_sets, expected):
            got = run(optimized, feeds)
            if lossy:  # quantized on purpose: it must load and run, with the same outputs' shapes and types
                assert [(a.shape, a.dtype) for a in want] == [(b.shape, b.dtype) for b in got], options
                continue
            assert same_outputs(want, got, rtol=1e-4, atol=1e-5), (
                f"{options} changed the outputs of\n{onnx.printer.to_text(model)}")
    check_half(model, feed_sets, expected)


def check_half(model: onnx.ModelProto, feed_sets: list, expected: list) -> None:
    """Converted to float16 as far as the schemas allow (validated on the first input set, the
    fallback backing nodes off): the outputs stay within the fp16 tolerance on every input set, or
    the result is refused with a reason."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    try:
        converted = graphopt.optimize(copy, passes="convert_precision:compute=all:min_weights=0", validate=True,
                                      check_speed=False, inputs=feed_sets[0]).model
    except (NothingChanged, ValidationFailed):
        return
    for feeds, want in zip(feed_sets, expected):
        for index, (a, b) in enumerate(zip(want, run(converted, feeds))):
            comparison = compare(f"output {index}", a, b, TOLERANCES["fp16"])
            assert comparison.passed, f"{comparison.reason}: float16 of\n{onnx.printer.to_text(model)}"


def test_random_graphs_keep_their_outputs(request):
    @settings(max_examples=_budget(request), deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(onnx_graphs())
    def property_holds(case):
        check_graph(*case)

    property_holds()
