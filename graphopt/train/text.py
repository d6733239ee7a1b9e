"""Training data from a text file: one sample per non-empty line, tokenized with the model's own
tokenizer (a Hugging Face tokenizer.json, or the folder holding it), padded to the longest line (at
most `max_length` tokens) and given to the teacher's inputs by their names: input_ids,
attention_mask, token_type_ids."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from graphopt.errors import InputError

_ARRAYS = {"input_ids": lambda encoding: encoding.ids, "attention_mask": lambda encoding: encoding.attention_mask,
           "token_type_ids": lambda encoding: encoding.type_ids}


def tokenize_file(path: str | os.PathLike, tokenizer: str | os.PathLike | None, inputs: dict[str, np.dtype],
                  max_length: int = 128) -> dict[str, np.ndarray]:
    """{teacher input name: array [lines, tokens]} for the lines of `path`; `inputs`: the teacher's input
    names and dtypes."""
    path = Path(path)
    if tokenizer is None:
        raise InputError(f"{path}: a text file needs --tokenizer (the model's tokenizer.json, or its folder)")
    unknown = [name for name in inputs if name not in _ARRAYS]
    if unknown:
        raise InputError(f"{path}: the teacher's input {unknown[0]!r} is not one a tokenizer gives "
                         f"({', '.join(_ARRAYS)}): give the data as .npz")
    lines = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    if not lines:
        raise InputError(f"{path}: no text (one sample per non-empty line)")
    encoder = _tokenizer(Path(tokenizer))
    encoder.enable_truncation(max_length)
    encoder.enable_padding()
    encodings = encoder.encode_batch(lines)
    return {name: np.array([_ARRAYS[name](encoding) for encoding in encodings], dtype=dtype)
            for name, dtype in inputs.items()}


def _tokenizer(path: Path):
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise InputError("text data needs the tokenizers package: pip install 'graphopt[train]'") from None
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise InputError(f"--tokenizer {path}: no tokenizer.json there")
    try:
        return Tokenizer.from_file(str(file))
    except Exception as error:  # noqa: BLE001  (the tokenizers library raises its own Exception type)
        raise InputError(f"--tokenizer {file}: not a tokenizer ({str(error).splitlines()[0][:120]})") from None
