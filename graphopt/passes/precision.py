"""convert_precision: float16 or bfloat16 weights and compute, float32 kept where the EP, the range or the budget needs it.

A node computes in half precision when its op's schema lets its float32 type parameters take the
format, the execution provider has a kernel for it in that format (graphopt.runtime.kernels, handed
over by the lossy pipeline), and no value it reads or writes was measured beyond the format's range
(float16: 65504, with a factor of HEADROOM to spare; bfloat16 has float32's range). Where no range
was measured on real data — no calibration data (synthesized inputs), or inside a body — the ops of
the OVERFLOWING list (exponentials, sums and products of many elements) stay float32 in float16.
Inputs of a fixed float32 type (Resize's scales) stay float32. Shape math (float values computed
from Shape) and nodes that make floats from a dtype attribute stay float32. If/Loop/Scan bodies are
converted node by node like the main graph, their inputs and outputs kept float32 (the If, Loop or
Scan keeps its types; a body reads a captured half value as it is). Data-movement ops (Reshape,
Transpose, Concat …) follow the value they move. Casts go only where a half value meets a float32
reader, one per value, and a Cast of a Cast's output reads the first Cast's input instead
(float16 → float32 → float16 is exact).
With `keep_io_types` the model's inputs and outputs keep float32 (an output keeps its name).

A node computed in float32 still stores its float32 weights of `min_weights` elements or more in the
format, widened by a Cast that ONNX Runtime folds when it loads the session: the file halves, the
run time is float's. That is all `compute="auto"` does where the EP has no half kernel for MatMul,
Conv or Gemm (ONNX Runtime's x86 CPU build: half arithmetic is emulated there, and ONNX Runtime
widens a half model to float32 when it loads it). A weight whose largest value is beyond the format's
range, or that the format would change by more than WEIGHT_ERROR (values below its normal range:
float16 flushes them), stays float32, said in the report; onnxconverter-common clamps such values
to ±1e4 instead. Float32's extremes (±3.4e38: an attention mask's "minus infinity") become the
format's, and the values measured are judged without them. Where the EP has no half kernel for a
recurrent op (LSTM, GRU, RNN), or a node runs in training mode, it stays float32 whatever `compute`
says: ONNX Runtime 1.32's CPU EP crashed loading a half LSTM, and its half running statistics
differed from run to run. A layer's ladder: computed in the format, its weights only, float32.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from graphopt.errors import InputError
from graphopt.passes.contract import FALLBACK_REASON, LARGEST, LossyPass, OpTyping, Request
from graphopt.passes.match import constant_tensor, fresh_name, infer_types
from graphopt.passes.quantize._linear import check_names, name_set
from graphopt.passes.registry import register
from graphopt.runtime.compare import TOLERANCES


@dataclasses.dataclass(frozen=True)
class Format:
    name: str
    dtype: ir.DataType
    type_str: str
    largest: float  # the largest finite value
    weight_error: float  # a weight changed by more than this (relative, in norm) stays float32
    min_opset: int


FORMATS = {
    "fp16": Format("fp16", ir.DataType.FLOAT16, "tensor(float16)", 65504.0, 1e-3, 1),
    "bf16": Format("bf16", ir.DataType.BFLOAT16, "tensor(bfloat16)", 3.3895313892515355e38, 8e-3, 13),  # 0x7F7F
}
HEADROOM = 2  # a value measured beyond half the format's largest stays float32: other inputs go further
COMPUTE = ("auto", "all", "weights")
HEAVY = (("", "MatMul"), ("", "Conv"), ("", "Gemm"))  # auto computes in half where the EP has these in half
MOVERS = frozenset({"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Slice", "Gather",
                    "GatherElements", "GatherND", "Concat", "Split", "Expand", "Tile", "DepthToSpace",
                    "SpaceToDepth"})
# ops that make floats from an attribute, or run bodies (converted on their own): they stay as they are
AS_THEY_ARE = frozenset({"Cast", "CastLike", "BitCast", "Constant", "ConstantOfShape", "EyeLike", "RandomNormal",
                         "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli",
                         "If", "Loop", "Scan", "SequenceMap"})
# recurrent ops stay float32 where the EP has no half kernel for them, whatever `compute` says: the
# zoo's LSTM in float16 crashed ONNX Runtime 1.32's CPU EP at load (a segmentation fault, not an error)
RECURRENT = frozenset({"LSTM", "GRU", "RNN"})
# where no value range was measured on real data (no calibration data; inside a body, whose values are
# not measured), these stay float32 in float16: exponentials and sums or products of many elements
# reach beyond 65504 from inputs well within it
OVERFLOWING = frozenset({"Exp", "Pow", "Softplus", "ReduceSum", "ReduceSumSquare", "ReduceL1", "ReduceL2",
                         "ReduceLogSumExp", "ReduceProd", "CumSum", "LpNormalization", "LpPool", "GlobalLpPool"})
SHAPE_CONSTANT = 64  # a constant of at most this many elements can be part of shape math
FLOAT = ir.DataType.FLOAT


@register("convert_precision")
class ConvertPrecision(LossyPass):
    """Convert weights and compute to float16 or bfloat16 where the EP has the kernels and the values fit; float32 elsewhere.

    Not in O1-O3: the `fp16` and `bf16` presets and `graphopt compress --precision` run it.

    Options:

    - `precision`: fp16 or bf16.
    - `compute`: auto (in half where the execution provider has half kernels for MatMul, Conv and
      Gemm, else weights only), all (every node whose schema allows it, for runtimes that compute
      in half whatever ONNX Runtime's CPU build does: TensorRT, Core ML), weights (store the weights
      in half, compute in float32).
    - `keep_io_types`: the model's float32 inputs and outputs stay float32.
    - `exclude`: `;`-separated node names or op types left in float32.
    - `min_weights`: a smaller float32 weight of a node computed in float32 stays float32.
    """

    cost = "bytes"
    objective = "size+latency"  # half the file; not slower than float (a folded decoder, or half kernels)
    verb = "converted"
    folds_at_load = True  # the weights-only decoders: validated after ONNX Runtime's basic optimizations
    handles = "float32 weights and the nodes computing on float32 values"

    def __init__(self, precision: str = "fp16", compute: str = "auto", keep_io_types: bool = True,
                 exclude: str = "", min_weights: int = 1024) -> None:
        super().__init__()
        if precision not in FORMATS:
            raise InputError(f"convert_precision: precision must be one of {', '.join(FORMATS)}, got {precision!r}")
        if compute not in COMPUTE:
            raise InputError(f"convert_precision: compute must be one of {', '.join(COMPUTE)}, got {compute!r}")
        self.format, self.compute, self.keep_io_types = FORMATS[precision], compute, keep_io_types
        self.exclude, self.min_weights = name_set(exclude), min_weights
        self.tolerance = TOLERANCES[precision]
        self.kernel_type = self.format.type_str

    def needs_opset(self, target: str) -> int:
        return self.format.min_opset

    def computes(self) -> bool:
        """Whether nodes compute in half (else only the weights are stored in it)."""
        if self.compute != "auto":
            return self.compute == "all"
        return self.kernels is not None and any(op in self.kernels.typed for op in HEAVY)

    def measures(self) -> bool:
        """float16 computed: the values' largest magnitudes (for auto, once the EP's kernels are known)."""
        return self.format.name == "fp16" and self.computes()

    def requires(self, model: ir.Model) -> list[Request]:
        if not self.measures():
            return []
        infer_types(self, model)
        return [Request(LARGEST, tuple(value.name for node in model.graph if node.op_type not in MOVERS
                                        for value in node.outputs if value.dtype == FLOAT and value.name))]

    def ladder(self) -> tuple[str, ...]:
        weights = f"{self.format.name} weights"
        return (self.format.name, weights, self.untouched) if self.computes() else (weights, self.untouched)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        check_names(model, self.exclude)
        if "" not in model.opset_imports and "ai.onnx" not in model.opset_imports:
            self.skip("the model imports no ONNX opset: the Casts it would need have none")
            return ir.passes.PassResult(model, modified=False)
        infer_types(self, model)
        graph = model.graph
        plan = _Plan(self, graph)
        for node in _nodes(graph):
            plan.decide(node)
        changed = _Retype(model, self.format, plan.half, self.keep_io_types).apply(plan.weights, plan.halves)
        done = [outcome for outcome in self.outcomes if outcome.changed]
        if done:
            guessed = self.measures() and self.statistics is not None and self.statistics.synthesized
            self.changed(f"{len(done)} layers to {self.format.name} ({changed} values)"
                         + ("; value ranges measured on synthesized inputs (no calibration data)" if guessed else ""))
        return ir.passes.PassResult(model, modified=bool(changed))


class _Plan:
    """Which nodes compute in half (with the type parameters they convert) and which weights are
    stored in half, decided node by node in the graph's order; records each layer's outcome."""

    def __init__(self, pass_: ConvertPrecision, graph: ir.Graph) -> None:
        self.pass_, self.format = pass_, pass_.format
        self.kernels = pass_.kernels
        self.computes = pass_.computes()
        self.half: dict[ir.Node, tuple[OpTyping, set[str]]] = {}
        self.weights: dict[ir.Value, ir.Node] = {}  # float32 constants stored in half -> the layer they belong to
        self.halves: dict[ir.Value, np.ndarray | None] = {}  # a weight in the format, once its refusal is computed
        self.graph, self.shape_math = graph, _shape_math(graph)
        limit = self.format.largest / HEADROOM
        self.out_of_range = {name: largest for name, largest in pass_.statistics.largest.items()
                             if not largest <= limit}

    def decide(self, node: ir.Node) -> None:
        typing = self.kernels.typing.get((_domain(node), node.op_type)) if self.kernels else None
        floats = [value for value in (*node.inputs, *node.outputs) if value is not None and value.dtype == FLOAT]
        if not floats or (node.op_type in AS_THEY_ARE and not node.domain) or \
                any(value in self.shape_math for value in node.outputs):
            return  # no float data, or a node that stays as it is: not a layer
        weights = [value for value in node.inputs if value is not None and value.dtype == FLOAT
                   and value.is_initializer() and constant_tensor(value) is not None]
        before = sum(constant_tensor(value).nbytes for value in weights)
        params = _params(node, typing, self.format.type_str) if typing is not None else set()
        mover = node.op_type in MOVERS and not node.domain
        why = self._float_reason(node, typing, params, mover)
        if why is None:
            self.half[node] = (typing, params)
            for index, value in enumerate(node.inputs):
                if value in weights and typing.input_type(index) in params:
                    self.weights.setdefault(value, node)
            if not mover:
                self.pass_.record(node, self.format.name, before=before, after=before // 2,
                                  detail=f"computed in {self.format.name}")
            return
        held = self.pass_.held(node)
        excluded = node.name in self.pass_.exclude or node.op_type in self.pass_.exclude
        refusals = {} if held or excluded else {value: self._refusal(node, value) for value in weights
                                                 if constant_tensor(value).size >= self.pass_.min_weights}
        stored = [value for value, refusal in refusals.items() if not refusal]
        for value in stored:
            self.weights.setdefault(value, node)
        if stored:
            after = before - sum(constant_tensor(value).nbytes for value in stored) // 2
            self.pass_.record(node, f"{self.format.name} weights", before=before, after=after,
                              reason="" if not self.computes or mover else why,
                              detail=f"weights stored in {self.format.name}, computed in float32"
                                     + ("" if self.computes else f": {self._why_not_computing()}"))
        elif not mover and (self.computes or refusals or held or excluded):
            refused = next((f"its weight {value.name!r}: {refusal}" for value, refusal in refusals.items()), "")
            self.pass_.keep(node, held or ("excluded" if excluded else "") or refused or why, before=before)

    def _float_reason(self, node: ir.Node, typing: OpTyping | None, params: set[str], mover: bool) -> str | None:
        """Why `node` computes in float32, or None when it computes in half."""
        if not self.computes:
            return f"compute stays float32 ({self._why_not_computing()})"
        if node.name in self.pass_.exclude or node.op_type in self.pass_.exclude:
            return "excluded"
        held = self.pass_.held(node) or \
            (FALLBACK_REASON if self.pass_.backed_off.get(node.name) == f"{self.format.name} weights" else None)
        if held:
            return held
        if typing is None:
            return f"no schema of {node.domain or 'ai.onnx'}::{node.op_type} is known"
        training = node.attributes.get("training_mode")
        if training is not None and training.value:  # ONNX's node cases: two runs, two running means
            return "training mode: ONNX Runtime's float16 running statistics differ from run to run"
        if not params:
            return f"its schema takes no {self.format.type_str} for its float32 values"
        if any(value is not None and value.dtype is None for value in (*node.inputs, *node.outputs)):
            return "a value it reads or writes has no known type"
        kernel = not self.kernels.listed or (_domain(node), node.op_type) in self.kernels.typed
        if not kernel and (self.pass_.compute == "auto" or node.op_type in RECURRENT):
            crash = " (ONNX Runtime 1.32's CPU EP crashes loading a half LSTM it has to widen)" \
                if node.op_type in RECURRENT else ""
            return f"the {self.kernels.ep} EP has no {self.format.name} kernel for it{crash}"
        if mover:
            data = next((value for value in node.inputs if value is not None and value.dtype == FLOAT), None)
            producer = data.producer() if data is not None else None
            if data is not None and constant_tensor(data) is None and (producer is None or producer not in self.half):
                return "it moves a float32 value"
            return None
        for value in (*node.inputs, *node.outputs):
            if value is not None and value.name in self.out_of_range:
                return (f"{value.name!r} was measured up to {self.out_of_range[value.name]:.4g}, beyond "
                        f"{self.format.name}'s range with a factor of {HEADROOM} to spare")
        unmeasured = self._unmeasured(node)
        if unmeasured:
            return unmeasured
        for value in node.inputs:
            tensor = constant_tensor(value) if value is not None and value.dtype == FLOAT else None
            refusal = self._weight_refusal(value) if tensor is not None else ""
            if refusal:
                return f"its weight {value.name!r}: {refusal}"
        return None

    def _unmeasured(self, node: ir.Node) -> str:
        """Why an op of the OVERFLOWING list stays float32 in float16 (its range unknown on real data), or ""."""
        if self.format.name != "fp16" or node.op_type not in OVERFLOWING or node.domain not in ("", "ai.onnx"):
            return ""
        statistics = self.pass_.statistics
        outputs = [value.name for value in node.outputs if value.dtype == FLOAT]
        if statistics is None or any(name not in statistics.largest for name in outputs):
            where = "inside a body, where values are not measured" if node.graph is not self.graph else \
                "no value was measured"
            return f"{where}: {node.op_type} can go beyond fp16's range from inputs within it (the conservative list)"
        if statistics.synthesized:
            return (f"its values were measured on synthesized inputs only: {node.op_type} can go beyond fp16's "
                    "range on real data (the conservative list; calibration data measures it)")
        return ""

    def _why_not_computing(self) -> str:
        if self.pass_.compute == "weights":
            return "compute=weights"
        if self.kernels is None or not self.kernels.listed:
            return "the EP lists no kernels"
        return (f"the {self.kernels.ep} EP has no {self.format.name} kernel for MatMul, Conv or Gemm: "
                "weights only, widened once when ONNX Runtime loads the model")

    def _weight_refusal(self, value: ir.Value) -> str:
        """_weight_refusal of a float32 constant, its array in the format kept for the write (converted once)."""
        refusal, self.halves[value] = _weight_refusal(constant_tensor(value).numpy(), self.format)
        return refusal

    def _refusal(self, node: ir.Node, value: ir.Value) -> str:
        """Why a weight of a node computed in float32 stays float32, or ""."""
        refusal = self._weight_refusal(value)
        if refusal:
            self.pass_.skip(f"{node.op_type} {node.name!r}: its weight {value.name!r} stays float32: {refusal}")
        return refusal


def _weight_refusal(array: np.ndarray, format_: Format) -> tuple[str, np.ndarray | None]:
    """(why a float32 weight cannot be stored in the format or "", the array in the format when it can).
    Float32's extremes (±3.4e38, what exporters write for "minus infinity" in an attention mask) and
    infinities are no obstacle: they become the format's extremes."""
    if not array.size:
        return "", _in_format(array, format_)
    usual = ~_extremes(array)
    ordinary = array[usual]
    largest = float(np.max(np.abs(ordinary))) if ordinary.size else 0.0
    if not np.isfinite(largest) or largest > format_.largest:
        return f"its largest value {largest:.4g} is beyond {format_.name}'s range", None
    converted = _in_format(array, format_)
    norm = float(np.linalg.norm(ordinary.astype(np.float64)))
    error = float(np.linalg.norm(converted[usual].astype(np.float64) - ordinary)) / norm if norm else 0.0
    if error > format_.weight_error:
        return f"{format_.name} would change it by {error:.2e} (relative; values below its normal range)", None
    return "", converted


def _extremes(array: np.ndarray) -> np.ndarray:
    """Where an array holds float32's largest magnitude or an infinity."""
    return np.isinf(array) | (np.abs(array) >= np.finfo(np.float32).max)


def _in_format(array: np.ndarray, format_: Format) -> np.ndarray:
    """The array in the format, float32's extremes as the format's (not rounded to infinity: a mask's
    0 x -inf is NaN where 0 x -65504 is 0)."""
    finite_extremes = _extremes(array) & np.isfinite(array)
    if finite_extremes.any():
        array = np.where(finite_extremes, np.sign(array) * format_.largest, array)
    return array.astype(_numpy_type(format_))


def _numpy_type(format_: Format):
    return ir.DataType.FLOAT16.numpy() if format_.name == "fp16" else ir.DataType.BFLOAT16.numpy()


def _domain(node: ir.Node) -> str:
    return "" if node.domain == "ai.onnx" else node.domain


def _params(node: ir.Node, typing: OpTyping, type_str: str) -> set[str]:
    """The type parameters bound to the node's float32 values that take `type_str`; empty when one
    bound to float32 data and shared by others does not take it."""
    bound = set()
    for index, value in enumerate(node.inputs):
        if value is not None and value.dtype == FLOAT:
            bound.add(typing.input_type(index))
    for index, value in enumerate(node.outputs):
        if value.dtype == FLOAT:
            bound.add(typing.output_type(index))
    params = {param for param in bound if param in typing.allowed}
    return {param for param in params if type_str in typing.allowed[param]}


def _nodes(graph: ir.Graph):
    """The graph's nodes in order, a body's after the node that runs it."""
    return ir.traversal.RecursiveGraphIterator(graph)


def _shape_math(graph: ir.Graph) -> set[ir.Value]:
    """Values computed only from Shape/Size and small constants (their float ones stay float32); a
    table looked up at shape-derived positions (position embeddings) is data, not shape math."""
    shaped: set[ir.Value] = set()
    for node in _nodes(graph):
        if node.op_type in ("Shape", "Size") and not node.domain:
            shaped.update(node.outputs)
            continue
        inputs = [value for value in node.inputs if value is not None]
        if inputs and any(value in shaped for value in inputs) and \
                all(value in shaped or _small_constant(value) for value in inputs):
            shaped.update(node.outputs)
    return shaped


def _small_constant(value: ir.Value) -> bool:
    tensor = constant_tensor(value)
    return tensor is not None and tensor.size <= SHAPE_CONSTANT


class _Retype:
    """Changes the element types the plan decided: half nodes' outputs, constants, the model's inputs
    and outputs, and a Cast wherever a value meets a reader of the other type."""

    def __init__(self, model: ir.Model, format_: Format, half: dict[ir.Node, tuple[OpTyping, set[str]]],
                 keep_io_types: bool) -> None:
        self.graph, self.format, self.half, self.keep_io_types = model.graph, format_, half, keep_io_types
        self.graphs = list(model.graphs())  # the main graph, then the bodies of If/Loop/Scan, nested ones too
        graph = self.graph
        self.casts: dict[tuple[ir.Value, ir.DataType], ir.Value] = {}
        self.count = 0
        # the names taken, gathered once: a Cast per weight of a large model would scan the graph each time
        self.value_names = {value.name for body in self.graphs for value in (*body.inputs, *body.initializers.values())}
        self.value_names |= {value.name for node in _nodes(graph) for value in node.outputs}
        self.node_names = {node.name for node in _nodes(graph)}

    def apply(self, weights: dict[ir.Value, ir.Node], halves: dict[ir.Value, np.ndarray | None]) -> int:
        floats = self._float_values()
        for node, (typing, params) in self.half.items():
            for index, value in enumerate(node.outputs):
                if value.dtype == FLOAT and typing.output_type(index) in params:
                    _retype(value, self.format.dtype)
                    self.count += 1
        for value in weights:
            self._store(value, halves.get(value))
        if not self.keep_io_types:
            for value in self.graph.inputs:
                if value.dtype == FLOAT:
                    _retype(value, self.format.dtype)
                    self.count += 1
        for value in floats:
            for use in list(value.uses()):
                wanted = self._wanted(use.node, use.idx)
                if value.dtype != wanted:
                    use.node.replace_input_with(use.idx, self._cast(value, wanted))
        for body in self.graphs:  # a body's outputs stay float32: If, Loop and Scan keep their types
            if body is not self.graph or self.keep_io_types:
                for index, value in enumerate(body.outputs):
                    if value.dtype == self.format.dtype and value in floats and value.producer() is not None:
                        self._keep_output(body, index, value)
        return self.count

    def _float_values(self) -> dict[ir.Value, None]:
        """The graph's float32 values in its order (the Casts are made in that order: the same file each run)."""
        values = [value for body in self.graphs for value in (*body.inputs, *body.initializers.values())]
        values += [value for node in _nodes(self.graph) for value in node.outputs]
        return dict.fromkeys(value for value in values if value.dtype == FLOAT)

    def _wanted(self, node: ir.Node, index: int) -> ir.DataType:
        typing, params = self.half.get(node, (None, set()))
        if typing is not None and typing.input_type(index) in params:
            return self.format.dtype
        return FLOAT

    def _store(self, value: ir.Value, array: np.ndarray | None) -> None:
        """A float32 constant in half, in place (readers wanting float32 get a Cast)."""
        array = _in_format(value.const_value.numpy(), self.format) if array is None else array
        value.const_value = ir.tensor(array, dtype=self.format.dtype, name=value.name)
        _retype(value, self.format.dtype)
        self.count += 1

    def _cast(self, value: ir.Value, dtype: ir.DataType) -> ir.Value:
        producer = value.producer()
        if producer is not None and producer.op_type == "Cast" and not producer.domain and \
                producer.inputs[0] is not None and producer.inputs[0].dtype == dtype:
            return producer.inputs[0]  # half → float32 → half is exact: read the half value
        key = (value, dtype)
        if key not in self.casts:
            suffix = "float" if dtype == FLOAT else self.format.name
            self.casts[key] = self._new_cast(value, dtype, self._name(f"{value.name or 'value'}_{suffix}"))
        return self.casts[key]

    def _new_cast(self, value: ir.Value, dtype: ir.DataType, name: str) -> ir.Value:
        """Cast(value) to `dtype`, its output named `name`, placed after the value's producer."""
        node = ir.node("Cast", [value], attributes={"to": dtype}, name=fresh_name(f"Cast_{name}", self.node_names))
        self.node_names.add(node.name)
        node.outputs[0].name, node.outputs[0].dtype, node.outputs[0].shape = name, dtype, value.shape
        self._insert(node, value)
        return node.outputs[0]

    def _name(self, base: str) -> str:
        name = fresh_name(base, self.value_names)
        self.value_names.add(name)
        return name

    def _insert(self, node: ir.Node, value: ir.Value) -> None:
        """`node` after `value`'s producer, else first in the graph that holds `value` (an input or initializer)."""
        producer = value.producer()
        if producer is not None and producer.graph is not None:
            producer.graph.insert_after(producer, node)
            return
        graph = value.graph or self.graph
        if len(graph):
            graph.insert_before(graph[0], node)
        else:
            graph.append(node)

    def _keep_output(self, graph: ir.Graph, index: int, value: ir.Value) -> None:
        """The graph's output `value` (now half) read through a Cast to float32 under its own name."""
        name = value.name
        value.name = self._name(f"{name}_{self.format.name}")
        graph.outputs[index] = self._new_cast(value, FLOAT, name)


def _retype(value: ir.Value, dtype: ir.DataType) -> None:
    """A new type for `value`: setting `dtype` changes its type object in place, which a clone of the
    model shares (the fallback's next trial would start from a half model)."""
    value.type = ir.TensorType(dtype)
