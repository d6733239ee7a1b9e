"""ONNX element types as torch dtypes."""

from __future__ import annotations

import torch

_DTYPES = {1: torch.float32, 2: torch.uint8, 3: torch.int8, 4: torch.uint16, 5: torch.int16, 6: torch.int32,
           7: torch.int64, 9: torch.bool, 10: torch.float16, 11: torch.float64, 12: torch.uint32,
           13: torch.uint64, 16: torch.bfloat16}


def torch_dtype(onnx_type: int) -> torch.dtype:
    from graphopt.train.ops import Unsupported

    try:
        return _DTYPES[int(onnx_type)]
    except KeyError:
        raise Unsupported(f"ONNX element type {onnx_type} has no torch dtype to train in") from None
