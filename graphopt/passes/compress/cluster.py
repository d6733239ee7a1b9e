"""cluster_weights: weight sharing — each weight becomes one of 2^b values of a small codebook (k-means).

A constant float weight of MatMul, Gemm, Conv, ONNX Runtime's fused Attention or Gather (an
embedding table) is clustered by
k-means on its values (k-means++ seeding, then Lloyd's iterations; in one dimension a value's
nearest centroid is found by bisecting the midpoints between sorted centroids) into 2^bits
centroids — one codebook for the tensor, or one per `group` output channels. The file stores the
b-bit indices packed as b bit-planes (b/8 bytes per weight) and the float codebook; standard ONNX
ops decode them — Cast, Div and Mod pull the bits out, Mul and ReduceSum put each index together,
Gather looks it up — and, since every input of the decoder is a constant, ONNX Runtime folds it into
a float initializer when it loads the session. So the file is ~b/32 of float's and the run time is
float's, but so is the memory at run time: ONNX has no look-up-table operator (onnx/onnx#5329).
Uniform int4 (quantize_weight_only) keeps 4 bits in memory and runs its own kernel; a codebook
fits a weight's distribution better at the same bits. The latency guard checks that the decoder
was folded (a model that decodes on every run is slower), and validation runs both models after
ONNX Runtime's basic optimizations (constant folding), not as written: decoding MiniLM's weights
on every run takes 0.9 s, folded it runs in 20 ms. A layer's k-means runs once per pipeline run.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from graphopt.errors import InputError
from graphopt.passes.compress.prune import SPARSE
from graphopt.passes.contract import CHANNELS, FALLBACK_REASON, LossyPass, Request
from graphopt.model import model_opset
from graphopt.passes.match import MS_DOMAIN, constant_array, constant_tensor, drop_unused_initializers, fingerprint, \
    fresh_node_name, fresh_value_name, is_op, new_initializer
from graphopt.passes.quantize._linear import check_names, linear_inputs, name_set
from graphopt.passes.registry import register

CLUSTERED = dataclasses.replace(SPARSE, name="clustered")
ITERATIONS = 25
SAMPLE = 1 << 20  # Lloyd's iterations on a sample of this many values; every value is assigned at the end


@register("cluster_weights", min_opset=10)
class ClusterWeights(LossyPass):
    """Share weights: k-means into 2^bits values per tensor (or per group of output channels), stored as packed indices.

    Not in the presets. Acts on the constant float weights of MatMul, Gemm and Conv and on Gather's
    tables (embeddings) of at least `min_weights` elements. The file shrinks to about bits/32 of
    float's; ONNX Runtime decodes the weights when it loads the session, so latency and run-time
    memory stay float's.

    Options:

    - `bits`: index width, 2 to 8 (2^bits centroids per codebook).
    - `group`: output channels that share a codebook (0: one codebook for the whole tensor).
    - `weighted`: weigh each MatMul/Gemm weight's error by its input channel's mean square on the
      calibration data (or the validation inputs), as the layer's output feels it; `false`: every
      weight alike.
    - `exclude`: `;`-separated node names or op types left as they are.
    - `min_weights`: the smallest weight clustered.
    """

    tolerance = CLUSTERED
    handles = ("MatMul/Gemm/Conv/Attention weights and Gather tables of at least min_weights float32 "
               "elements")
    cost = "bytes"
    objective = "size+latency"  # smaller, and as fast as float once ONNX Runtime has folded the decoder
    verb = "clustered"

    folds_at_load = True  # validated after ONNX Runtime's basic optimizations, which fold the decoder

    def __init__(self, bits: int = 4, group: int = 0, weighted: bool = True, exclude: str = "",
                 min_weights: int = 4096) -> None:
        super().__init__()
        # (node name, W's digest, bits) -> codebooks and indices: the fallback's trials rebuild the model,
        # not the k-means
        self._clusterings: dict[tuple[str, bytes, int], tuple[list, list]] = {}
        if not 2 <= bits <= 8:
            raise InputError(f"cluster_weights: bits must be 2 to 8, got {bits}")
        if group < 0:
            raise InputError(f"cluster_weights: group must be 0 (one codebook per tensor) or more, got {group}")
        self.bits, self.group, self.exclude, self.min_weights = bits, group, name_set(exclude), min_weights
        self.weighted = weighted

    def measures(self) -> bool:
        return self.weighted

    def requires(self, model: ir.Model) -> list[Request]:
        return [Request(CHANNELS, linear_inputs(model))] if self.weighted else []

    def ladder(self) -> tuple[str, ...]:
        wider = min(8, self.bits + 2)
        return (_form(self.bits), *((_form(wider),) if wider > self.bits else ()), self.untouched)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        check_names(model, self.exclude)
        done: set[ir.Value] = set()
        for node in list(model.graph):
            index = 0 if is_op(node, "Gather") else 1
            if not (is_op(node, "MatMul", "Gemm", "Conv", "Gather") or _fused_attention(node)) or \
                    len(node.inputs) <= index:
                continue
            weight = node.inputs[index]
            tensor = constant_tensor(weight)
            if weight in done or tensor is None or not tensor.dtype.is_floating_point() or \
                    tensor.size < self.min_weights:
                continue
            held = "excluded" if node.name in self.exclude or node.op_type in self.exclude else self.held(node)
            if not held and tensor.dtype != ir.DataType.FLOAT:
                held = "not float32"
            if held:
                self.keep(node, held, before=tensor.nbytes)
                continue
            done.add(weight)
            self._cluster(model.graph, node, weight, _channel_axis(node), model_opset(model))
        clustered = [outcome for outcome in self.outcomes if outcome.changed]
        if clustered:
            self.changed(f"{len(clustered)} weights clustered into codebooks, decoded by ONNX Runtime at load")
        return ir.passes.PassResult(model, modified=bool(clustered))

    def _cluster(self, graph: ir.Graph, node: ir.Node, weight: ir.Value, axis: int, opset: int) -> None:
        values = constant_array(weight)
        bits = int(self.backed_off.get(node.name, _form(self.bits)).split("-")[0])
        channels = np.moveaxis(values, axis, 0)  # [out channels, ...]
        group = self.group if 0 < self.group < channels.shape[0] else channels.shape[0]
        per_group = group * (channels.size // channels.shape[0])
        importance = self._importance(node, channels.shape)
        key = (node.name, fingerprint(values), bits)
        if key not in self._clusterings:
            self._clusterings[key] = tuple(zip(*(
                kmeans(channels[start:start + group].ravel(), 1 << bits,
                       weights=None if importance is None else np.broadcast_to(
                           importance, channels[start:start + group].shape).ravel())
                for start in range(0, channels.shape[0], group))))
        tables, indices, approximation = [], [], []
        for table, index in zip(*self._clusterings[key]):
            padded = np.zeros(1 << bits, np.float32)  # every codebook 2^bits long: offsets are g·2^bits
            padded[:table.size] = table
            tables.append(padded)
            indices.append(np.pad(index, (0, per_group - index.size)))  # the last group may be short
            approximation.append(table[index])
        decoded = self._decoder(graph, node, np.concatenate(indices), np.concatenate(tables), bits, len(tables),
                                channels.shape, axis, opset)
        for use in list(weight.uses()):  # a weight read by several layers is clustered once
            use.node.replace_input_with(use.idx, decoded)
        drop_unused_initializers(graph, [weight])
        after = -(-len(tables) * per_group // 8) * bits + sum(table.nbytes for table in tables)
        error = np.sqrt(np.mean((np.concatenate(approximation) - channels.ravel()) ** 2)) / \
            max(float(np.sqrt(np.mean(values.astype(np.float64) ** 2))), 1e-30)
        self.record(node, _form(bits), before=values.nbytes, after=after,
                    reason=FALLBACK_REASON if node.name in self.backed_off else "",
                    detail=f"{len(tables)} codebook(s) of {1 << bits}, relative RMS error {error:.3f}"
                           + (", weighted by its inputs' mean squares" if importance is not None else ""))

    def _importance(self, node: ir.Node, shape: tuple[int, ...]) -> np.ndarray | None:
        """Each input channel's mean square (the last axis of [out channels, in channels]) for a
        MatMul/Gemm whose input was measured, else None."""
        linear = is_op(node, "MatMul", "Gemm") or _fused_attention(node)
        stats = self.statistics.channels.get(node.inputs[0].name) if self.weighted and linear else None
        if stats is None or len(shape) != 2 or stats.mean_square.shape != (shape[1],):
            return None
        return np.asarray(stats.mean_square, np.float64)

    def _decoder(self, graph: ir.Graph, node: ir.Node, index: np.ndarray, table: np.ndarray, bits: int,
                 groups: int, shape: tuple[int, ...], axis: int, opset: int) -> ir.Value:
        """Nodes computing the weight from packed bit-planes and the codebooks, all on constants:
        bit i of byte j of plane p = (byte // 2^i) mod 2; index = Σ_p bit_p · 2^p; weight = table[index]."""
        base = node.name or "weight"
        planes = np.packbits(((index[None, :] >> np.arange(bits)[:, None]) & 1).astype(np.uint8), axis=1,
                             bitorder="little")  # [bits, ceil(count / 8)]
        width = planes.shape[1]

        def const(array: np.ndarray, name: str) -> ir.Value:
            return new_initializer(graph, array, f"{base}_codebook_{name}")

        def op(op_type: str, inputs: list, *attributes: ir.Attr) -> ir.Value:
            made = ir.Node("", op_type, inputs, list(attributes), name=fresh_node_name(graph, f"{base}/decode"))
            graph.insert_before(node, made)
            return made.outputs[0]

        def shaped(value: ir.Value, dims) -> ir.Value:
            return op("Reshape", [value, const(np.array(dims, np.int64), "shape")])

        packed = shaped(op("Cast", [const(planes, "planes")], ir.AttrInt64("to", ir.DataType.INT32)), [bits, width, 1])
        bit = op("Mod", [op("Div", [packed, const((1 << np.arange(8, dtype=np.int32)).reshape(1, 1, 8), "bit")]),
                         const(np.array(2, np.int32), "two")])
        place = op("Mul", [shaped(bit, [bits, width * 8]),
                           const((1 << np.arange(bits, dtype=np.int32)).reshape(bits, 1), "plane")])
        index_value = op("ReduceSum", [place, const(np.array([0], np.int64), "axes")], ir.AttrInt64("keepdims", 0)) \
            if opset >= 13 else op("ReduceSum", [place], ir.AttrInt64s("axes", [0]), ir.AttrInt64("keepdims", 0))
        index_value = op("Slice", [index_value, const(np.array([0], np.int64), "start"),
                                   const(np.array([index.size], np.int64), "stop")])
        if groups > 1:  # group g's indices point into its own codebook, at g·2^bits
            index_value = op("Add", [shaped(index_value, [groups, index.size // groups]),
                                     const((np.arange(groups, dtype=np.int32) << bits).reshape(groups, 1), "offset")])
        weight = op("Gather", [const(table, "table"), index_value])
        if index.size != int(np.prod(shape)):  # the last group's padding goes
            weight = op("Slice", [shaped(weight, [-1]), const(np.array([0], np.int64), "start"),
                                  const(np.array([int(np.prod(shape))], np.int64), "stop")])
        weight = shaped(weight, list(shape))
        if axis != 0:  # back from [out channels, ...] to the layer's own layout
            order = list(range(1, len(shape)))
            order.insert(axis, 0)
            weight = op("Transpose", [weight], ir.AttrInt64s("perm", order))
        weight.name = fresh_value_name(graph, f"{base}_clustered")
        return weight


def _fused_attention(node: ir.Node) -> bool:
    return node.domain == MS_DOMAIN and node.op_type == "Attention"


def _channel_axis(node: ir.Node) -> int:
    """The weight's output-channel axis: N of MatMul's K×N (and of Gemm's, or its first with transB;
    of a fused Attention's packed K×3N), Conv's first, an embedding table's rows."""
    if is_op(node, "MatMul") or _fused_attention(node):
        return 1
    if is_op(node, "Gemm"):
        return 0 if node.attributes.get_int("transB", 0) else 1
    return 0


def kmeans(values: np.ndarray, clusters: int, seed: int = 0,
           weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """1-D k-means: (sorted centroids [≤ clusters] float32, each value's index). k-means++ seeding on a
    sample, Lloyd's iterations on it, then every value to its nearest centroid. `weights` (one per
    value, ≥ 0) weigh each value's squared error: a centroid is its values' weighted mean."""
    values = values.astype(np.float64).ravel()
    weights = np.ones_like(values) if weights is None else np.broadcast_to(weights, values.shape).astype(np.float64).ravel()
    rng = np.random.default_rng(seed)
    chosen_sample = slice(None) if values.size <= SAMPLE else rng.choice(values.size, SAMPLE, replace=False)
    sample, weight = values[chosen_sample], weights[chosen_sample]
    weight = weight if weight.sum() > 0 else np.ones_like(weight)
    distinct = np.unique(sample)
    if distinct.size <= clusters:
        centroids = distinct
    else:
        centroids = [sample[rng.choice(sample.size, p=weight / weight.sum())]]
        nearest = weight * (sample - centroids[0]) ** 2
        for _ in range(clusters - 1):  # k-means++: each next seed drawn by its weighted squared distance
            total = nearest.sum()
            chosen = sample[rng.choice(sample.size, p=nearest / total)] if total > 0 else sample[rng.integers(sample.size)]
            centroids.append(chosen)
            nearest = np.minimum(nearest, weight * (sample - chosen) ** 2)
        centroids = np.unique(np.array(centroids))
        for _ in range(ITERATIONS):
            assigned = _assign(sample, centroids)
            sums = np.bincount(assigned, weights=weight * sample, minlength=centroids.size)
            counts = np.bincount(assigned, weights=weight, minlength=centroids.size)
            moved = np.sort(np.where(counts > 0, sums / np.where(counts > 0, counts, 1), centroids))
            if np.allclose(moved, centroids, rtol=0, atol=1e-12):
                break
            centroids = moved
    return centroids.astype(np.float32), _assign(values, centroids)


def _assign(values: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Each value's nearest centroid among sorted `centroids`: bisect the midpoints between them."""
    return np.searchsorted((centroids[1:] + centroids[:-1]) / 2, values).astype(np.int64)


def _form(bits: int) -> str:
    return f"{bits}-bit codebook"
