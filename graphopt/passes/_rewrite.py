"""Applies onnxscript rewrite rules, trying each rule only on nodes whose op can root its pattern.

onnxscript's RewriteRuleSet tries every rule on every node; on a 600-node transformer with
the default rules that is ~50,000 failed matches. Indexing rules by the op type of their
pattern's output node skips nearly all of them without changing what matches. Each run
counts what every rule rewrote and, for fusions, why a rule refused a subgraph it matched.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import onnx_ir as ir
from onnxscript import rewriter
from onnxscript.rewriter import _basics

if TYPE_CHECKING:
    from graphopt.passes.registry import Pass


class _CountedRule:
    """A rule that counts its rewrites and, given its pattern's root ops, declines elsewhere at once."""

    def __init__(self, rule: rewriter.RewriteRule, roots: frozenset[tuple[str, str]] | None):
        self._rule = rule
        self._roots = roots
        self.fired = 0
        self.tracer: _RefusalTracer | None = None

    def try_rewrite(self, model, graph_or_function, node: ir.Node, **kwargs):
        if self._roots is not None and (node.domain, node.op_type) not in self._roots:
            return None
        if self.tracer is not None:
            # Given to the rule, not the rule set: the set treats a tracer as a dry run.
            kwargs["tracer"] = self.tracer
        replacement = self._rule.try_rewrite(model, graph_or_function, node, **kwargs)
        self.fired += replacement is not None
        return replacement

    def __getattr__(self, name: str) -> Any:
        return getattr(self._rule, name)


class _RefusalTracer(_basics.MatchingTracer):
    """Records every subgraph a rule matched but refused (its check failed), with the reason."""

    def __init__(self) -> None:
        super().__init__()
        self.refusals: list[tuple[str, ir.Node, str]] = []

    def log(self, rule, container, node, match_result, status) -> None:
        if status == _basics.MatchStatus.CONDITION_FAILED:
            self.refusals.append((rule.name or str(rule), node, match_result.reason or "its check failed"))
        elif status == _basics.MatchStatus.REPLACEMENT_FAILED:
            self.refusals.append((rule.name or str(rule), node, "the replacement could not be built"))


def _pattern_roots(rule: rewriter.RewriteRule) -> frozenset[tuple[str, str]] | None:
    """(domain, op_type) of the pattern's output node, or None when it is not a fixed op."""
    pattern = getattr(rule, "_target_pattern", None)
    output_nodes = getattr(pattern, "output_nodes", None)
    if not output_nodes or len(output_nodes) != 1:
        return None
    op_identifier = getattr(output_nodes[0], "_op_identifier", None)
    if op_identifier is None:
        return None
    domain, op_type = op_identifier[0], op_identifier[1]
    return frozenset({(domain, op_type), ("ai.onnx", op_type)} if domain == "" else {(domain, op_type)})


def indexed_rule_set(rules: Sequence[rewriter.RewriteRule]) -> rewriter.RewriteRuleSet:
    """A RewriteRuleSet over `rules`, each counted and guarded by its pattern's root op when it has one."""
    return rewriter.RewriteRuleSet([_CountedRule(rule, _pattern_roots(rule)) for rule in rules])


def apply_rules(model: ir.Model, rule_set: rewriter.RewriteRuleSet, owner: Pass | None = None,
                refusals: bool = False) -> bool:
    """Apply the rules once over the model and its subgraphs; return whether it changed.

    With `owner`, the pass reports how often each rule fired and, with `refusals`, each
    subgraph a rule matched but refused and why (for fusions; for no-op rules a refusal is
    the normal case and would only be noise). onnxscript also removes unused nodes after
    rewriting even when no rule fired, so the rewrite count alone does not say whether the
    model changed.
    """
    nodes_before = sum(1 for _ in model.graph)
    tracer = _RefusalTracer() if owner is not None and refusals else None
    counted = [rule for rule in rule_set.rules if isinstance(rule, _CountedRule)]
    fired_before = {id(rule): rule.fired for rule in counted}
    for rule in counted:
        rule.tracer = tracer
    try:
        rewrites = rule_set.apply_to_model(model)
    finally:
        for rule in counted:
            rule.tracer = None
    if owner is not None:
        fired = collections.Counter()
        for rule in counted:
            fired[rule.name or str(rule._rule)] += rule.fired - fired_before[id(rule)]
        for name, count in fired.items():
            if count:
                owner.changed(f"{name}: {count}")
        for name, node, reason in tracer.refusals if tracer else ():
            owner.skip(f"{name} refused at {node.op_type} {node.name!r}: {reason}")
    return bool(rewrites) or sum(1 for _ in model.graph) != nodes_before
