"""The foreign-model corpus (tests/foreign_models.py) through the float presets and the quantize modes.

Float presets on both targets must validate on realistic inputs. A quantize mode either writes a
model that passed its validation, or refuses with one line saying why (nothing to quantize, the
tolerance not met, a guard): never a crash, never a usage error on the corpus's own data. Speed is
not judged here (the benchmark does that in a quiet process): the latency guard is off.
"""

from __future__ import annotations

import pytest

import graphopt
from graphopt.errors import GuardRefused, ValidationFailed
from tests.foreign_models import CORPUS, write_calibration

pytestmark = pytest.mark.slow

MODES = ("dynamic", "static", "weight-only")


@pytest.fixture(scope="module")
def calibration(tmp_path_factory):
    folder = tmp_path_factory.mktemp("foreign")
    made = {}

    def data(model):
        if model.name not in made:
            made[model.name] = write_calibration(model, folder / model.name, count=16)
        return made[model.name]

    return data


@pytest.mark.parametrize("model", CORPUS, ids=lambda model: model.name)
def test_float_presets_validate_on_realistic_inputs(model, calibration):
    sample = sorted(calibration(model).glob("*.npz"))[0]
    for preset in ("O1", "O3"):
        for target in ("portable", "ort"):
            result = graphopt.optimize(model.path(), preset=preset, target=target, validate=True, inputs=sample)
            assert result.validation.passed, (preset, target, result.validation.summary())


@pytest.mark.parametrize("model", CORPUS, ids=lambda model: model.name)
def test_quantize_modes_write_a_validated_model_or_say_why_not(model, calibration):
    outcomes = {}
    for mode in MODES:
        try:
            result = graphopt.quantize(model.path(), mode=mode, target="ort", calibration=calibration(model),
                                       check_speed=False)
        except (GuardRefused, ValidationFailed) as refused:  # NothingChanged is a GuardRefused
            message = str(refused)
            assert "\n" not in message and "nothing was written" in message, message
            outcomes[mode] = message
            continue
        assert result.validation.passed and result.changed, (mode, result.validation.summary())
        outcomes[mode] = f"{len(result.changed)} layers"
    print(f"\n{model.name}: {outcomes}")


@pytest.mark.parametrize("model", [model for model in CORPUS if "CNN" in model.kind or "detector" in model.kind
                                   or "classifier" in model.kind], ids=lambda model: model.name)
def test_channel_pruning_writes_a_validated_model_or_says_why_not(model, calibration):
    """No torch source: the deployed graph itself pruned, every reader rewritten, validated on realistic
    inputs at the pruning tolerance (the fallback backing families off), or one line saying why."""
    try:
        result = graphopt.compress(model.path(), prune_channels=0.3, target="ort", calibration=calibration(model),
                                   check_speed=False)
    except (GuardRefused, ValidationFailed) as refused:
        message = str(refused)
        assert "\n" not in message and "nothing was written" in message, message
        print(f"\n{model.name}: {message}")
        return
    assert result.validation.passed and result.changed, result.validation.summary()
    print(f"\n{model.name}: {len(result.changed)} families pruned, {len(result.untouched)} kept; "
          f"{result.validation.summary()}")


@pytest.mark.parametrize("model", CORPUS, ids=lambda model: model.name)
def test_float16_writes_a_half_sized_validated_model_or_says_why_not(model, calibration):
    """The fp16 preset (weights in half on the CPU EP) and every node in half (compute=all), its value
    ranges measured on the corpus's realistic inputs: validated at the fp16 tolerance on held-out
    samples, the converted layers' weights halved (ddddocr-int8's are mostly int8 already), or one line
    saying why; never a broken model."""
    for compute in ("auto", "all"):
        try:
            result = graphopt.compress(model.path(), precision="fp16", precision_compute=compute, target="ort",
                                       calibration=calibration(model), check_speed=False)
        except (GuardRefused, ValidationFailed) as refused:
            message = str(refused)
            assert "\n" not in message and "nothing was written" in message, message
            print(f"\n{model.name} ({compute}): {message}")
            continue
        assert result.validation.passed and result.changed, (compute, result.validation.summary())
        converted = [outcome for outcome in result.outcomes if outcome.changed]
        before, after = (sum(outcome.bytes_before for outcome in converted), sum(outcome.bytes_after for outcome in converted))
        assert after <= 0.55 * before and result.result_bytes < result.float_bytes, (compute, before, after)
        print(f"\n{model.name} ({compute}): {len(result.changed)} layers, "
              f"{result.result_bytes / result.float_bytes:.3f}x; {result.validation.summary()}")
