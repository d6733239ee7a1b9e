"""Structural invariants of a model: topological order, no dangling values, the ONNX checker.

The checker runs on the graph's structure only: initializers become typed graph inputs, so
no tensor data is copied or read, which keeps the check cheap on multi-GB models.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator

import onnx
import onnx_ir as ir


class InvariantError(Exception):
    """A model breaks a structural invariant; the message says which and where."""


def check_model(model: ir.Model) -> None:
    """Raise InvariantError unless the model is sorted, has no dangling values and passes the checker."""
    _check_graph_order(model.graph, outer=frozenset())
    check_structure_proto(structure_proto(model))


class IncrementalChecker:
    """Checks a model after each pass without re-serializing what earlier checks covered.

    Every check verifies order, dangling values and duplicate outputs over the whole graph,
    and runs the ONNX node checker on nodes it has not validated before (a pass that rewrites
    replaces nodes). A new node that carries a subgraph triggers the full ONNX model checker,
    and so does `finish`, which catches anything a pass changed in place.
    """

    def __init__(self, model: ir.Model) -> None:
        self._validated: weakref.WeakSet[ir.Node] = weakref.WeakSet(all_nodes(model.graph))

    def check(self, model: ir.Model) -> None:
        _check_graph_order(model.graph, outer=frozenset())
        context = onnx.checker.C.CheckerContext()
        context.ir_version = model.ir_version
        context.opset_imports = dict(model.opset_imports)
        needs_full_check = False
        for node in all_nodes(model.graph):
            if node in self._validated:
                continue
            if any(True for _ in _subgraphs(node)):
                needs_full_check = True
                continue
            proto = onnx.NodeProto()
            ir.serde.serialize_node_into(proto, node)
            try:
                onnx.checker.check_node(proto, context)
            except onnx.checker.ValidationError as error:
                raise InvariantError(f"node {_node_label(node)}: {first_line(str(error))}") from None
            self._validated.add(node)
        if needs_full_check:
            self.finish(model)

    def finish(self, model: ir.Model) -> None:
        check_model(model)
        self._validated = weakref.WeakSet(all_nodes(model.graph))


def all_nodes(graph: ir.Graph) -> Iterator[ir.Node]:
    """Every node of the graph and, recursively, of the subgraphs its nodes carry."""
    for node in graph:
        yield node
        for subgraph in _subgraphs(node):
            yield from all_nodes(subgraph)


def check_structure_proto(proto: onnx.ModelProto) -> None:
    """Run the ONNX checker on a model proto; raise InvariantError with its first line."""
    try:
        onnx.checker.check_model(proto, full_check=False)
    except onnx.checker.ValidationError as error:
        raise InvariantError(first_line(str(error))) from None


def first_line(text: str) -> str:
    """The first non-empty line of a message (ONNX errors are often multi-line)."""
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return text.strip()


def _check_graph_order(graph: ir.Graph, outer: frozenset[ir.Value]) -> None:
    known: set[ir.Value] = set(outer)
    known.update(graph.inputs)
    known.update(graph.initializers.values())
    for node in graph:
        for value in node.inputs:
            if value is not None and value not in known:
                producer = value.producer()
                if producer is None or producer.graph is None:
                    raise InvariantError(
                        f"node {_node_label(node)} reads {value.name!r}, which nothing produces"
                    )
                raise InvariantError(
                    f"node {_node_label(node)} reads {value.name!r} before {_node_label(producer)} "
                    "produces it (graph not topologically sorted)"
                )
        for subgraph in _subgraphs(node):
            _check_graph_order(subgraph, frozenset(known))
        known.update(node.outputs)
    seen_outputs: set[str | None] = set()
    for value in graph.outputs:
        if value not in known:
            raise InvariantError(f"graph output {value.name!r} is not produced by the graph")
        if value.name in seen_outputs:
            raise InvariantError(f"graph {graph.name!r} returns {value.name!r} twice")
        seen_outputs.add(value.name)


def _subgraphs(node: ir.Node) -> Iterable[ir.Graph]:
    for attr in node.attributes.values():
        if attr.type == ir.AttributeType.GRAPH:
            yield attr.value
        elif attr.type == ir.AttributeType.GRAPHS:
            yield from attr.value


def _node_label(node: ir.Node) -> str:
    return f"{node.op_type}({node.name})" if node.name else node.op_type


def structure_proto(model: ir.Model, keep_elements: int = 0) -> onnx.ModelProto:
    """The model as a proto whose main-graph initializers are typed inputs without data.

    Initializers of at most `keep_elements` elements keep their data (shape inference needs
    the small ones: reshape targets, axes, pads).
    """
    proto = onnx.ModelProto(ir_version=model.ir_version)
    for domain, version in model.opset_imports.items():
        proto.opset_import.add(domain=domain, version=version)
    for function in model.functions.values():
        ir.serde.serialize_function_into(proto.functions.add(), function)
    graph = model.graph
    graph_proto = proto.graph
    graph_proto.name = graph.name or "graph"
    for node in graph:
        ir.serde.serialize_node_into(graph_proto.node.add(), node)
    input_set = set(graph.inputs)
    for value in graph.inputs:
        _serialize_value_info(graph_proto.input.add(), value)
    for value in graph.initializers.values():
        tensor = value.const_value
        if tensor is not None and tensor.size <= keep_elements:
            ir.serde.serialize_tensor_into(graph_proto.initializer.add(), tensor)
            graph_proto.initializer[-1].name = value.name
        elif value not in input_set:
            _serialize_value_info(graph_proto.input.add(), value)
    for value in graph.outputs:
        _serialize_value_info(graph_proto.output.add(), value)
    return proto


def structure_of_proto(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of a model proto whose main-graph initializers are typed inputs without data."""
    light = onnx.ModelProto(ir_version=proto.ir_version)
    light.opset_import.extend(proto.opset_import)
    light.functions.extend(proto.functions)
    graph = proto.graph
    light.graph.name = graph.name
    for field in ("node", "input", "output", "value_info"):
        getattr(light.graph, field).extend(getattr(graph, field))
    input_names = {value.name for value in proto.graph.input}
    for tensor in proto.graph.initializer:
        if tensor.name not in input_names:
            light.graph.input.append(
                onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims)
            )
    for sparse in proto.graph.sparse_initializer:
        if sparse.values.name not in input_names:
            light.graph.input.append(
                onnx.helper.make_tensor_value_info(
                    sparse.values.name, sparse.values.data_type, sparse.dims
                )
            )
    return light


def _serialize_value_info(proto: onnx.ValueInfoProto, value: ir.Value) -> None:
    if value.type is None and value.const_value is not None:
        tensor = value.const_value
        proto.name = value.name or ""
        tensor_type = proto.type.tensor_type
        tensor_type.elem_type = tensor.dtype.value
        shape = tensor_type.shape
        for dim in tensor.shape.dims:
            if isinstance(dim, int):
                shape.dim.add(dim_value=dim)
            else:
                shape.dim.add(dim_param=str(dim))
        return
    ir.serde.serialize_value_into(proto, value)
