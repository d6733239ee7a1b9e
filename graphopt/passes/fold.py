"""Constant folding under a size budget, and folding of shape computations once shapes are known.

Both wrap onnxscript's FoldConstantsPass. What we add: a model-wide growth budget (the sum
of folded outputs minus the constants they free), a per-output size cap, failures of the
evaluator recorded as skips instead of raised, and shape folding restricted to integer math.
"""

from __future__ import annotations

import contextlib
import logging

import onnx
import onnx_ir as ir
from onnxscript.optimizer import _constant_folding

from graphopt import checks
from graphopt.passes.registry import Pass, register

_MIB = 1 << 20
_UNLIMITED_ELEMENTS = 1 << 62
_INTEGER_TYPES = frozenset(
    {ir.DataType.INT64, ir.DataType.INT32, ir.DataType.INT16, ir.DataType.INT8,
     ir.DataType.UINT64, ir.DataType.UINT32, ir.DataType.UINT16, ir.DataType.UINT8,
     ir.DataType.BOOL}
)
_SHAPE_OPS = frozenset({"Shape", "Size"})
_SHAPE_TENSOR_ELEMENTS = 64


class _BudgetedFolder(_constant_folding.FoldConstantsPass):
    """onnxscript's folder, refusing outputs that exceed the caps and recording why."""

    def __init__(self, owner: Pass, *, max_input_bytes: int, max_output_bytes: int,
                 max_growth_bytes: int, shape_inference: bool, should_fold=lambda node: None):
        super().__init__(
            shape_inference=shape_inference,
            input_size_limit=max(1, max_input_bytes // 4),
            output_size_limit=_UNLIMITED_ELEMENTS,
            should_fold=should_fold,
        )
        self._owner = owner
        self._max_output_bytes = max_output_bytes
        self._max_growth_bytes = max_growth_bytes
        self.growth_bytes = 0
        self._freed_by: set[int] = set()
        self._current: ir.Node | None = None

    def run(self, model: ir.Model) -> bool:
        """Fold the model; return whether it changed."""
        with self._failures_as_skips():
            return self(model).modified

    @contextlib.contextmanager
    def _failures_as_skips(self):
        """onnxscript logs (rather than raises) evaluator failures; turn them into skip reasons."""
        folding_logger = logging.getLogger(_constant_folding.__name__)
        folder = self

        class _ToSkips(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                message = record.getMessage()
                if message.startswith("Evaluation failed") and folder._current is not None:
                    node = folder._current
                    folder._owner.skip(f"{node.op_type} {node.name!r} not folded: {message}")

        handler = _ToSkips(logging.WARNING)
        saved = folding_logger.level, folding_logger.propagate
        folding_logger.addHandler(handler)
        folding_logger.setLevel(logging.WARNING)
        folding_logger.propagate = False
        try:
            yield
        finally:
            folding_logger.removeHandler(handler)
            folding_logger.setLevel(saved[0])
            folding_logger.propagate = saved[1]

    def process_node(self, node: ir.Node, is_function: bool):
        self._current = node
        try:
            return super().process_node(node, is_function)
        except Exception as error:  # the evaluator's failure must not end the pipeline
            cause = error.__cause__ or error
            self._owner.skip(f"{node.op_type} {node.name!r} not folded: {type(cause).__name__}: {cause}")
            return None

    def _prepare_folded_tensor(self, node: ir.Node, output_name: str, output_array):
        tensor = super()._prepare_folded_tensor(node, output_name, output_array)
        if tensor is None:
            return None
        freed = 0
        if id(node) not in self._freed_by:
            self._freed_by.add(id(node))
            freed = sum(
                value.const_value.nbytes
                for value in node.inputs
                if value is not None and value.const_value is not None
                and len(value.uses()) == 1 and not value.is_graph_output()
            )
        growth = tensor.nbytes - freed
        if growth > 0 and tensor.nbytes > self._max_output_bytes:
            self._owner.skip(
                f"{node.op_type} {node.name!r} not folded: result {tensor.nbytes} bytes "
                f"> max_output_bytes {self._max_output_bytes}"
            )
            return None
        if growth > 0 and self.growth_bytes + growth > self._max_growth_bytes:
            self._owner.skip(
                f"{node.op_type} {node.name!r} not folded: model would grow past "
                f"max_growth_bytes {self._max_growth_bytes}"
            )
            return None
        self.growth_bytes += max(growth, 0)
        return tensor


@register("fold_constants")
class FoldConstants(Pass):
    """Evaluate nodes whose inputs are all constant, within a model-size growth budget."""

    def __init__(self, max_input_bytes: int = _MIB, max_output_bytes: int = _MIB,
                 max_growth_bytes: int = 4 * _MIB) -> None:
        super().__init__()
        self.max_input_bytes = max_input_bytes
        self.max_output_bytes = max_output_bytes
        self.max_growth_bytes = max_growth_bytes

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        folder = _BudgetedFolder(
            self,
            max_input_bytes=self.max_input_bytes,
            max_output_bytes=self.max_output_bytes,
            max_growth_bytes=self.max_growth_bytes,
            shape_inference=False,
        )
        return ir.passes.PassResult(model, modified=folder.run(model))


def _is_shape_computation(node: ir.Node) -> bool | None:
    if node.op_type in _SHAPE_OPS and node.domain in ("", "ai.onnx"):
        return True
    if all(output.dtype in _INTEGER_TYPES for output in node.outputs):
        return None
    return False


@register("fold_shapes")
class FoldShapes(Pass):
    """Infer shapes, then replace Shape/Size of static tensors and the integer math on them."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        inferred = self._infer_shapes(model)
        folder = _BudgetedFolder(
            self,
            max_input_bytes=64 * 1024,
            max_output_bytes=64 * 1024,
            max_growth_bytes=_MIB,
            shape_inference=False,
            should_fold=_is_shape_computation,
        )
        return ir.passes.PassResult(model, modified=folder.run(model) or inferred)

    def _infer_shapes(self, model: ir.Model) -> bool:
        """Run ONNX shape inference on the structure; adopt only what adds information.

        Skipped when every node output already has a dtype and a shape: inference could then
        at most turn a symbolic dim into a number, which exported models do not leave behind.
        """
        if all(value.dtype is not None and value.shape is not None
               for node in ir.traversal.RecursiveGraphIterator(model.graph) for value in node.outputs):
            return False
        proto = checks.structure_proto(model, keep_elements=_SHAPE_TENSOR_ELEMENTS)
        try:
            inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=False, data_prop=True)
        except Exception as error:  # inference gives up on some graphs; folding still works
            self.skip(f"shape inference failed: {checks.first_line(str(error))}")
            return False
        found: dict[str, onnx.TypeProto] = {}
        _collect_value_types(inferred.graph, found)
        modified = False
        for node in ir.traversal.RecursiveGraphIterator(model.graph):
            for value in node.outputs:
                type_proto = found.get(value.name)
                if type_proto is not None:
                    modified |= _adopt(value, type_proto)
        return modified


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
