"""An example plugin: `graphopt --plugin examples/my_passes.py …` registers the pass below."""

from __future__ import annotations

import onnx_ir as ir

import graphopt


@graphopt.register("strip_debug_info")
class StripDebugInfo(graphopt.Pass):
    """Remove doc strings and node metadata (exporters leave stack traces and source paths there)."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        stripped = 0
        for holder in (model, *model.graphs(), *(node for graph in model.graphs() for node in graph)):
            if holder.doc_string:
                holder.doc_string = None
                stripped += 1
            if isinstance(holder, ir.Node) and holder.metadata_props:
                holder.metadata_props.clear()
                stripped += 1
        if stripped:
            self.changed(f"removed debug info from {stripped} place(s)")
        return ir.passes.PassResult(model, modified=bool(stripped))
