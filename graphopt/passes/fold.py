"""Constant folding under a size budget, and folding of shape computations once shapes are known.

Both wrap onnxscript's FoldConstantsPass after filling in missing shapes (graphopt.shapes).
What we add: a model-wide growth budget (the sum of folded outputs minus the constants they
free), a per-output size cap, failures of the evaluator recorded as skips instead of raised,
and a shape-only variant (fold_shapes) that folds nothing but integer math.
"""

from __future__ import annotations

import contextlib
import logging

import onnx_ir as ir
from onnxscript.optimizer import _constant_folding

from graphopt import shapes
from graphopt.passes.registry import Pass, register

_MIB = 1 << 20
_UNLIMITED_ELEMENTS = 1 << 62
_INTEGER_TYPES = frozenset(
    {ir.DataType.INT64, ir.DataType.INT32, ir.DataType.INT16, ir.DataType.INT8,
     ir.DataType.UINT64, ir.DataType.UINT32, ir.DataType.UINT16, ir.DataType.UINT8,
     ir.DataType.BOOL}
)
_SHAPE_OPS = frozenset({"Shape", "Size"})


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


def _infer(owner: Pass, model: ir.Model) -> bool:
    try:
        return shapes.infer_shapes(model, only_if_missing=True)
    except shapes.InferenceFailed as error:
        owner.skip(f"shape inference failed: {error}")
        return False


@register("fold_constants")
class FoldConstants(Pass):
    """Evaluate nodes whose inputs are all constant (static shapes too), within a growth budget."""

    def __init__(self, max_input_bytes: int = _MIB, max_output_bytes: int = _MIB,
                 max_growth_bytes: int = 4 * _MIB, infer_shapes: bool = True) -> None:
        super().__init__()
        self.max_input_bytes = max_input_bytes
        self.max_output_bytes = max_output_bytes
        self.max_growth_bytes = max_growth_bytes
        self.infer_shapes = infer_shapes

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        inferred = _infer(self, model) if self.infer_shapes else False
        folder = _BudgetedFolder(
            self,
            max_input_bytes=self.max_input_bytes,
            max_output_bytes=self.max_output_bytes,
            max_growth_bytes=self.max_growth_bytes,
            shape_inference=False,
        )
        return ir.passes.PassResult(model, modified=folder.run(model) or inferred)


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
        inferred = _infer(self, model)
        folder = _BudgetedFolder(
            self,
            max_input_bytes=64 * 1024,
            max_output_bytes=64 * 1024,
            max_growth_bytes=_MIB,
            shape_inference=False,
            should_fold=_is_shape_computation,
        )
        return ir.passes.PassResult(model, modified=folder.run(model) or inferred)
