"""An example plugin: `graphopt --plugin examples/my_passes.py …` registers the pass below."""

from __future__ import annotations

import collections

import onnx_ir as ir

import graphopt


@graphopt.register("name_nodes")
class NameNodes(graphopt.Pass):
    """Name every unnamed node after its op type (reports and divergence messages can then say which)."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        taken = {node.name for node in ir.traversal.RecursiveGraphIterator(model.graph) if node.name}
        counters: collections.Counter[str] = collections.Counter()
        named = 0
        for node in ir.traversal.RecursiveGraphIterator(model.graph):
            if node.name:
                continue
            while True:
                counters[node.op_type] += 1
                candidate = f"{node.op_type.lower()}_{counters[node.op_type]}"
                if candidate not in taken:
                    break
            node.name = candidate
            taken.add(candidate)
            named += 1
        if named:
            self.changed(f"named {named} node(s)")
        return ir.passes.PassResult(model, modified=bool(named))
