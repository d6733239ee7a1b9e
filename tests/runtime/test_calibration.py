"""CalibrationData: the three forms of calibration samples, and their errors before any work."""

from __future__ import annotations

import numpy as np
import pytest

from graphopt import model as model_io
from graphopt.errors import InputError
from graphopt.runtime.activations import channel_stats
from graphopt.runtime.calibration import CalibrationData
from tests.runtime.models import text_classifier

_MODEL = model_io.from_proto(text_classifier())


def _ids(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 50, shape).astype(np.int64)


def test_an_npz_holds_the_samples_along_axis_0(tmp_path):
    ids = _ids(5, 7)
    np.savez(tmp_path / "same_rank.npz", input_ids=ids, attention_mask=np.ones_like(ids))
    samples = list(CalibrationData(_MODEL, tmp_path / "same_rank.npz"))
    assert len(samples) == 5 and all(sample["input_ids"].shape == (1, 7) for sample in samples)
    np.testing.assert_array_equal(samples[3]["input_ids"][0], ids[3])
    # one axis more than the input: each sample keeps its own batch
    stacked = _ids(3, 2, 7)
    np.savez(tmp_path / "stacked.npz", input_ids=stacked, attention_mask=np.ones_like(stacked))
    data = CalibrationData(_MODEL, tmp_path / "stacked.npz")
    assert len(data) == 3 and [sample["input_ids"].shape for sample in data] == [(2, 7)] * 3


@pytest.mark.parametrize("form", ["npz", "folder", "iterable"])
def test_split_off_holds_out_the_last_samples(tmp_path, form):
    ids = _ids(5, 7)
    if form == "npz":
        np.savez(tmp_path / "c.npz", input_ids=ids, attention_mask=np.ones_like(ids))
        source = tmp_path / "c.npz"
    elif form == "folder":
        for index in range(5):
            np.savez(tmp_path / f"{index}.npz", input_ids=ids[index:index + 1], attention_mask=np.ones((1, 7), np.int64))
        source = tmp_path
    else:
        source = [{"input_ids": ids[i:i + 1], "attention_mask": np.ones((1, 7), np.int64)} for i in range(5)]
    data = CalibrationData(_MODEL, source)
    held_out = data.split_off(2)
    assert len(data) == 3 and [sample["input_ids"][0, 0] for sample in data] == list(ids[:3, 0])
    assert [sample["input_ids"][0, 0] for sample in held_out] == list(ids[3:, 0])
    with pytest.raises(ValueError, match="cannot hold out 3 of 3"):
        data.split_off(3)


def test_a_folder_gives_one_input_set_per_file_at_its_own_shapes(tmp_path):
    for index, length in enumerate((4, 9, 6)):
        ids = _ids(1, length, seed=index)
        np.savez(tmp_path / f"{index}.npz", input_ids=ids, attention_mask=np.ones_like(ids))
    data = CalibrationData(_MODEL, tmp_path)
    assert len(data) == 3 and [sample["input_ids"].shape[1] for sample in data] == [4, 9, 6]
    assert [sample["input_ids"].shape[1] for sample in data] == [4, 9, 6]  # re-iterable


def test_an_iterator_is_read_once_and_the_statistics_match_a_list():
    sets = [{"input_ids": _ids(1, length, seed=length), "attention_mask": np.ones((1, length), np.int64)}
            for length in (3, 8)]
    data = CalibrationData(_MODEL, iter(sets))
    assert len(data) == 2 and len(list(data)) == len(list(data)) == 2
    names = ["embedded", "pooled"]
    from_data, from_list = channel_stats(_MODEL, names, data), channel_stats(_MODEL, names, sets)
    for name in names:
        assert from_data[name].count == from_list[name].count == (11 if name == "embedded" else 2)
        np.testing.assert_array_equal(from_data[name].peak, from_list[name].peak)


@pytest.mark.parametrize("arrays, message", [
    ({"input_ids": _ids(4, 5)}, "no array for input 'attention_mask'"),
    ({"input_ids": _ids(4, 5).astype(np.int32), "attention_mask": np.ones((4, 5), np.int64)}, "is int32"),
    ({"input_ids": _ids(4, 5, 2, 2), "attention_mask": np.ones((4, 5, 2, 2), np.int64)}, "rank"),
    ({"input_ids": _ids(4, 5), "attention_mask": np.ones((3, 5), np.int64)}, "different numbers of samples"),
    ({"input_ids": _ids(0, 5), "attention_mask": np.ones((0, 5), np.int64)}, "no calibration samples"),
    ({"input_ids": _ids(2, 5) + 100, "attention_mask": np.ones((2, 5), np.int64)}, "sample 0"),
])
def test_bad_npz_data_is_a_clear_error_before_any_run(tmp_path, arrays, message):
    np.savez(tmp_path / "calib.npz", **arrays)
    with pytest.raises(InputError, match=message):
        CalibrationData(_MODEL, tmp_path / "calib.npz")


def test_bad_folders_and_iterables_are_clear_errors(tmp_path):
    with pytest.raises(InputError, match="no calibration samples"):
        CalibrationData(_MODEL, tmp_path)
    np.savez(tmp_path / "a.npz", input_ids=_ids(1, 4))
    with pytest.raises(InputError, match="a.npz: no array for input 'attention_mask'"):
        CalibrationData(_MODEL, tmp_path)
    with pytest.raises(InputError, match="no such file"):
        CalibrationData(_MODEL, tmp_path / "missing.npz")
    with pytest.raises(InputError, match="not one set"):
        CalibrationData(_MODEL, {"input_ids": _ids(1, 4), "attention_mask": np.ones((1, 4), np.int64)})
    with pytest.raises(InputError, match="calibration set 1"):
        CalibrationData(_MODEL, [{"input_ids": _ids(1, 4), "attention_mask": np.ones((1, 4), np.int64)}, {}])
    with pytest.raises(InputError, match="no calibration samples"):
        CalibrationData(_MODEL, [])
