"""Input synthesis and .npz loading."""

from __future__ import annotations

import numpy as np
import pytest

from graphopt.errors import InputError
from graphopt.model import from_proto
from graphopt.runtime.inputs import (
    SECOND_DIMS,
    load_npz,
    parse_ranges,
    parse_shapes,
    synthesize,
)
from tests.runtime.models import text_classifier


@pytest.fixture
def model():
    return from_proto(text_classifier(vocab=50))


def test_symbols_agree_across_inputs_and_ids_stay_in_vocab(model):
    feeds = synthesize(model)
    assert feeds["input_ids"].shape == feeds["attention_mask"].shape == (2, 16)
    assert feeds["input_ids"].dtype == np.int64
    assert 0 <= feeds["input_ids"].min() and feeds["input_ids"].max() < 50
    assert np.all(feeds["attention_mask"] == 1)


def test_second_shape_set_differs(model):
    feeds = synthesize(model, defaults=SECOND_DIMS)
    assert feeds["input_ids"].shape == (1, 7)


def test_shape_and_range_overrides(model):
    feeds = synthesize(model, parse_shapes(["input_ids=3x5"]), parse_ranges(["input_ids=10:12"]))
    assert feeds["input_ids"].shape == (3, 5) and feeds["attention_mask"].shape == (3, 5)
    assert set(np.unique(feeds["input_ids"])) <= {10, 11}


@pytest.mark.parametrize("spec, message", [
    (["input_ids"], "must look like name=1x128"),
    (["input_ids=3xa"], "must look like name=1x128"),
    (["nope=1x2"], "unknown input 'nope'"),
    (["input_ids=1x2x3"], "rank 3 but the model expects rank 2"),
])
def test_bad_shapes(model, spec, message):
    with pytest.raises(InputError, match=message):
        synthesize(model, parse_shapes(spec))


def test_bad_range():
    with pytest.raises(InputError, match="must look like"):
        parse_ranges(["input_ids=5"])
    with pytest.raises(InputError, match="low must be below high"):
        parse_ranges(["input_ids=5:5"])


def test_npz_loads_and_checks(model, tmp_path):
    good = tmp_path / "good.npz"
    np.savez(good, input_ids=np.zeros((1, 4), np.int64), attention_mask=np.ones((1, 4), np.int64))
    assert load_npz(good, model)["input_ids"].shape == (1, 4)
    cases = {
        "missing.npz": ({"input_ids": np.zeros((1, 4), np.int64)}, "no array for input 'attention_mask'"),
        "dtype.npz": ({"input_ids": np.zeros((1, 4), np.int32), "attention_mask": np.ones((1, 4), np.int64)},
                      "'input_ids' is int32, the model expects int64"),
        "rank.npz": ({"input_ids": np.zeros(4, np.int64), "attention_mask": np.ones((1, 4), np.int64)},
                     "'input_ids' has rank 1, the model expects rank 2"),
    }
    for name, (arrays, message) in cases.items():
        path = tmp_path / name
        np.savez(path, **arrays)
        with pytest.raises(InputError, match=message):
            load_npz(path, model)
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(InputError, match="not an .npz file of arrays"):
        load_npz(tmp_path / "junk.npz", model)
    with pytest.raises(InputError, match="no such file"):
        load_npz(tmp_path / "absent.npz", model)
