"""Semantic preservation over ONNX's node test cases: every preset keeps every output."""

from __future__ import annotations

import pytest

from graphopt.pipeline import PRESETS
from tests.corpus import node_cases, run_corpus

# Presets with the same pass list run once (O2 and O3 equal O1 until fusion lands).
_DISTINCT_PRESETS = list({PRESETS[name]: name for name in reversed(PRESETS)}.values())


@pytest.mark.parametrize("preset", _DISTINCT_PRESETS)
def test_node_corpus_outputs_unchanged(preset):
    cases = node_cases()
    assert len(cases) > 1400, "ONNX's node corpus shrank: check the onnx version"
    result = run_corpus(cases, preset=preset)
    print(f"\n{preset}: {len(cases)} of {result.total_cases} cases run in ONNX Runtime; "
          f"{dict(result.counts)}")
    assert not result.failures, "\n".join(result.failures[:20])
