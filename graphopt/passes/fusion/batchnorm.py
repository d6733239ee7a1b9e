"""Fusions that fold one node's constants into its producer.

fold_batchnorm: an inference BatchNormalization after Conv, ConvTranspose or Gemm becomes
part of that node's weights:  s = gamma / sqrt(var + eps);  W' = W * s (per output channel);
B' = (B - mean) * s + beta.  onnxscript's rules do the arithmetic; we refuse the cases they
accept but should not: training-mode BatchNorm (it normalizes with batch statistics, not the
stored ones) and pre-opset-9 non-spatial BatchNorm (per-activation statistics).
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.rewriter import MatchResult
from onnxscript.rewriter.rules.common._fuse_batchnorm import (
    FuseBatchNormIntoConv,
    FuseBatchNormIntoConvTranspose,
    FuseBatchNormIntoGemm,
)

from graphopt.passes._rewrite import apply_rules, indexed_rule_set
from graphopt.passes.registry import Pass, register


def _inference_batchnorm_refusal(batchnorm: ir.Node) -> str | None:
    if batchnorm.attributes.get_int("training_mode", 0):
        return "BatchNormalization runs in training mode"
    if batchnorm.attributes.get_int("spatial", 1) != 1:
        return "BatchNormalization is not spatial"
    for extra in batchnorm.outputs[1:]:
        if extra.uses() or extra.is_graph_output():
            return "BatchNormalization's running statistics are used"
    return None


class _InferenceOnly:
    """Mixin: refuse BatchNorms whose output depends on more than the stored statistics."""

    def check(self, context, x, inbound_out, batchnorm_out) -> MatchResult:
        refusal = _inference_batchnorm_refusal(batchnorm_out.producer())
        if refusal is not None:
            return MatchResult().fail(refusal)
        return super().check(context, x, inbound_out, batchnorm_out)


class _ConvBatchNorm(_InferenceOnly, FuseBatchNormIntoConv):
    pass


class _ConvTransposeBatchNorm(_InferenceOnly, FuseBatchNormIntoConvTranspose):
    pass


class _GemmBatchNorm(_InferenceOnly, FuseBatchNormIntoGemm):
    pass


@register("fold_batchnorm", min_opset=7)
class FoldBatchNorm(Pass):
    """Fold inference BatchNormalization into the Conv, ConvTranspose or Gemm before it."""

    def __init__(self) -> None:
        super().__init__()
        self._rule_set = indexed_rule_set(
            [_ConvBatchNorm.rule(name="BatchNormalization into Conv"),
             _ConvTransposeBatchNorm.rule(name="BatchNormalization into ConvTranspose"),
             _GemmBatchNorm.rule(name="BatchNormalization into Gemm")]
        )

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        return ir.passes.PassResult(model, modified=apply_rules(model, self._rule_set, owner=self, refusals=True))
