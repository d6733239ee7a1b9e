"""Deployment preparation: strip what exporters leave for debugging, and make shapes static.

strip_debug_info: node, value, graph and function doc strings and metadata (torch's exporters
put stack traces with the exporting machine's absolute source paths there, FX node text and
module scopes: 1.3 MB on MiniLM). The model's own doc string and metadata stay: they
describe the model, not its export.
fix_shape: named inputs get fixed shapes; every dimension sharing their symbols follows, and
shape inference makes the rest static where it can, so that fold_constants afterwards
removes the shape arithmetic (what TensorRT, TFLite converters and NPUs want).
"""

from __future__ import annotations

import onnx_ir as ir

from graphopt import shapes
from graphopt.dims import shape_text
from graphopt.errors import InputError
from graphopt.passes.registry import Pass, register


@register("strip_debug_info")
class StripDebugInfo(Pass):
    """Remove debug text exporters leave: node stack traces, FX metadata, doc strings.

    `--keep-metadata` (`keep_metadata=True` in graphopt.optimize) drops it from the preset's passes.
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        removed = 0
        for holder in _debug_holders(model):
            if holder.doc_string:
                holder.doc_string = None
                removed += 1
            if holder.metadata_props:
                removed += len(holder.metadata_props)
                holder.metadata_props.clear()
        if removed:
            self.changed(f"removed {removed} doc string(s) and metadata entries")
        return ir.passes.PassResult(model, modified=bool(removed))


def _debug_holders(model: ir.Model):
    """Everything but the model itself that carries a doc string or metadata."""
    for graph in model.graphs():
        yield graph
        yield from graph
        yield from graph.inputs
        yield from graph.initializers.values()
        for node in graph:
            yield from node.outputs
    for function in model.functions.values():
        yield function
        yield from function
        for node in function:
            yield from node.outputs


@register("fix_shape")
class FixShape(Pass):
    """Give named inputs static shapes; dims that share their symbols and inferable ones follow.

    `--fix-shape input_ids=1x128` runs it before the preset's passes (validation then runs at those
    shapes); an attention_mask sharing input_ids' symbols follows it. MiniLM: 659 → 227 nodes once
    fold_constants has removed the shape arithmetic. The report says which inputs' dims were
    fixed (`input_ids [batch, seq] → [1, 128]`). An unknown input name, another rank, a size
    that contradicts a fixed dim, or two sizes for one symbol is an error; shape inference failing
    afterwards is a skip (only the named dims and their symbols are then fixed).

    Options:

    - `shapes`: {input name: its static dims}; without it the pass changes nothing.
    """

    def __init__(self, shapes: dict | None = None) -> None:
        super().__init__()
        self.shapes = {name: tuple(int(dim) for dim in shape) for name, shape in (shapes or {}).items()}

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        if not self.shapes:
            return ir.passes.PassResult(model, modified=False)
        inputs = {value.name: value for value in model.graph.inputs}
        symbols = _symbols_to_fix(inputs, self.shapes)
        graph_inputs = set(model.graph.inputs)
        fixed, changed = [], 0
        for value in (*model.graph.inputs, *model.graph.outputs,
                      *(output for node in ir.traversal.RecursiveGraphIterator(model.graph)
                        for output in node.outputs)):
            before = value.shape
            after = self.shapes.get(value.name) if value in graph_inputs else None
            if after is None and before is not None:
                after = tuple(symbols.get(dim.value, dim) if isinstance(dim, ir.SymbolicDim) else dim
                              for dim in before.dims)
            if before is None or after is None or tuple(before.dims) == tuple(after):
                continue
            value.shape = ir.Shape(after)
            changed += 1
            if value in graph_inputs:
                fixed.append(f"{value.name} {shape_text(before)} → {shape_text(value.shape)}")
        if not changed:
            return ir.passes.PassResult(model, modified=False)
        try:
            shapes.infer_shapes(model)
        except shapes.InferenceFailed as error:
            self.skip(f"shape inference after fixing failed, only the named dims were fixed: {error}")
        self.changed("fixed " + "; ".join(fixed) if fixed else f"fixed the shapes of {changed} value(s)")
        return ir.passes.PassResult(model, modified=True)


def _symbols_to_fix(inputs: dict[str, ir.Value], wanted: dict[str, tuple[int, ...]]) -> dict[str, int]:
    """Check the wanted shapes against the inputs; the symbol -> size they imply."""
    symbols: dict[str, int] = {}
    for name, shape in wanted.items():
        value = inputs.get(name)
        if value is None:
            raise InputError(f"--fix-shape names unknown input {name!r} (inputs: {', '.join(inputs)})")
        if value.shape is None:
            continue
        if len(value.shape) != len(shape):
            raise InputError(f"--fix-shape {name}: rank {len(shape)} but the input has rank "
                             f"{len(value.shape)} {shape_text(value.shape)}")
        for dim, size in zip(value.shape.dims, shape):
            if isinstance(dim, int) and dim != size:
                raise InputError(f"--fix-shape {name}: dimension {dim} is fixed, got {size}")
            if isinstance(dim, ir.SymbolicDim) and dim.value is not None:
                if symbols.setdefault(dim.value, size) != size:
                    raise InputError(f"--fix-shape gives dimension {dim.value!r} two sizes: "
                                     f"{symbols[dim.value]} and {size}")
    return symbols

