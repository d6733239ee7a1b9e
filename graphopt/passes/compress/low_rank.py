"""low_rank: a linear layer's weight W (K×N) becomes two thin factors from a truncated SVD.

x·W costs K·N multiply-adds per row; x·A·B with A (K×r) and B (r×N) costs r·(K + N), so a rank
below the break-even K·N / (K + N) makes the layer smaller and — where the matrix multiply is what
takes the time — faster. A layer whose rank would not be below it is left as it is.

Plain SVD keeps the r largest singular directions of W itself: the best rank-r W' in ‖W − W'‖.
What matters is the layer's output on real inputs, ‖X·W − X·W'‖, which weighs W's rows by how
much the input uses them. With calibration statistics (`whiten`, the default: the Gram matrix
G = XᵀX / n of each layer's input, one pass over the data) the SVD is taken of S·W, where S = G^½,
and W' = S⁻¹·(S·W)ᵣ: the rank-r W' that changes the layer's output on those inputs least
(SVD-LLM's truncation-aware whitening; ASVD scales by the channels' magnitudes only). Without
calibration data the pipeline measures G on its synthesized validation inputs.

The rank of a layer comes from `energy` (the fraction of Σσ² its factors keep: of W's singular
values, or of S·W's with whitening — the share of the output's energy on the calibration data) or
from `rank_ratio` (the fraction of the layer's parameters its factors keep). The fallback backs a
layer off to the rank halfway between its own and the break-even (twice its rank would be the
break-even itself at rank_ratio 0.5), then to full rank. A layer's SVD is taken once per run: the
fallback's trials only cut it at another rank.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from graphopt.errors import InputError
from graphopt.passes.compress.prune import SPARSE
from graphopt.passes.contract import FALLBACK_REASON, GRAM, LossyPass, Request
from graphopt.passes.match import constant_array, constant_tensor, drop_unused_initializers, fingerprint, \
    fresh_node_name, is_op, new_initializer
from graphopt.passes.quantize._linear import check_names, linear_inputs, name_set
from graphopt.passes.registry import register

# A factorized layer is judged like pruning and int4 weights: by cosine and top-1 agreement.
LOW_RANK = dataclasses.replace(SPARSE, name="low-rank")
FORMS = ("rank r", "halfway rank", "full rank")  # halfway: between r and the break-even rank
DAMPING = 1e-6  # of G's largest eigenvalue: directions the data never used are not inverted to infinity


@register("low_rank")
class LowRank(LossyPass):
    """Factor MatMul/Gemm weights into two thin matrices by truncated SVD, whitened by the input's statistics.

    Not in the presets. Layers with fewer than `min_weights` weights stay as they are, and so does
    a layer whose rank would not be below K·N / (K + N) (it would not get smaller or faster).

    Options:

    - `energy`: the fraction of the (whitened) singular values' energy Σσ² each layer keeps
      (0 < energy < 1); or
    - `rank_ratio`: the fraction of each layer's parameters its factors keep (0 < rank_ratio < 1).
      Give one of the two; neither means `rank_ratio=0.5`.
    - `whiten`: take the SVD of G^½·W, G the Gram matrix of the layer's input on the calibration
      data (or the synthesized validation inputs), so that the output changes least; `false`: of W.
    - `exclude`: `;`-separated node names or op types left as they are.
    - `min_weights`: the smallest weight factored.
    """

    tolerance = LOW_RANK
    handles = "MatMul/Gemm layers with a constant 2-D float32 weight of at least min_weights elements"
    untouched = FORMS[-1]
    cost = "bytes"
    objective = "latency"
    verb = "factorized"

    def __init__(self, energy: float = 0.0, rank_ratio: float = 0.0, whiten: bool = True, exclude: str = "",
                 min_weights: int = 4096) -> None:
        super().__init__()
        # (node name, W's digest) -> (G^-½ or None, U, σ, Vᵀ): the fallback's trials rebuild the model, not the SVDs
        self._decompositions: dict[tuple[str, bytes], tuple] = {}
        if energy and rank_ratio:
            raise InputError("low_rank: give energy or rank_ratio, not both")
        if energy and not 0.0 < energy < 1.0:
            raise InputError(f"low_rank: energy must be between 0 and 1 (the share of Σσ² kept), got {energy}")
        if rank_ratio and not 0.0 < rank_ratio < 1.0:
            raise InputError(f"low_rank: rank_ratio must be between 0 and 1 (the share of parameters kept), "
                             f"got {rank_ratio}")
        self.energy, self.rank_ratio = energy, rank_ratio if rank_ratio or energy else 0.5
        self.whiten, self.exclude, self.min_weights = whiten, name_set(exclude), min_weights

    def ladder(self) -> tuple[str, ...]:
        return FORMS

    def measures(self) -> bool:
        return self.whiten

    def requires(self, model: ir.Model) -> list[Request]:
        return [Request(GRAM, linear_inputs(model))] if self.whiten else []

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        check_names(model, self.exclude)
        for node in list(model.graph):
            weight = self._weight(node)
            if weight is not None:
                self._factor(model.graph, node, weight)
        factored = [outcome for outcome in self.outcomes if outcome.changed]
        if factored:
            whitened = sum("whitened" in outcome.detail for outcome in factored)
            self.changed(f"{len(factored)} layers factored into two thin MatMuls"
                         + (f" ({whitened} whitened by their input's statistics)" if whitened else ""))
        return ir.passes.PassResult(model, modified=bool(factored))

    def _weight(self, node: ir.Node) -> np.ndarray | None:
        """W (K×N) of x·W when the node is a layer this pass factors, else None (with the reason)."""
        if not is_op(node, "MatMul", "Gemm") or len(node.inputs) < 2:
            return None
        tensor = constant_tensor(node.inputs[1])
        if tensor is None or len(tensor.shape) != 2 or not tensor.dtype.is_floating_point() or \
                tensor.size < self.min_weights:
            return None
        held = "excluded" if node.name in self.exclude or node.op_type in self.exclude else self.held(node)
        if not held and (tensor.dtype != ir.DataType.FLOAT or node.inputs[0].dtype not in (None, ir.DataType.FLOAT)):
            held = "not float32"
        attrs = node.attributes
        if not held and node.op_type == "Gemm" and attrs.get_int("transA", 0):
            held = "its x is transposed (transA)"
        if held:
            self.keep(node, held, before=tensor.nbytes)
            return None
        weight = constant_array(node.inputs[1])
        return weight.T if node.op_type == "Gemm" and attrs.get_int("transB", 0) else weight

    def _factor(self, graph: ir.Graph, node: ir.Node, weight: np.ndarray) -> None:
        rows, columns = weight.shape
        even = rows * columns // (rows + columns)  # rank at which the factors cost what W does
        key = (node.name, fingerprint(weight))
        if key not in self._decompositions:
            self._decompositions[key] = self._decompose(node, weight)
        inverse, left, sigma, right = self._decompositions[key]
        form = self.backed_off.get(node.name, FORMS[0])
        rank = self._rank(sigma, rows, columns)
        if form == FORMS[1]:
            rank = (rank + even) // 2
        if rank >= even:
            asked = f"energy {self.energy}" if self.energy else f"rank_ratio {self.rank_ratio}"
            why = FALLBACK_REASON if form != FORMS[0] else f"{asked} asks for rank {rank}"
            self.keep(node, f"{why}: not below {even}, where its factors ({rows}x{rank}, {rank}x{columns}) "
                            f"cost what W ({rows}x{columns}) does", before=weight.nbytes)
            return
        first = left[:, :rank] * sigma[:rank]
        if inverse is not None:
            first = inverse @ first
        first, second = first.astype(np.float32), right[:rank].astype(np.float32)
        x = node.inputs[0]
        project = ir.Node("", "MatMul", [x, new_initializer(graph, first, f"{node.name or 'layer'}_low_rank_a")],
                          name=fresh_node_name(graph, f"{node.name or 'layer'}/low_rank"))
        if x.shape is not None:
            project.outputs[0].shape = ir.Shape([*x.shape[:-1], rank])
        project.outputs[0].dtype = ir.DataType.FLOAT
        graph.insert_before(node, project)
        old = node.inputs[1]
        transposed = node.op_type == "Gemm" and node.attributes.get_int("transB", 0)
        node.replace_input_with(0, project.outputs[0])
        node.replace_input_with(1, new_initializer(graph, second.T if transposed else second,
                                                   f"{node.name or 'layer'}_low_rank_b"))
        drop_unused_initializers(graph, [old])
        kept = float(np.sum(sigma[:rank] ** 2) / max(np.sum(sigma ** 2), np.finfo(np.float64).tiny))
        self.record(node, form, before=weight.nbytes, after=first.nbytes + second.nbytes,
                    reason=FALLBACK_REASON if node.name in self.backed_off else "",
                    detail=f"rank {rank} of {min(rows, columns)}, {kept:.1%} of its "
                           f"{'whitened ' if inverse is not None else ''}energy kept")

    def _decompose(self, node: ir.Node, weight: np.ndarray) -> tuple:
        """(G^-½ or None, U, σ, Vᵀ): the SVD of G^½·W where the layer's input Gram matrix G was measured
        (and `whiten`), else of W."""
        stats = self.statistics.channels.get(node.inputs[0].name) if self.whiten else None
        gram = getattr(stats, "gram", None)
        if gram is None or gram.shape != (weight.shape[0],) * 2:
            return (None, *np.linalg.svd(weight.astype(np.float64), full_matrices=False))
        root, inverse = _square_roots(gram)
        return (inverse, *np.linalg.svd(root @ weight, full_matrices=False))

    def _rank(self, sigma: np.ndarray, rows: int, columns: int) -> int:
        if self.energy:
            share = np.cumsum(sigma ** 2) / max(float(np.sum(sigma ** 2)), np.finfo(np.float64).tiny)
            return int(np.searchsorted(share, self.energy) + 1)
        return max(1, int(self.rank_ratio * rows * columns / (rows + columns)))


def _square_roots(gram: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """G^½ and G^-½ of a symmetric positive semi-definite G, its eigenvalues floored at DAMPING of the largest."""
    values, vectors = np.linalg.eigh(gram.astype(np.float64))
    values = np.maximum(values, DAMPING * max(float(values[-1]), np.finfo(np.float64).tiny))
    return (vectors * np.sqrt(values)) @ vectors.T, (vectors / np.sqrt(values)) @ vectors.T
