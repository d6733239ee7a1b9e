"""smooth_activations: SmoothQuant's outlier migration, exact in float, before int8 quantization.

A few channels of a transformer's activations run 10-100x larger than the rest, and one int8
scale per activation tensor then leaves the rest a handful of levels. For an activation X read
only through linear layers X·W, dividing channel j by s_j and multiplying row j of every W by
s_j computes the same product:  X·W = (X / s)·(diag(s)·W), with
    s_j = max|X_j|^α / max|W_j,:|^(1-α)       (α = `alpha`; SmoothQuant, Xiao et al. 2023)
so activations and weights share the range. 1/s folds into a LayerNormalization's γ and β
when the normalized value feeds nothing else; otherwise an explicit Mul(X, 1/s) goes in front
of the linear layers (the residual stream keeps X). The per-channel peaks come from running
the float model, which the pass requires (CHANNELS of every linear layer's input) and the lossy
pipeline hands over: without them the pass changes nothing. With `outlier_ratio` (dynamic int8's), the activations whose outlier
channels quantize_dynamic will carve out of the Gelu/Relu layer making them (outliers.carve:
three small nodes, no full-size Mul) are left to it: the two together keep MiniLM's worst
sentence cosine (dynamic int8) at 0.9987, where smoothing alone reaches 0.9940, the carving alone
0.9949 and neither 0.9909.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from graphopt.passes.match import (
    constant_array,
    drop_unused_initializers,
    fresh_node_name,
    fresh_value_name,
    is_op,
    new_initializer,
)
from graphopt.passes.contract import CHANNELS, Request
from graphopt.passes.quantize._linear import linear_inputs, linear_weight, name_set
from graphopt.passes.quantize.outliers import carves
from graphopt.passes.registry import Pass, register


@register("smooth_activations", min_opset=1)
class SmoothActivations(Pass):
    """Move activation outliers into the weights of the linear layers reading them (SmoothQuant; exact in float).

    Not in the presets: `graphopt quantize --smooth ALPHA` runs it first, with peaks measured on the
    validation inputs or `--calib`. With `--mode static` it runs before calibration and its Muls stay
    float: an input channel 300x the others goes from cosine < 0.9 to > 0.99 in the tests, MiniLM
    static (`linear`) 0.9905 → 0.9973 with the carving. Linear readers: MatMul, Gemm without transA
    and com.microsoft Attention reading X as x, by a constant 2-D weight; other readers keep X.

    Options:

    - `alpha`: α above (`--smooth` takes 0 < α < 1).
    - `min_outlier_ratio`: an activation whose largest channel peak is under this many times its
      median channel peak is left alone.
    - `outlier_ratio`: quantize_dynamic's (`--outlier-ratio`): the activations it will carve at that
      ratio are left to it; 0: none.
    - `max_outliers`, `exclude`: quantize_dynamic's, used only to tell what it will carve.
    """

    def __init__(self, alpha: float = 0.5, min_outlier_ratio: float = 8.0, outlier_ratio: float = 0.0,
                 max_outliers: int = 8, exclude: str = "") -> None:
        super().__init__()
        self.alpha = alpha
        self.min_outlier_ratio = min_outlier_ratio
        # quantize_dynamic's options: what it will carve (outliers.carves) is not smoothed here
        self.outlier_ratio = outlier_ratio
        self.max_outliers = max_outliers
        self.exclude = name_set(exclude)

    def measures(self) -> bool:
        return True

    def requires(self, model: ir.Model) -> list[Request]:
        return [Request(CHANNELS, linear_inputs(model))]

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        folded = inserted = left = 0
        values = {value.name: value for node in model.graph for value in node.outputs}
        for name, peak in self.statistics.peaks().items():
            value = values.get(name)
            if value is None or value.is_graph_output():
                continue
            if self.outlier_ratio and carves(model.graph, value, peak, self.outlier_ratio, self.max_outliers,
                                             lambda node: node.name in self.exclude or node.op_type in self.exclude):
                left += 1
                continue
            how = self._smooth(model.graph, value, np.asarray(peak, np.float32))
            folded += how == "folded"
            inserted += how == "inserted"
        if folded:
            self.changed(f"{folded} activations smoothed into their LayerNormalization")
        if inserted:
            self.changed(f"{inserted} activations smoothed by a Mul in front of their linear layers")
        if left:
            self.skip(f"{left} activations left to the outlier carving (not smoothed)")
        return ir.passes.PassResult(model, modified=bool(folded or inserted))

    def _smooth(self, graph: ir.Graph, value: ir.Value, peak: np.ndarray) -> str:
        linear = [(use, linear_weight(use)) for use in value.uses()]
        readers = [(use, found) for use, found in linear if found is not None and use.node.graph is graph]
        if not readers or peak.ndim != 1 or not np.all(np.isfinite(peak)):
            return ""
        rows = [weight.T if transposed else weight for _, (weight, transposed) in readers]
        if any(row.shape[0] != peak.shape[0] for row in rows):
            return ""
        spread = peak.max() / max(float(np.median(peak)), np.finfo(np.float32).tiny)
        if spread < self.min_outlier_ratio:
            return ""
        weight_peak = np.max([np.abs(row).max(axis=1) for row in rows], axis=0)
        scale = np.power(np.maximum(peak, 1e-5), self.alpha) / np.power(np.maximum(weight_peak, 1e-5), 1 - self.alpha)
        scale = np.where((peak > 0) & (weight_peak > 0), scale, 1.0).astype(np.float32)
        everyone = len(readers) == len(value.uses())
        how = "folded" if everyone and self._fold_into_layernorm(graph, value, scale) else "inserted"
        if how == "inserted":
            divided = ir.Node("", "Mul", [value, new_initializer(graph, (1.0 / scale).astype(np.float32),
                                                                 f"{value.name}_smooth")],
                              name=fresh_node_name(graph, f"{value.name}/smooth"))
            divided.outputs[0].name = fresh_value_name(graph, f"{value.name}_smoothed")
            divided.outputs[0].type, divided.outputs[0].shape = value.type, value.shape
            producer = value.producer()
            if producer is not None and producer.graph is graph:
                graph.insert_after(producer, divided)
            else:
                graph.insert_before(next(iter(graph)), divided)
        for use, (weight, transposed) in readers:
            node = use.node
            scaled = weight * (scale[None, :] if transposed else scale[:, None])
            old = node.inputs[1]
            node.replace_input_with(1, new_initializer(graph, scaled.astype(np.float32), f"{old.name or 'weight'}_smoothed"))
            drop_unused_initializers(graph, [old])
            if how == "inserted":
                node.replace_input_with(0, divided.outputs[0])
        return how

    @staticmethod
    def _fold_into_layernorm(graph: ir.Graph, value: ir.Value, scale: np.ndarray) -> bool:
        """γ/s and β/s, when `value` is a last-axis LayerNormalization's output with constant γ (β)."""
        node = value.producer()
        if not is_op(node, "LayerNormalization") or node.outputs[0] is not value or node.graph is not graph:
            return False
        if node.attributes.get_int("axis", -1) not in (-1, (len(value.shape) - 1) if value.shape else -1):
            return False
        params = [constant_array(node.inputs[index]) if len(node.inputs) > index and node.inputs[index] is not None
                  else None for index in (1, 2)]
        if params[0] is None or params[0].shape not in ((scale.size,), (1, scale.size)) or \
                (len(node.inputs) > 2 and node.inputs[2] is not None and params[1] is None):
            return False
        for index, array in zip((1, 2), params):
            if array is not None:
                old = node.inputs[index]
                node.replace_input_with(index, new_initializer(graph, (array / scale.reshape(array.shape)).astype(np.float32),
                                                               f"{old.name or 'layernorm'}_smoothed"))
                drop_unused_initializers(graph, [old])
        return True
