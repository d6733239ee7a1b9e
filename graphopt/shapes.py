"""Shape inference on a model's structure, adopting only what adds information.

ONNX's inference runs on a copy without large weights (small integer tensors are kept: they
are the reshape targets and axes inference needs). A value's existing dims are never
replaced by inferred ones except where a symbolic or unknown dim becomes a number, so
repeated inference converges instead of renaming symbols.
"""

from __future__ import annotations

import onnx
import onnx_ir as ir

from graphopt import checks

_SHAPE_TENSOR_ELEMENTS = 64


class InferenceFailed(Exception):
    """ONNX shape inference gave up on the model; the message is its first line."""


def infer_shapes(model: ir.Model, *, only_if_missing: bool = False) -> int:
    """Fill in dtypes and dims of node outputs; return how many values learned something.

    only_if_missing skips the work when every node output already has a dtype and a shape:
    inference could then at most turn a symbolic dim into a number, which exported models
    do not leave behind.
    """
    if only_if_missing and all(value.dtype is not None and value.shape is not None
                               for node in ir.traversal.RecursiveGraphIterator(model.graph)
                               for value in node.outputs):
        return 0
    proto = checks.structure_proto(model, keep_elements=_SHAPE_TENSOR_ELEMENTS)
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=False, data_prop=True)
    except Exception as error:  # inference gives up on some graphs
        raise InferenceFailed(checks.first_line(str(error))) from None
    found: dict[str, onnx.TypeProto] = {}
    _collect_value_types(inferred.graph, found)
    learned = 0
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        for value in node.outputs:
            type_proto = found.get(value.name)
            if type_proto is not None:
                learned += _adopt(value, type_proto)
    return learned


def _collect_value_types(graph: onnx.GraphProto, found: dict[str, onnx.TypeProto]) -> None:
    for info in (*graph.value_info, *graph.output):
        if info.type.HasField("tensor_type"):
            found[info.name] = info.type
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("g"):
                _collect_value_types(attribute.g, found)
            for subgraph in attribute.graphs:
                _collect_value_types(subgraph, found)


def _adopt(value: ir.Value, type_proto: onnx.TypeProto) -> bool:
    """Take the inferred dtype and dims where the value has none or only symbolic ones."""
    tensor_type = type_proto.tensor_type
    modified = False
    if value.dtype is None and tensor_type.elem_type:
        value.dtype = ir.DataType(tensor_type.elem_type)
        modified = True
    if not tensor_type.HasField("shape"):
        return modified
    inferred = [dim.dim_value if dim.HasField("dim_value") else None for dim in tensor_type.shape.dim]
    if value.shape is None:
        value.shape = ir.Shape(
            [dim if dim is not None else ir.SymbolicDim(None) for dim in inferred]
        )
        return True
    if len(value.shape) != len(inferred):
        return modified
    dims = list(value.shape.dims)
    gained = False
    for index, dim in enumerate(inferred):
        if dim is not None and not isinstance(dims[index], int):
            dims[index] = dim
            gained = True
    if gained:
        value.shape = ir.Shape(dims)
    return modified or gained
