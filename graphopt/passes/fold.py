"""Constant folding under a size budget, and folding of shape computations once shapes are known.

Both wrap onnxscript's FoldConstantsPass after filling in missing shapes (graphopt.shapes).
What we add: a model-wide growth budget (the sum of folded outputs minus the constants they
free), per-input and per-output size caps in bytes, rewrites the model's opset lacks and
failures of the evaluator recorded as skips instead of raised, and a shape-only variant
(fold_shapes) that folds nothing but integer math.
"""

from __future__ import annotations

import contextlib
import logging

import numpy as np
import onnx
import onnx_ir as ir
from onnxscript.optimizer import _constant_folding

from graphopt import checks, shapes
from graphopt.passes.registry import Pass, register

_TILE = 64
# a folded result at least this many times the bytes of the constants it reads, and larger than the
# floor, is refused: a decoder of packed weights (weight sharing's codebook look-up, a float16 weight's
# widening Cast) that ONNX Runtime folds at load anyway, whose folding here would undo the compression
# of the file
EXPANSION, EXPANSION_FLOOR = 2, 64 * 1024

_LOG = logging.getLogger(__name__)
# the node stays as it is; ONNX Runtime will run it (and say so if it fails there)
_EVALUATION_FAILED = "evaluating it on its constant inputs failed (it is kept, to run at run time)"


def _contiguous(array):
    """A folded result in C order. A folded Transpose is a strided view whose copy happens later
    anyway (packing, hashing, saving); a 2-D one is copied here in cache-sized tiles, about 3x
    faster than numpy's element-by-element strided copy (BERT-base: 0.5 s of its save)."""
    if not isinstance(array, np.ndarray) or array.flags.c_contiguous:
        return array
    if array.ndim != 2 or array.size < _TILE * _TILE:
        return np.ascontiguousarray(array)
    out = np.empty(array.shape, array.dtype)
    for row in range(0, array.shape[0], _TILE):
        for column in range(0, array.shape[1], _TILE):
            out[row:row + _TILE, column:column + _TILE] = array[row:row + _TILE, column:column + _TILE]
    return out

_MIB = 1 << 20
_UNLIMITED_ELEMENTS = 1 << 62
_INTEGER_TYPES = frozenset(
    {ir.DataType.INT64, ir.DataType.INT32, ir.DataType.INT16, ir.DataType.INT8,
     ir.DataType.UINT64, ir.DataType.UINT32, ir.DataType.UINT16, ir.DataType.UINT8,
     ir.DataType.BOOL}
)
_SHAPE_OPS = frozenset({"Shape", "Size"})


class _BudgetedFolder(_constant_folding.FoldConstantsPass):
    """onnxscript's folder, refusing what exceeds the caps or the model's opset, and recording why."""

    def __init__(self, owner: Pass, *, max_input_bytes: int, max_output_bytes: int,
                 max_growth_bytes: int, shape_inference: bool, should_fold=lambda node: None):
        # onnxscript's own input limit refuses silently (and counts elements): the cap is
        # applied in _should_fold instead, where the refusal can be recorded.
        super().__init__(
            shape_inference=shape_inference,
            input_size_limit=_UNLIMITED_ELEMENTS,
            output_size_limit=_UNLIMITED_ELEMENTS,
            should_fold=self._should_fold,
        )
        self._owner = owner
        self._decide = should_fold
        self._max_input_bytes = max_input_bytes
        self._max_output_bytes = max_output_bytes
        self._max_growth_bytes = max_growth_bytes
        self.growth_bytes = 0
        self.folded = 0
        self._freed_by: set[int] = set()
        self._current: ir.Node | None = None
        self._opset_context = onnx.checker.C.CheckerContext()

    def run(self, model: ir.Model) -> bool:
        """Fold the model; return whether it changed."""
        self._opset_context.ir_version = model.ir_version
        self._opset_context.opset_imports = dict(model.opset_imports)
        with self._failures_as_skips():
            modified = self(model).modified
        if self.folded:
            self._owner.changed(f"folded {self.folded} node(s)")
        return modified

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
                    folder._owner.skip(f"{node.op_type} {node.name!r} not folded: {_EVALUATION_FAILED}")
                    _LOG.debug("%s: %s", node.name, message)

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

    def _should_fold(self, node: ir.Node) -> bool | None:
        """The caller's decision, else refuse (with a reason) constant inputs over max_input_bytes.

        onnxscript asks only once every input is constant, and applies its op blacklist
        after this returns None, so blacklisted ops are left to it and never reported.
        """
        decision = self._decide(node)
        if decision is not None or (node.domain in ("", "ai.onnx") and node.op_type
                                    in _constant_folding.DEFAULT_CONSTANT_FOLD_BLACKLIST):
            return decision
        large = [value for value in node.inputs
                 if value is not None and value.const_value.nbytes > self._max_input_bytes]
        if not large:
            return None
        # onnxscript folds single-output ops with a reference implementation only: refusing
        # another node is no news, so it is refused without a reason.
        if len(node.outputs) != 1 or _constant_folding._reference_evaluator.get_evaluator(
                node.domain, node.op_type, self._opset_imports[node.domain]) is None:
            return False
        # onnxscript's exception to its own limit: an op like Transpose that is the only
        # consumer of its large inputs frees them, so folding it does not grow the model.
        if ((node.domain, node.op_type) in _constant_folding._DEFAULT_ALWAYS_FOLD_OPS
                and all(len(value.consumers()) == 1 for value in large)):
            return None
        largest = max(large, key=lambda value: value.const_value.nbytes)
        self._owner.skip(
            f"{node.op_type} {node.name!r} not folded: input {largest.name!r} is "
            f"{largest.const_value.nbytes} bytes > max_input_bytes {self._max_input_bytes}"
        )
        return False

    def process_node(self, node: ir.Node, is_function: bool):
        self._current = node
        try:
            replacement = super().process_node(node, is_function)
        except Exception as error:  # the evaluator's failure must not end the pipeline
            self._owner.skip(f"{node.op_type} {node.name!r} not folded: {_EVALUATION_FAILED}")
            _LOG.debug("%s: %r", node.name, error.__cause__ or error)
            return None
        if replacement is not None and not self._fits_opset(node, replacement):
            return None
        return replacement

    def _fits_opset(self, node: ir.Node, replacement: _constant_folding.Replacement) -> bool:
        """Whether the nodes of a rewrite exist in the model's opset; record a skip if not.

        onnxscript's rewrites emit the newest forms (e.g. Unsqueeze with an axes input,
        opset 13), whatever the model's opset.
        """
        # An inlined If branch holds the model's own nodes, and onnxscript has already moved
        # them out of the branch: that rewrite is neither new in form nor refusable.
        if node.op_type == "If":
            return True
        for new_node in replacement.new_nodes:
            proto = onnx.NodeProto(op_type=new_node.op_type, domain=new_node.domain)
            # New values get their names after the rewrite (NameFixPass); the checker needs some.
            proto.input.extend("" if value is None else value.name or "unnamed"
                               for value in new_node.inputs)
            proto.output.extend(value.name or "unnamed" for value in new_node.outputs)
            proto.attribute.extend(ir.serde.serialize_attribute(attr)
                                   for attr in new_node.attributes.values())
            try:
                onnx.checker.check_node(proto, self._opset_context)
            except onnx.checker.ValidationError as error:
                opset = self._opset_context.opset_imports.get(new_node.domain or "")
                self._owner.skip(
                    f"{node.op_type} {node.name!r} not folded: the rewrite emits {new_node.op_type} "
                    f"in a form opset {opset} lacks ({checks.first_line(str(error))})"
                )
                return False
        return True

    def replace_node(self, node: ir.Node, replacement: _constant_folding.Replacement,
                     root: ir.Graph | ir.Function) -> None:
        super().replace_node(node, replacement, root)
        self.folded += 1

    def _prepare_folded_tensor(self, node: ir.Node, output_name: str, output_array):
        tensor = super()._prepare_folded_tensor(node, output_name, _contiguous(output_array))
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
        read = sum(value.const_value.nbytes for value in node.inputs
                   if value is not None and value.const_value is not None)
        if tensor.nbytes >= EXPANSION * read and tensor.nbytes > EXPANSION_FLOOR:
            self._owner.skip(
                f"{node.op_type} {node.name!r} not folded: its result ({tensor.nbytes} bytes) is "
                f"{tensor.nbytes / max(read, 1):.0f}x the constants it reads (it decodes them: "
                f"ONNX Runtime folds it at load, the file stays small)"
            )
            return None
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
        learned = shapes.infer_shapes(model, only_if_missing=True)
    except shapes.InferenceFailed as error:
        owner.skip(f"shape inference failed: {error}")
        return False
    if learned:
        owner.changed(f"filled in the shapes of {learned} value(s)")
    return bool(learned)


@register("fold_constants")
class FoldConstants(Pass):
    """Evaluate nodes whose inputs are all constant (static shapes too), within a growth budget.

    Shape inference first fills in the dtypes and shapes exporters left out (only when some node
    output lacks one; an inferred dim replaces only a symbolic or unknown one), so that Shape and
    Size of static tensors fold too. ConstantOfShape, QuantizeLinear, DequantizeLinear and
    DynamicQuantizeLinear are never folded (onnxscript's list).

    Options:

    - `max_input_bytes`: a node reading a constant input larger than this is not folded, with the
      reason (except a Transpose that is the only reader of its large inputs: folding frees them).
    - `max_output_bytes`: a folded result larger than this is refused when it grows the model.
      A result over 64 KiB and more than twice the bytes of the constants it reads is always
      refused: it decodes them (weight sharing's codebooks), as ONNX Runtime does at load, and
      folding it here would undo what the compression saved in the file.
    - `max_growth_bytes`: how much folding may grow the whole model, summed over every folded node.
    - `infer_shapes`: False skips the shape inference.
    """

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
    """Infer shapes, then replace Shape/Size of static tensors and the integer math on them.

    Not in the presets. Shape inference always runs; then only Shape and Size, and nodes whose
    outputs are all integers or booleans, are folded, under fixed caps: 64 KiB per constant input
    and per result, 1 MiB of growth for the whole model. Float computations stay as they are.
    """

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
