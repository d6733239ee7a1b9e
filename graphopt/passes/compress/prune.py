"""prune_magnitude: the smallest weights of the linear and convolution layers set to exactly zero.

A constant float weight W of MatMul, Gemm or Conv keeps |w| > t and drops the rest to 0, where t
is the `sparsity` quantile of |W| (scope "layer": each tensor its own) or of every such weight
together (scope "global": one threshold, so layers with many small weights lose more). With a
`pattern` N:M, every block of M consecutive weights along a layer's inputs (a MatMul's K rows, a
Conv's input channels at each kernel tap) keeps its N largest: the 2:4 layout that NVIDIA's sparse
tensor cores run at twice the dense rate (TensorRT with sparsity enabled, e.g. ONNX Runtime's
TensorRT provider with trt_sparsity_enable); ONNX Runtime's CPU and CUDA providers compute it
dense. What it buys there is the *compressed* size of the model — a .zip, a container layer, an
over-the-air update: runs of zeros cost deflate almost nothing. The .onnx file and the latency stay as they are: ONNX
Runtime densifies sparse initializers at load and its CPU kernels do dense math, so the size
guard judges this pass, not the latency guard. The fallback backs a layer off to half the
sparsity, then to dense.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from graphopt.errors import InputError
from graphopt.passes.contract import FALLBACK_REASON, LossyPass
from graphopt.passes.match import constant_array, constant_tensor, drop_unused_initializers, is_op, new_initializer
from graphopt.passes.quantize._linear import check_names, name_set
from graphopt.passes.registry import register
from graphopt.runtime.compare import Tolerance

SCOPES = ("layer", "global")
# Pruning is judged like int4 weights: by cosine and top-1 agreement, not elementwise.
SPARSE = Tolerance("sparse", rtol=0.2, atol=0.1, max_mismatch=1.0, min_cosine=0.98, min_top1=0.8)


@register("prune_magnitude")
class PruneMagnitude(LossyPass):
    """Zero the smallest-magnitude weights of MatMul/Gemm/Conv (shrinks the compressed file, not the latency).

    Not in the presets. A weight read by several layers is pruned once, at the first reader's
    sparsity. Layers with fewer than `min_weights` weights (biases, tiny projections) stay dense.

    Options:

    - `sparsity`: the fraction of each weight set to zero (0 < sparsity < 1); with a pattern, its
      own 1 - N/M.
    - `scope`: `layer` (each tensor's own threshold) or `global` (one threshold for every weight).
    - `pattern`: `N:M` — in every M consecutive weights along the layer's inputs, the N largest kept
      (a layer whose inputs are not a multiple of M stays dense, said in the report).
    - `exclude`: `;`-separated node names or op types left dense.
    - `min_weights`: the smallest weight pruned.
    """

    tolerance = SPARSE
    handles = "MatMul/Gemm/Conv weights of at least min_weights elements"
    untouched = "dense"
    cost = "bytes"
    objective = "size"
    smaller_compressed = True  # zeros: the file is as big until it is compressed
    verb = "pruned"

    def __init__(self, sparsity: float = 0.5, scope: str = "layer", exclude: str = "", min_weights: int = 1024,
                 pattern: str = "") -> None:
        super().__init__()
        self.pattern = parse_pattern(pattern) if pattern else None
        if self.pattern is not None:
            kept, block = self.pattern
            if sparsity != 0.5 and abs(sparsity - (1 - kept / block)) > 1e-9:  # 0.5: the default
                raise InputError(f"prune_magnitude: pattern {pattern} zeroes {1 - kept / block:.0%} of the weights, "
                                 f"not sparsity {sparsity}: give one of them")
            if scope != "layer":
                raise InputError(f"prune_magnitude: pattern {pattern} chooses within blocks of {block}, not a "
                                 f"{scope} threshold: leave scope out")
            sparsity = 1 - kept / block
        if not 0.0 < sparsity < 1.0:
            raise InputError(f"prune_magnitude: sparsity must be between 0 and 1, got {sparsity}")
        if scope not in SCOPES:
            raise InputError(f"prune_magnitude: scope {scope!r}: choose from {', '.join(SCOPES)}")
        self.sparsity, self.scope, self.exclude, self.min_weights = sparsity, scope, name_set(exclude), min_weights

    def ladder(self) -> tuple[str, ...]:
        if self.pattern is not None:  # half a pattern is no pattern a sparse kernel runs
            return (f"{self.pattern[0]}:{self.pattern[1]} pattern", self.untouched)
        return (_form(self.sparsity), _form(self.sparsity / 2), self.untouched)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        check_names(model, self.exclude)
        layers = [(node, node.inputs[1]) for node in model.graph if self._prunable(node)]
        threshold = _quantile([constant_array(weight) for _, weight in layers], self.sparsity) \
            if self.scope == "global" and layers else None
        done: set[ir.Value] = set()
        for node, weight in layers:
            if weight in done:
                continue
            done.add(weight)
            self._prune(model.graph, node, weight, threshold)
        pruned = [outcome for outcome in self.outcomes if outcome.changed]
        if pruned:
            self.changed(f"{len(pruned)} weights pruned by magnitude ({self.scope} threshold)")
        return ir.passes.PassResult(model, modified=bool(pruned))

    def _prunable(self, node: ir.Node) -> bool:
        if not is_op(node, "MatMul", "Gemm", "Conv") or len(node.inputs) < 2:
            return False
        tensor = constant_tensor(node.inputs[1])
        if tensor is None or not tensor.dtype.is_floating_point() or tensor.size < self.min_weights:
            return False
        held = "excluded" if node.name in self.exclude or node.op_type in self.exclude else self.held(node)
        inputs = tensor.shape[_input_axis(node, len(tensor.shape))]
        if not held and self.pattern is not None and inputs % self.pattern[1]:
            held = f"its {inputs} inputs are not a multiple of {self.pattern[1]}"
        if held:
            self.keep(node, held, before=tensor.nbytes)
        return not held

    def _prune(self, graph: ir.Graph, node: ir.Node, weight: ir.Value, threshold: float | None) -> None:
        values = constant_array(weight)
        form = self.backed_off.get(node.name, self.ladder()[0])
        if self.pattern is not None and form == self.ladder()[0]:
            pruned = _keep_largest(values, _input_axis(node, values.ndim), *self.pattern)
        else:
            ratio = _sparsity_of(form)
            limit = threshold if threshold is not None and form == self.ladder()[0] else _quantile([values], ratio)
            pruned = np.where(np.abs(values) > limit, values, np.zeros((), values.dtype))
        pruned_value = new_initializer(graph, pruned, f"{weight.name or 'weight'}_pruned")
        for use in list(weight.uses()):  # every reader of a shared weight reads the pruned one
            use.node.replace_input_with(use.idx, pruned_value)
        drop_unused_initializers(graph, [weight])
        self.record(node, form, before=values.nbytes, after=values.nbytes,
                    reason=FALLBACK_REASON if node.name in self.backed_off else "",
                    detail=f"{np.mean(pruned == 0):.1%} of its values zero")


def parse_pattern(pattern: str) -> tuple[int, int]:
    """(N, M) of an N:M pattern, 0 < N < M."""
    kept, _, block = pattern.partition(":")
    if not (kept.isdigit() and block.isdigit() and 0 < int(kept) < int(block)):
        raise InputError(f"prune_magnitude: pattern {pattern!r}: give N:M with 0 < N < M, e.g. 2:4")
    return int(kept), int(block)


def _input_axis(node: ir.Node, rank: int) -> int:
    """The axis of a layer's weight that its inputs run along: MatMul's K rows (of K×N, the
    second last of a stack), Gemm's K (its second with transB), Conv's input channels."""
    if is_op(node, "Conv"):
        return 1
    if is_op(node, "Gemm"):
        return 1 if node.attributes.get_int("transB", 0) else 0
    return rank - 2


def _keep_largest(values: np.ndarray, axis: int, kept: int, block: int) -> np.ndarray:
    """`values` with all but the `kept` largest magnitudes of every `block` consecutive entries along
    `axis` set to zero."""
    moved = np.moveaxis(values, axis, -1)
    blocks = moved.reshape(*moved.shape[:-1], moved.shape[-1] // block, block)
    smallest = np.argsort(np.abs(blocks), axis=-1, kind="stable")[..., :block - kept]
    pruned = blocks.copy()
    np.put_along_axis(pruned, smallest, 0, axis=-1)
    return np.moveaxis(pruned.reshape(moved.shape), -1, axis)


def _form(sparsity: float) -> str:
    return f"{sparsity:.0%} zero"


def _sparsity_of(form: str) -> float:
    return float(form.split("%")[0]) / 100


def _quantile(weights: list[np.ndarray], sparsity: float) -> float:
    magnitudes = np.concatenate([np.abs(w).ravel() for w in weights])
    return float(np.quantile(magnitudes, sparsity)) if magnitudes.size else 0.0
