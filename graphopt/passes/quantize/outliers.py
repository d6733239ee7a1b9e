"""Outlier input channels of an int8 layer, computed apart in float (LLM.int8()'s decomposition).

A few input channels of a transformer's linear layers peak 10-70x above the median channel,
and under one run-time int8 scale per tensor they leave every other channel a handful of
levels. Their share of x·W is computed in float instead, two ways:

  carved  x = act(x_in·W1 [+ b1]) with act(0) = 0 (Gelu, BiasGelu, FastGelu, Relu) read only by
          MatMuls with constant weights: the outlier columns of W1 (and b1) become zero, so
          x's outlier channels are exactly 0 with no extra node, and they are recomputed apart,
          act(x_in·W1[:, idx] + b1[idx])·W2[idx], and added to each reader's result (one more
          input of the Sum that follows, when one does). A float rewrite, exact, done before
          quantizing; it costs three small nodes (k ≤ 8 channels) per activation.
  masked  any other x: the int8 layer reads x·mask and Gather(x, idx)·W[idx] is added in float:
          a full-size Mul and a Gather more per activation, which costs several times as much
          (quantize_dynamic emits it with the int8 layer; this module picks the channels).

quantize_dynamic carves as it quantizes; static int8 carves first (the `carve_outliers` pass),
so the ranges it calibrates are the carved activations'.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from graphopt.errors import InputError
from graphopt.passes.match import (
    MS_DOMAIN,
    constant_array,
    drop_unused_initializers,
    fresh_node_name,
    infer_types,
    is_op,
    new_initializer,
    only_consumer,
    operands,
)
from graphopt.passes.contract import CHANNELS, Request
from graphopt.passes.quantize._linear import linear_inputs, name_set
from graphopt.passes.registry import Pass, register

# Activations with act(0) = 0, and whether input 1 is a bias added first.
ZERO_AT_ZERO = {("", "Relu"): False, ("", "Gelu"): False, (MS_DOMAIN, "Gelu"): False,
                (MS_DOMAIN, "BiasGelu"): True, (MS_DOMAIN, "FastGelu"): True}


def pick(peaks: np.ndarray | None, width: int, ratio: float, most: int) -> np.ndarray:
    """The channels whose peak is above `ratio` × the median peak, at most `most` of the largest."""
    if not ratio or peaks is None or np.shape(peaks) != (width,):
        return np.zeros(0, np.int64)
    median = float(np.median(peaks))
    order = np.argsort(-peaks, kind="stable")[:most]
    return np.sort(order[peaks[order] > ratio * median]).astype(np.int64)


def weight_of(node: ir.Node, value: ir.Value) -> np.ndarray | None:
    """W of a MatMul reading `value` as x of x·W, W a constant 2-D float32 array."""
    if not is_op(node, "MatMul") or node.inputs[0] is not value or node.inputs[1] is value:
        return None
    weight = constant_array(node.inputs[1])
    return weight if weight is not None and weight.ndim == 2 and weight.dtype == np.float32 else None


def carves(graph: ir.Graph, x: ir.Value, peaks: np.ndarray | None, ratio: float, most: int,
           frozen: Callable[[ir.Node], bool]) -> bool:
    """Whether `carve` would carve x (smoothing leaves such activations to it)."""
    return _plan(graph, x, peaks, ratio, most, frozen) is not None


def _plan(graph: ir.Graph, x: ir.Value, peaks: np.ndarray | None, ratio: float, most: int,
          frozen: Callable[[ir.Node], bool]):
    """(act, its bias or None, the readers, the channels, (MatMul, bias Add) making act's input,
    where each reader's result takes an addend), or None when x cannot or need not be carved."""
    act = x.producer()
    if act is None or act.graph is not graph or (act.domain, act.op_type) not in ZERO_AT_ZERO or \
            x.is_graph_output() or len(act.outputs) != 1 or x.dtype != ir.DataType.FLOAT:
        return None
    readers = [use.node for use in x.uses()]
    weights = [weight_of(node, x) for node in readers]
    if not readers or any(weight is None for weight in weights) or any(node.graph is not graph for node in readers):
        return None
    width = weights[0].shape[0]
    outliers = pick(peaks, width, ratio, most)
    if not len(outliers) or any(weight.shape[0] != width for weight in weights):
        return None
    act_bias = act.inputs[1] if ZERO_AT_ZERO[(act.domain, act.op_type)] and len(act.inputs) > 1 else None
    if len(act.inputs) > (2 if act_bias is not None else 1) or \
            (act_bias is not None and _vector(act_bias, width) is None):
        return None
    up = _projection(graph, act.inputs[0], width)
    targets = [_sum_after(node.outputs[0]) for node in readers]
    if up is None or any(target is None for target in targets) or any(frozen(node) for node in (*readers, up[0])):
        return None
    return act, act_bias, readers, outliers, up, targets


def carve(graph: ir.Graph, x: ir.Value, peaks: np.ndarray | None, ratio: float, most: int,
          frozen: Callable[[ir.Node], bool]) -> list[ir.Node]:
    """Carve x's outlier channels (`pick`) out of the layer producing it (see the module
    docstring); the float MatMuls added (to keep float), or [] when there are none, x is not
    act(x_in·W1 [+ b1]) read only by MatMuls, or one of those nodes is `frozen`."""
    plan = _plan(graph, x, peaks, ratio, most, frozen)
    if plan is None:
        return []
    act, act_bias, readers, outliers, up, targets = plan
    matmul, bias_add = up
    name = fresh_node_name(graph, f"{matmul.name or 'matmul'}/outliers")
    columns = _take(graph, matmul, 1, lambda w: w[:, outliers], lambda w: w.__setitem__((slice(None), outliers), 0),
                    f"{name}_columns")
    nodes = [ir.Node("", "MatMul", [matmul.inputs[0], columns], name=name)]
    if bias_add is not None:
        index = 1 if constant_array(bias_add.inputs[1]) is not None else 0
        nodes.append(ir.Node("", "Add", [nodes[-1].outputs[0], _take(graph, bias_add, index, lambda b: b[outliers],
                                                                      lambda b: b.__setitem__(outliers, 0),
                                                                      f"{name}_bias")],
                             name=fresh_node_name(graph, f"{name}/bias")))
    inputs = [nodes[-1].outputs[0]]
    if act_bias is not None:
        inputs.append(_take(graph, act, 1, lambda b: b[outliers], lambda b: b.__setitem__(outliers, 0),
                            f"{name}_act_bias"))
    nodes.append(ir.Node(act.domain, act.op_type, inputs, list(act.attributes.values()),
                         name=fresh_node_name(graph, f"{name}/{act.op_type}")))
    small = nodes[-1].outputs[0]
    graph.insert_after(act, nodes)
    products = [nodes[0]]
    for reader, (total, consumer) in zip(readers, targets):
        rows = _take(graph, reader, 1, lambda w: w[outliers], lambda w: w.__setitem__(outliers, 0),
                     f"{reader.name or 'matmul'}_outlier_rows")
        product = ir.Node("", "MatMul", [small, rows],
                          name=fresh_node_name(graph, f"{reader.name or 'matmul'}/outliers"))
        graph.insert_after(nodes[-1], product)
        products.append(product)
        _add_into(graph, total, consumer, product.outputs[0])
    for node in [*nodes, *products[1:]]:
        node.outputs[0].dtype = ir.DataType.FLOAT
    return products


def carve_all(graph: ir.Graph, peaks: dict[str, np.ndarray], ratio: float, most: int,
              frozen: Callable[[ir.Node], bool]) -> tuple[set[ir.Node], set[ir.Value]]:
    """`carve` every node output of the graph that has measured `peaks`: (the float MatMuls
    added, the activations carved)."""
    helpers: set[ir.Node] = set()
    carved: set[ir.Value] = set()
    if not ratio or not peaks:
        return helpers, carved
    for node in list(graph):
        for x in node.outputs:
            added = carve(graph, x, peaks[x.name], ratio, most, frozen) if x.name in peaks else []
            if added:
                helpers.update(added)
                carved.add(x)
    return helpers, carved


@register("carve_outliers", min_opset=1)
class CarveOutliers(Pass):
    """Compute the outlier channels of act(x·W) activations apart, in float, carved out of the layer (exact in float).

    Not in the presets: `graphopt quantize --mode static --outlier-ratio R --outlier-mode carve` runs
    it before static int8's calibration. The per-channel peaks of every linear layer's input (its
    CHANNELS request) are measured by the lossy pipeline; without them the pass changes nothing. Carved:
    an activation of the main graph made by act(x_in·W1 [+ b1]), act Gelu, Relu, BiasGelu or
    FastGelu, read only by MatMuls by constant [K, N] float32 weights, whose results (after a
    constant bias Add) are no graph outputs.

    Options:

    - `outlier_ratio`: channels whose peak is above this many times the median peak are carved (> 1).
    - `max_outliers`: at most this many channels per activation, the largest.
    - `exclude`: `;`-separated node names or op types: an activation is not carved when its W1 MatMul
      or one of its readers is excluded (names matching nothing are ignored).
    """

    def __init__(self, outlier_ratio: float = 10.0, max_outliers: int = 8, exclude: str = "") -> None:
        super().__init__()
        if outlier_ratio <= 1:
            raise InputError(f"carve_outliers: outlier_ratio must be above 1, got {outlier_ratio}")
        self.outlier_ratio = outlier_ratio
        self.max_outliers = max_outliers
        self.exclude = name_set(exclude)

    def measures(self) -> bool:
        return True

    def requires(self, model: ir.Model) -> list[Request]:
        return [Request(CHANNELS, linear_inputs(model))]

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        infer_types(self, model)
        _, carved = carve_all(model.graph, self.statistics.peaks(), self.outlier_ratio, self.max_outliers,
                              lambda node: node.name in self.exclude or node.op_type in self.exclude)
        if carved:
            self.changed(f"{len(carved)} activations' outlier channels (peak above {self.outlier_ratio:g}x the "
                         "median) carved out of the layer producing them and computed apart in float")
        return ir.passes.PassResult(model, modified=bool(carved))


def _vector(value: ir.Value, width: int) -> np.ndarray | None:
    array = constant_array(value)
    return array if array is not None and array.shape == (width,) and array.dtype == np.float32 else None


def _projection(graph: ir.Graph, value: ir.Value, width: int) -> tuple[ir.Node, ir.Node | None] | None:
    """(MatMul, bias Add or None) computing `value` = x_in·W1 [+ b1], W1 [K, width] constant, each
    result read only by the next."""
    node = value.producer()
    if only_consumer(value) is None:
        return None
    bias_add = None
    pair = operands(node, "Add")
    if pair is not None and node.graph is graph:
        bias_add = node
        constant = 1 if _vector(pair[1], width) is not None else 0 if _vector(pair[0], width) is not None else None
        if constant is None or only_consumer(pair[1 - constant]) is not bias_add:
            return None
        node = pair[1 - constant].producer()
    if not is_op(node, "MatMul") or node.graph is not graph:
        return None
    weight = weight_of(node, node.inputs[0])
    return (node, bias_add) if weight is not None and weight.shape[1] == width else None


def _sum_after(value: ir.Value) -> tuple[ir.Value, ir.Node | None] | None:
    """Where a reader's result (after its constant bias Add, if any) can take one more addend:
    (the value, the Sum reading it or None for a new Add); None when it is a graph output."""
    consumer = only_consumer(value)
    pair = operands(consumer, "Add")
    if pair is not None and any(constant_array(item) is not None for item in pair):
        value, consumer = consumer.outputs[0], only_consumer(consumer.outputs[0])
    if value.is_graph_output():
        return None
    return value, consumer if is_op(consumer, "Sum") and consumer.graph is value.producer().graph else None


def _add_into(graph: ir.Graph, total: ir.Value, consumer: ir.Node | None, addend: ir.Value) -> None:
    if consumer is not None:
        consumer.resize_inputs(len(consumer.inputs) + 1)
        consumer.replace_input_with(len(consumer.inputs) - 1, addend)
        return
    uses = list(total.uses())
    add = ir.Node("", "Add", [total, addend], name=fresh_node_name(graph, f"{total.name}/outliers"))
    add.outputs[0].dtype, add.outputs[0].shape = total.dtype, total.shape
    graph.insert_after(total.producer(), add)
    for use in uses:
        use.node.replace_input_with(use.idx, add.outputs[0])


def _take(graph: ir.Graph, node: ir.Node, index: int, part, clear, base: str) -> ir.Value:
    """The `part` of a node's constant input as a new initializer; the node then reads a copy
    with that part cleared (zeros)."""
    old = node.inputs[index]
    array = constant_array(old)
    taken = new_initializer(graph, np.ascontiguousarray(part(array)), base)
    array = array.copy()
    clear(array)
    node.replace_input_with(index, new_initializer(graph, array, old.name or base))
    drop_unused_initializers(graph, [old])
    return taken
