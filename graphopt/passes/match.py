"""Graph walking and editing helpers the passes share (fusions, quantizers, compression).

A fusion anchors on a distinctive node (Erf, Tanh, …) and walks outwards from it, taking
either operand order of commutative ops; each helper answers None when the structure is not
there, so the pass can say which step failed. The editing helpers make fresh names and
initializers and drop what a rewrite left unused.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import onnx_ir as ir

from graphopt import shapes

MS_DOMAIN = "com.microsoft"  # ONNX Runtime's contrib ops
FLOAT_TYPES = frozenset({ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE})


INFERRED = "graphopt.shapes_inferred"  # model.meta: set when inference ran; the pass manager drops it on any change


def infer_types(owner, model: ir.Model) -> None:
    """Fill in missing dtypes and shapes before matching (fusions decide by them), once per state of
    the model: passes that run one after another without changing it share one inference. A failure
    is reported by `owner` and the values stay unknown, which only means fewer fusions."""
    if model.meta.get(INFERRED):
        return
    try:
        shapes.infer_shapes(model, only_if_missing=True)
        model.meta[INFERRED] = True
    except shapes.InferenceFailed as error:
        owner.skip(f"shape inference failed, values of unknown type or shape are not fused: {error}")


def is_op(node: ir.Node | None, *op_types: str) -> bool:
    """Whether `node` is one of the standard-domain `op_types`."""
    return node is not None and node.domain in ("", "ai.onnx") and node.op_type in op_types


class Constant(float):
    """A constant's value that knows how closely its dtype can hold a target (float16: 1e-3)."""

    rel: float = 0.0


_DTYPE_PRECISION = {ir.DataType.FLOAT16: 1e-3, ir.DataType.BFLOAT16: 1e-2}


def scalar(value: ir.Value | None, partner: ir.Value | None = None) -> Constant | None:
    """The number a single-element constant holds, when broadcasting it against `partner` cannot
    change the result's shape: 0-d, or of no higher rank than `partner` (whose rank is known)."""
    if value is None:
        return None
    tensor = value.const_value
    if tensor is None:
        producer = value.producer()
        if not is_op(producer, "Constant") or "value" not in producer.attributes:
            return None
        tensor = producer.attributes["value"].as_tensor()
    if math.prod(tensor.shape.numpy()) != 1:
        return None
    if len(tensor.shape) and (partner is None or partner.shape is None or len(tensor.shape) > len(partner.shape)):
        return None
    array = tensor.numpy()
    if array.dtype.kind not in "fiu":
        return None
    number = Constant(array.reshape(-1)[0])
    number.rel = _DTYPE_PRECISION.get(tensor.dtype, 0.0)
    return number


def close(value: float | None, target: float, rel: float = 1e-4) -> bool:
    """Whether `value` is `target`, as closely as the constant's dtype can hold it."""
    return value is not None and math.isclose(value, target, rel_tol=max(rel, getattr(value, "rel", 0.0)))


def anchors(model: ir.Model, *op_types: str):
    """(graph, node) for every standard node of `op_types`, graph by graph in order, skipping the
    nodes an earlier rewrite of the same run has removed."""
    for graph in model.graphs():
        for node in list(graph):
            if node.graph is graph and is_op(node, *op_types):
                yield graph, node


def in_graph(graph: ir.Graph, *nodes: ir.Node | None) -> bool:
    """Whether every node belongs to `graph` itself (a match must not reach into or out of a subgraph)."""
    return all(node is not None and node.graph is graph for node in nodes)


def only_consumer(value: ir.Value) -> ir.Node | None:
    """The one node that reads `value` (once), when nothing else (a graph output) does."""
    uses = value.uses()
    if len(uses) != 1 or value.is_graph_output():
        return None
    return uses[0].node


def other_input(node: ir.Node, value: ir.Value) -> ir.Value | None:
    """For a two-input node, the input that is not `value`."""
    if len(node.inputs) != 2:
        return None
    first, second = node.inputs
    if first is value and second is not value:
        return second
    if second is value and first is not value:
        return first
    return None


def operands(node: ir.Node | None, op_type: str) -> tuple[ir.Value, ir.Value] | None:
    """The two inputs of a binary standard op, or None when `node` is something else."""
    if not is_op(node, op_type) or len(node.inputs) != 2 or None in node.inputs:
        return None
    return node.inputs[0], node.inputs[1]


def split_constant(node: ir.Node | None, op_type: str) -> tuple[ir.Value, Constant] | None:
    """For `op_type(a, c)` or `op_type(c, a)` with a single-element constant c: (a, c)."""
    pair = operands(node, op_type)
    if pair is None:
        return None
    first, second = pair
    if scalar(second, first) is not None:
        return first, scalar(second, first)
    if scalar(first, second) is not None:
        return second, scalar(first, second)
    return None


def constant_tensor(value: ir.Value | None) -> ir.TensorProtocol | None:
    """The tensor an initializer or Constant node holds (unread); None for anything else, an
    overridable initializer (also a graph input) included."""
    if value is None or value.is_graph_input():
        return None
    return ir.convenience.get_const_tensor(value)


def constant_array(value: ir.Value | None) -> np.ndarray | None:
    """constant_tensor's contents as an array."""
    tensor = constant_tensor(value)
    return tensor.numpy() if tensor is not None else None


def is_float(value: ir.Value) -> bool:
    return value.dtype in FLOAT_TYPES


def vector(value: ir.Value) -> np.ndarray | None:
    """A constant 1-D tensor's values (a bias), else None."""
    tensor = value.const_value
    if tensor is None or len(tensor.shape) != 1:
        return None
    return tensor.numpy()


def leaking_node(nodes: list[ir.Node], output: ir.Value) -> ir.Node | None:
    """The first node among `nodes` whose result (other than `output`) is read outside them."""
    inside = set(nodes)
    for node in nodes:
        for value in node.outputs:
            if value is not output and (value.is_graph_output()
                                        or any(use.node not in inside for use in value.uses())):
                return node
    return None


def fresh_node_name(graph: ir.Graph, base: str) -> str:
    """`base`, or `base_2`, `base_3` … whichever no node of the graph has."""
    return fresh_name(base, {node.name for node in graph})


def fresh_value_name(graph: ir.Graph, base: str) -> str:
    """`base`, or `base_2` … whichever no input, initializer or node output of the graph has."""
    taken = {value.name for value in graph.inputs} | set(graph.initializers)
    taken |= {value.name for node in graph for value in node.outputs}
    return fresh_name(base, taken)


def fingerprint(array: np.ndarray) -> bytes:
    """A digest of an array's bytes: the key under which a lossy pass keeps work on a weight (an SVD,
    a k-means) across the fallback's trials, which rebuild the model but not its weights."""
    return hashlib.blake2b(np.ascontiguousarray(array).tobytes(), digest_size=16).digest()


def new_initializer(graph: ir.Graph, array: np.ndarray, base: str) -> ir.Value:
    """A new initializer of `graph` holding `array`, named `base` or the next free variant (a 0-d
    array stays a scalar: np.ascontiguousarray would make it [1])."""
    array = np.asarray(array)
    array = array if array.flags.c_contiguous else np.ascontiguousarray(array)
    value = ir.Value(name=fresh_value_name(graph, base), const_value=ir.tensor(array))
    value.shape, value.dtype = ir.Shape(array.shape), value.const_value.dtype
    graph.register_initializer(value)
    return value


def drop_unused_initializers(graph: ir.Graph, values) -> None:
    """Remove those of `values` that are initializers of `graph` nothing reads any more, and let
    their data go: the value forgets its tensor (the pass that dropped it may still hold the
    value, and the collector is paused while passes run) and external data is unmapped."""
    for value in values:
        if value is not None and not value.uses() and value.name in graph.initializers \
                and graph.initializers[value.name] is value and not value.is_graph_input() \
                and not value.is_graph_output():
            graph.initializers.pop(value.name)
            release(value.const_value)
            value.const_value = None


def release(tensor: ir.TensorProtocol | None) -> None:
    """Close the file mapping an external tensor keeps once read: its pages count in the resident
    set until then, so a pass replacing every weight of a multi-GB model would end up holding
    all of them. The tensor stays usable (a clone of the model may share it): a later read maps
    the file again. A mapping that an array still views stays open."""
    if isinstance(tensor, ir.ExternalTensor):
        try:
            tensor.release()
        except BufferError:
            pass


def fresh_name(base: str, taken: set) -> str:
    """`base`, or `base_2`, `base_3` … whichever is not in `taken` (a pass naming many new values keeps
    its own set, rather than scanning the graph for each)."""
    name, index = base, 1
    while name in taken:
        index += 1
        name = f"{base}_{index}"
    return name
