"""cluster_weights: weight sharing — each weight becomes one of 2^b values of a small codebook (k-means).

A constant float weight of MatMul, Gemm, Conv, ONNX Runtime's fused Attention or Gather (an
embedding table) is clustered by k-means on its values (codebook.py) into 2^bits centroids — one
codebook per group of output channels, as many as cost at most 1/32 of the packed indices (an
embedding table: one per column; MiniLM's 384-input layers at 4 bits: one per 16 channels), or per
`group` channels. A linear layer whose input was measured weighs each weight's error by its input
channel's mean square, then chooses each weight's centroid with error feedback on the input's Gram
matrix, so that the layer's output changes least (codebook.assign_with_feedback); other weights take
their nearest centroid (MiniLM at 4 bits, the lowest cosine of 256 sentences: one codebook per
tensor and the nearest centroid 0.943; the groups and the feedback 0.960, for 1.3% more bytes). The
fallback's ladder adds one bit at a time: b, b+1, b+2, float. The file stores the
b-bit indices packed as b bit-planes (b/8 bytes per weight) and the float codebook; standard ONNX
ops decode them — Div and Mod pull the bits out, Mul, Split and Add put each index together, all in
uint8 (opset 14; the lossy pipeline converts an older model), then Cast and Add point it into its
channel's codebook, in the layer's own layout, and Gather looks it up — and, since every input of
the decoder is a constant, ONNX Runtime folds it into a float initializer when it loads the session
(benchmarks/session_load.py, 2026-12-05, MiniLM at 4 bits: 1.0 s and an 823 MiB peak against
float's 0.16 s and 186 MiB; 2.6 s and 2,225 MiB when the bits were pulled out in int32 and the
weight transposed after the look-up). So the file is ~b/32 of float's and the run time is
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
from graphopt.passes.compress.codebook import assign_with_feedback, kmeans
from graphopt.passes.compress.prune import SPARSE
from graphopt.passes.contract import FALLBACK_REASON, GRAM, LossyPass, Request
from graphopt.passes.match import MS_DOMAIN, constant_array, constant_tensor, drop_unused_initializers, fingerprint, \
    fresh_node_name, fresh_value_name, is_op, new_initializer
from graphopt.passes.quantize._linear import check_names, linear_inputs, name_set
from graphopt.passes.registry import register

CLUSTERED = dataclasses.replace(SPARSE, name="clustered")


@register("cluster_weights", min_opset=14)
class ClusterWeights(LossyPass):
    """Share weights: k-means into 2^bits values per tensor (or per group of output channels), stored as packed indices.

    Not in the presets. Acts on the constant float weights of MatMul, Gemm and Conv and on Gather's
    tables (embeddings) of at least `min_weights` elements. The file shrinks to about bits/32 of
    float's; ONNX Runtime decodes the weights when it loads the session, so latency and run-time
    memory stay float's.

    Options:

    - `bits`: index width, 2 to 8 (2^bits centroids per codebook).
    - `table_bits`: the index width of Gather's tables (embeddings) instead, 0 for `bits`: a small
      transformer's table is half its weights and costs its outputs far less per bit (MiniLM:
      `bits=6, table_bits=4` 0.159x of float at cosine 0.995, `bits=4` 0.129x at 0.960); the
      fallback's steps are `bits`' for every layer.
    - `group`: output channels that share a codebook; 0 chooses per weight: the fewest channels
      whose codebooks cost at most 1/32 of the packed indices (a power of two); more channels than
      the weight has: one codebook for the whole tensor.
    - `weighted`: fit each MatMul/Gemm/Attention weight to its input on the calibration data (or
      the validation inputs): its error weighed by its input channel's mean square, its centroid
      chosen with error feedback on the input's Gram matrix, as the layer's output feels it;
      `false`: every weight alike, each to its nearest centroid.
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
                 min_weights: int = 4096, table_bits: int = 0) -> None:
        super().__init__()
        # (node name, W's digest, bits) -> codebooks and indices: the fallback's trials rebuild the model,
        # not the k-means
        self._clusterings: dict[tuple[str, bytes, int], tuple[list, list]] = {}
        if not 2 <= bits <= 8:
            raise InputError(f"cluster_weights: bits must be 2 to 8, got {bits}")
        if table_bits and not 2 <= table_bits <= 8:
            raise InputError(f"cluster_weights: table_bits must be 2 to 8 (or 0: bits), got {table_bits}")
        if group < 0:
            raise InputError(f"cluster_weights: group must be 0 (chosen per weight) or a channel count, got {group}")
        self.bits, self.group, self.exclude, self.min_weights = bits, group, name_set(exclude), min_weights
        self.weighted, self.table_bits = weighted, table_bits

    def measures(self) -> bool:
        return self.weighted

    def requires(self, model: ir.Model) -> list[Request]:
        return [Request(GRAM, linear_inputs(model))] if self.weighted else []

    def ladder(self) -> tuple[str, ...]:
        """One more bit at a time, two at most (a 4-bit layer: 5, then 6 bits), then float."""
        return (*(_form(bits) for bits in range(self.bits, min(8, self.bits + 2) + 1)), self.untouched)

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
            self._cluster(model.graph, node, weight, _channel_axis(node))
        clustered = [outcome for outcome in self.outcomes if outcome.changed]
        if clustered:
            self.changed(f"{len(clustered)} weights clustered into codebooks, decoded by ONNX Runtime at load")
        return ir.passes.PassResult(model, modified=bool(clustered))

    def _cluster(self, graph: ir.Graph, node: ir.Node, weight: ir.Value, axis: int) -> None:
        values = constant_array(weight)
        own = self.table_bits if self.table_bits and is_op(node, "Gather") else self.bits
        bits = int(self.backed_off.get(node.name, _form(own)).split("-")[0])
        channels = np.moveaxis(values, axis, 0)  # [out channels, ...]
        group = min(self.group or _cheap_group(channels.shape, bits), channels.shape[0])
        stats = self._input_statistics(node, channels.shape)
        importance = None if stats is None else np.asarray(stats.mean_square, np.float64)
        gram = getattr(stats, "gram", None)
        key = (node.name, fingerprint(values), bits)
        if key not in self._clusterings:
            tables, indices = zip(*(
                kmeans(channels[start:start + group].ravel(), 1 << bits,
                       weights=None if importance is None else np.broadcast_to(
                           importance, channels[start:start + group].shape).ravel())
                for start in range(0, channels.shape[0], group)))
            if gram is not None:
                indices = _fed_back(channels, tables, group, gram)
            self._clusterings[key] = (tables, indices)
        tables, approximation = [], []
        for table, entries in zip(*self._clusterings[key]):
            padded = np.zeros(1 << bits, np.float32)  # every codebook 2^bits long: group g's starts at g·2^bits
            padded[:table.size] = table
            tables.append(padded)
            approximation.append(table[entries])
        index = np.concatenate(self._clusterings[key][1]).reshape(channels.shape)
        shape = [1] * values.ndim  # the channels' axis of the weight, for each channel's codebook offset
        shape[axis] = channels.shape[0]
        decoded = self._decoder(graph, node, np.moveaxis(index, 0, axis), np.concatenate(tables), bits,
                                (shape, group) if len(tables) > 1 else None)
        for use in list(weight.uses()):  # a weight read by several layers is clustered once
            use.node.replace_input_with(use.idx, decoded)
        drop_unused_initializers(graph, [weight])
        after = -(-values.size // 8) * bits + sum(table.nbytes for table in tables)
        error = np.sqrt(np.mean((np.concatenate(approximation) - channels.ravel()) ** 2)) / \
            max(float(np.sqrt(np.mean(values.astype(np.float64) ** 2))), 1e-30)
        self.record(node, _form(bits), before=values.nbytes, after=after,
                    reason=FALLBACK_REASON if node.name in self.backed_off else
                    "" if own == self.bits else f"table_bits={own}, an embedding table's width",
                    detail=f"{len(tables)} codebook(s) of {1 << bits}, relative RMS error {error:.3f}"
                           + (", chosen with error feedback on its inputs' Gram matrix" if gram is not None else
                              ", weighted by its inputs' mean squares" if importance is not None else ""))

    def _input_statistics(self, node: ir.Node, shape: tuple[int, ...]):
        """The statistics of a MatMul/Gemm/Attention's input (each channel's mean square and their Gram
        matrix, over the last axis of [out channels, in channels]) when it was measured, else None."""
        linear = is_op(node, "MatMul", "Gemm") or _fused_attention(node)
        stats = self.statistics.channels.get(node.inputs[0].name) if self.weighted and linear else None
        if stats is None or len(shape) != 2 or stats.mean_square.shape != (shape[1],):
            return None
        gram = getattr(stats, "gram", None)
        return stats if gram is None or gram.shape == (shape[1],) * 2 else dataclasses.replace(stats, gram=None)

    def _decoder(self, graph: ir.Graph, node: ir.Node, index: np.ndarray, table: np.ndarray, bits: int,
                 channel_groups: tuple[list[int], int] | None) -> ir.Value:
        """Nodes computing the weight from packed bit-planes and the codebooks, all on constants:
        bit i of byte j of plane p = (byte // 2^i) mod 2; index = Σ_p bit_p · 2^p (`index`: each weight's
        entry, in the layer's layout) plus its channel's codebook offset, computed (`channel_groups`:
        the shape that lays the channels along the weight's axis, and the channels per codebook);
        weight = table[index]."""
        base = node.name or "weight"
        planes = np.packbits(((index.reshape(1, -1) >> np.arange(bits)[:, None]) & 1).astype(np.uint8), axis=1,
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

        # in uint8 until the index is whole (a quarter of int32's memory while ONNX Runtime folds it),
        # on [bits, bytes, 8] until the planes are summed
        bit = op("Mod", [op("Div", [const(planes[..., None], "planes"),
                                    const((1 << np.arange(8)).astype(np.uint8).reshape(1, 1, 8), "bit")]),
                         const(np.array(2, np.uint8), "two")])
        place = op("Mul", [bit, const((1 << np.arange(bits)).astype(np.uint8).reshape(bits, 1, 1), "plane")])
        split = ir.Node("", "Split", [place, const(np.ones(bits, np.int64), "split")], num_outputs=bits,
                        name=fresh_node_name(graph, f"{base}/decode"))  # Σ_p: ReduceSum has no uint8 kernel
        graph.insert_before(node, split)
        index_value = split.outputs[0]
        for plane in split.outputs[1:]:
            index_value = op("Add", [index_value, plane])
        if index.size != width * 8:  # the last byte's unused bits go
            index_value = op("Slice", [shaped(index_value, [-1]), const(np.array([0], np.int64), "start"),
                                       const(np.array([index.size], np.int64), "stop")])
        index_value = op("Cast", [shaped(index_value, list(index.shape))], ir.AttrInt64("to", ir.DataType.INT32))
        if channel_groups is not None:  # channel c's entries point into its group's codebook, at c // group · 2^bits
            shape, group = channel_groups
            channel = op("Range", [const(np.array(0, np.int32), "zero"), const(np.array(max(shape), np.int32), "count"),
                                   const(np.array(1, np.int32), "one")])
            offset = op("Mul", [op("Div", [channel, const(np.array(group, np.int32), "group")]),
                                const(np.array(1 << bits, np.int32), "entries")])
            index_value = op("Add", [index_value, shaped(offset, shape)])
        weight = op("Gather", [const(table, "table"), index_value])
        weight.name = fresh_value_name(graph, f"{base}_clustered")
        return weight


def _cheap_group(shape: tuple[int, ...], bits: int) -> int:
    """The fewest output channels (a power of two) whose codebook, 2^bits floats, costs at most 1/32 of
    their packed indices: g · (values per channel) · bits/8 ≥ 32 · 2^bits · 4 bytes."""
    per_channel = int(np.prod(shape[1:]))
    least = -(-(1 << bits) * 4 * 32 * 8 // (per_channel * bits))
    return 1 << max(0, int(least - 1).bit_length())


def _fed_back(channels: np.ndarray, tables: tuple, group: int, gram: np.ndarray) -> tuple[np.ndarray, ...]:
    """Each group's indices (its channels' entries, flat) chosen with error feedback on the input's Gram
    matrix (codebook.assign_with_feedback), from [out channels, in channels] weights and their codebooks."""
    sizes = np.array([table.size for table in tables])
    padded = np.stack([np.pad(table.astype(np.float64), (0, sizes.max() - table.size), mode="edge") for table in tables])
    columns = np.arange(channels.shape[0]) // group
    chosen = np.minimum(assign_with_feedback(channels.T, padded, columns, gram).T, sizes[columns][:, None] - 1)
    return tuple(chosen[start:start + group].ravel() for start in range(0, channels.shape[0], group))


def _fused_attention(node: ir.Node) -> bool:
    return node.domain == MS_DOMAIN and node.op_type == "Attention"


def _channel_axis(node: ir.Node) -> int:
    """The weight's output-channel axis: N of MatMul's K×N (and of Gemm's, or its first with transB;
    of a fused Attention's packed K×3N), Conv's first, an embedding table's columns (each row is a
    token's vector: its columns are the channels Gather's output carries)."""
    if is_op(node, "MatMul") or _fused_attention(node):
        return 1
    if is_op(node, "Gather") and node.attributes.get_int("axis", 0) == 0 and constant_array(node.inputs[0]).ndim == 2:
        return 1
    if is_op(node, "Gemm"):
        return 0 if node.attributes.get_int("transB", 0) else 1
    return 0


def _form(bits: int) -> str:
    return f"{bits}-bit codebook"
