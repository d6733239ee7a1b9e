"""Writes a model as one .onnx file, streaming each weight from where it lives to the file.

onnx-ir's save builds a ModelProto holding a copy of every weight and then serializes it
(a second copy) before writing. Here the graph is serialized without its main-graph
weights, and each weight is appended as an `initializer` record whose bytes go straight
from the tensor's buffer to the file. Protobuf merges the fields of an embedded message
wherever they appear, so the file parses to the same model.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnx_ir as ir

_MODEL_GRAPH_FIELD = 7
_GRAPH_INITIALIZER_FIELD = 5
_TENSOR_RAW_DATA_FIELD = 9
_LENGTH_DELIMITED = 2
_PLACEHOLDER = "graphopt-streamed-weight"


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(field: int) -> bytes:
    return _varint((field << 3) | _LENGTH_DELIMITED)


def _raw_bytes(tensor: ir.TensorProtocol) -> memoryview:
    """The tensor's little-endian bytes, without a copy where the buffer allows it."""
    if isinstance(tensor, ir.TensorProtoTensor) and tensor.raw.HasField("raw_data"):
        return memoryview(tensor.raw.raw_data)
    if tensor.dtype.bitwidth >= 8 and not isinstance(tensor, ir.TensorProtoTensor):
        array = np.ascontiguousarray(tensor.numpy())
        if array.dtype.byteorder != ">":
            return memoryview(array.reshape(-1).view(np.uint8))
    return memoryview(tensor.tobytes())


def _tensor_header(name: str, tensor: ir.TensorProtocol) -> bytes:
    header = onnx.TensorProto(name=name, data_type=tensor.dtype.value, dims=list(tensor.shape.numpy()))
    if tensor.doc_string:
        header.doc_string = tensor.doc_string
    return header.SerializeToString()


def _streamable(tensor: ir.TensorProtocol | None) -> bool:
    return tensor is not None and tensor.dtype != ir.DataType.STRING


def write_model(model: ir.Model, path: str | os.PathLike) -> None:
    """Write `model` to `path` (which must not exist yet) with every weight stored inline."""
    streamed = [(value, value.const_value) for value in model.graph.initializers.values()
                if _streamable(value.const_value)]
    try:
        for value, tensor in streamed:
            value.const_value = ir.ExternalTensor(_PLACEHOLDER, 0, 0, tensor.dtype,
                                                  shape=tensor.shape, name=value.name)
        proto = ir.serde.serialize_model(model)
    finally:
        for value, tensor in streamed:
            value.const_value = tensor
    streamed_names = {value.name for value, _ in streamed}
    kept = [tensor for tensor in proto.graph.initializer if tensor.name not in streamed_names]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(kept)
    graph_bytes = proto.graph.SerializeToString()
    proto.ClearField("graph")
    prefixes = []
    for value, tensor in streamed:
        head = _tensor_header(value.name, tensor) + _key(_TENSOR_RAW_DATA_FIELD) + _varint(tensor.nbytes)
        prefixes.append(_key(_GRAPH_INITIALIZER_FIELD) + _varint(len(head) + tensor.nbytes) + head)
    graph_size = len(graph_bytes) + sum(len(prefix) + tensor.nbytes
                                        for prefix, (_, tensor) in zip(prefixes, streamed))
    with open(path, "xb") as stream:
        stream.write(proto.SerializeToString())
        stream.write(_key(_MODEL_GRAPH_FIELD) + _varint(graph_size))
        stream.write(graph_bytes)
        for prefix, (value, tensor) in zip(prefixes, streamed):
            data = _raw_bytes(tensor)
            if data.nbytes != tensor.nbytes:
                raise ValueError(f"tensor {value.name!r} has {data.nbytes} bytes, expected {tensor.nbytes}")
            stream.write(prefix)
            stream.write(data)
