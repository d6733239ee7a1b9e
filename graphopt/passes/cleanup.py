"""Cleanup passes: dead code, constants as initializers, duplicate weights, CSE, ordering.

Most wrap onnx-ir's common passes. Deduplication is our own: among tensors whose dtype and
shape collide it compares the first and last bytes, hashes only the ones that still collide,
confirms byte equality before merging, and never merges graph inputs or outputs.
"""

from __future__ import annotations

import hashlib
import itertools
import weakref
from collections import defaultdict
from collections.abc import Iterator

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as ir_passes

from graphopt.passes.registry import Pass, register

_HASH_CHUNK_BYTES = 16 << 20
_SAMPLE_BYTES = 64


@register("remove_unused")
class RemoveUnused(Pass):
    """Remove dead nodes (Constant nodes included), unused initializers (a body's too), functions and opsets."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = ir_passes.RemoveUnusedNodesPass()(model).modified
        modified |= _remove_unused_body_initializers(model)  # onnx-ir's pass looks at the main graph's only
        modified |= ir_passes.RemoveUnusedFunctionsPass()(model).modified
        modified |= ir_passes.RemoveUnusedOpsetsPass()(model).modified
        return ir.passes.PassResult(model, modified=modified)


def _remove_unused_body_initializers(model: ir.Model) -> bool:
    """A body's initializers that no node of the model reads (a node a pass took out, or the body of an If
    a pass inlined, still holds its inputs)."""
    removed = False
    graphs = list(model.graphs())
    live = {id(graph) for graph in graphs}
    for graph in graphs[1:]:
        for name, value in list(graph.initializers.items()):
            if not any(id(use.node.graph) in live for use in value.uses()) and not value.is_graph_output():
                del graph.initializers[name]
                removed = True
    return removed


@register("lift_constants")
class LiftConstants(Pass):
    """Turn Constant nodes into initializers, so constants are data rather than nodes.

    Every Constant node is lifted, whatever its size. Below IR version 4 (IR version 3), where
    initializers must also be graph inputs, the pass is skipped with the reason.
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        if model.ir_version < 4:
            self.skip(f"IR version {model.ir_version} requires initializers to be graph inputs")
            return ir.passes.PassResult(model, modified=False)
        lifted = ir_passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)
        return ir.passes.PassResult(model, modified=lifted(model).modified)


@register("dedupe_initializers")
class DedupeInitializers(Pass):
    """Share one copy of initializers with identical dtype, shape and bytes."""

    def __init__(self) -> None:
        super().__init__()
        self._samples: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        for graph in model.graphs():
            modified |= _dedupe_graph(graph, self._sample)
        return ir.passes.PassResult(model, modified=modified)

    def _sample(self, tensor: ir.TensorProtocol) -> bytes:
        """Samples are cached per tensor object, so fixed-point iterations do not re-read weights."""
        sample = self._samples.get(tensor)
        if sample is None:
            sample = self._samples[tensor] = _sample(tensor)
        return sample


def _dedupe_graph(graph: ir.Graph, sample) -> bool:
    groups: dict[tuple, list[ir.Value]] = defaultdict(list)
    for value in graph.initializers.values():
        tensor = value.const_value
        if tensor is None or value.is_graph_input() or value.is_graph_output():
            continue
        groups[(tensor.dtype, tuple(tensor.shape.dims))].append(value)
    modified = False
    for candidates in groups.values():
        if len(candidates) < 2:
            continue
        by_sample: dict[bytes, list[ir.Value]] = defaultdict(list)
        for value in candidates:
            by_sample[sample(value.const_value)].append(value)
        for same_sample in by_sample.values():
            if len(same_sample) > 1:
                modified |= _merge_identical(graph, same_sample)
    return modified


def _merge_identical(graph: ir.Graph, values: list[ir.Value]) -> bool:
    """Point every use of a duplicate at the first identical tensor; hash first, then compare."""
    kept: dict[str, list[ir.Value]] = defaultdict(list)
    modified = False
    for value in values:
        digest = _digest(value.const_value)
        twin = next((k for k in kept[digest] if _same_contents(k.const_value, value.const_value)), None)
        if twin is None:
            kept[digest].append(value)
            continue
        value.replace_all_uses_with(twin)
        graph.initializers.pop(value.name)
        modified = True
    return modified


def _chunks(tensor: ir.TensorProtocol) -> Iterator[bytes | np.ndarray]:
    """The tensor's bytes in bounded pieces; external data is read from its file, not mapped,
    so comparing two multi-GB weights never holds more than one chunk of each."""
    if tensor.dtype == ir.DataType.STRING:
        yield b"\0".join(tensor.string_data())
        return
    if isinstance(tensor, ir.ExternalTensor):
        with open(tensor.path, "rb") as stream:
            stream.seek(tensor.offset or 0)
            remaining = tensor.nbytes
            while remaining > 0:
                chunk = stream.read(min(_HASH_CHUNK_BYTES, remaining))
                if not chunk:
                    return
                remaining -= len(chunk)
                yield chunk
        return
    data = tensor.numpy().reshape(-1).view(np.uint8)
    for start in range(0, len(data), _HASH_CHUNK_BYTES):
        yield data[start:start + _HASH_CHUNK_BYTES]


def _sample(tensor: ir.TensorProtocol) -> bytes:
    """The first and last bytes: enough to tell apart nearly all different weights unread."""
    if tensor.dtype == ir.DataType.STRING or tensor.nbytes <= 2 * _SAMPLE_BYTES:
        whole = b"".join(bytes(chunk) for chunk in _chunks(tensor))
        return whole[:_SAMPLE_BYTES] + whole[-_SAMPLE_BYTES:]
    if isinstance(tensor, ir.ExternalTensor):
        with open(tensor.path, "rb") as stream:
            stream.seek(tensor.offset or 0)
            head = stream.read(_SAMPLE_BYTES)
            stream.seek((tensor.offset or 0) + tensor.nbytes - _SAMPLE_BYTES)
            return head + stream.read(_SAMPLE_BYTES)
    array = tensor.numpy()
    count = max(1, _SAMPLE_BYTES // array.itemsize)  # .flat reads only these, even from a strided view
    return array.flat[:count].tobytes() + array.flat[array.size - count:].tobytes()


def _digest(tensor: ir.TensorProtocol) -> str:
    hasher = hashlib.blake2b(digest_size=16)
    for chunk in _chunks(tensor):
        hasher.update(chunk)
    return hasher.hexdigest()


def _same_contents(a: ir.TensorProtocol, b: ir.TensorProtocol) -> bool:
    if a.dtype == ir.DataType.STRING:
        return list(a.string_data()) == list(b.string_data())
    # Same dtype and shape, so both sides yield the same _HASH_CHUNK_BYTES-sized pieces.
    return all(bytes(chunk_a) == bytes(chunk_b)
               for chunk_a, chunk_b in itertools.zip_longest(_chunks(a), _chunks(b), fillvalue=b""))


@register("eliminate_common_subexpressions")
class EliminateCommonSubexpressions(Pass):
    """Merge nodes that apply the same op with the same attributes to the same inputs.

    Never merged: random ops (RandomUniform, RandomNormal, their -Like forms, Multinomial), control
    flow (If, Loop, Scan), and nodes with a tensor attribute of more than 1024 elements. A graph
    output keeps its declared type and shape.
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        # onnx-ir's pass may hand a graph output's name to an untyped intermediate value;
        # an output must keep its declared type and shape.
        declared = [(value.type, value.shape) for value in model.graph.outputs]
        merged = ir_passes.CommonSubexpressionEliminationPass(size_limit=1024)(model)
        for value, (type_, shape) in zip(model.graph.outputs, declared):
            if value.type is None:
                value.type = type_
            if value.shape is None:
                value.shape = shape
        return ir.passes.PassResult(model, modified=merged.modified)


@register("topological_sort")
class TopologicalSort(Pass):
    """Order nodes so every value is produced before it is read (stable for sorted graphs)."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        return ir.passes.PassResult(model, modified=ir_passes.TopologicalSortPass()(model).modified)
