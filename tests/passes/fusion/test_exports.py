"""Fusions on real exports of both torch exporters (slow: each export takes seconds)."""

from __future__ import annotations

import collections

import pytest

import graphopt

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    from graphopt.export import export_zoo

    folder = tmp_path_factory.mktemp("minilm")
    return {exporter: export_zoo("minilm", folder / f"{exporter}.onnx", exporter=exporter, fallback=False).path
            for exporter in ("dynamo", "torchscript")}


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_minilm_ort_fuses_every_layer_and_validates(minilm, exporter):
    result = graphopt.optimize(minilm[exporter], preset="O2", target="ort", validate=True)
    assert result.validation.passed, result.validation.summary()
    ops = collections.Counter(node.op_type for node in result.model.graph)
    assert ops["BiasGelu"] == 6 and ops["Attention"] == 6, ops
    assert ops["LayerNormalization"] == ops["Sum"] == 13 and "SkipLayerNormalization" not in ops, ops
    assert "Softmax" not in ops
    # torchscript's mask is -inf: the NaN guard stays, on the fused output; dynamo's is finite.
    assert ops["IsNaN"] == (6 if exporter == "torchscript" else 0)


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_minilm_portable_fuses_attention_at_opset_23(minilm, exporter):
    result = graphopt.optimize(minilm[exporter], preset="O2", opset=23, validate=True)
    assert result.validation.passed, result.validation.summary()
    ops = collections.Counter(node.op_type for node in result.model.graph)
    assert ops["Attention"] == 6 and ops["Gelu"] == 6 and "Softmax" not in ops, ops
    assert not any(node.domain for node in result.model.graph)


def test_minilm_portable_torchscript_fuses_gelu_once_opset_20(minilm):
    result = graphopt.optimize(minilm["torchscript"], preset="O2", opset=20, validate=True)
    assert result.validation.passed, result.validation.summary()
    ops = collections.Counter(node.op_type for node in result.model.graph)
    assert ops["Gelu"] == 6 and not any(node.domain for node in result.model.graph), ops
