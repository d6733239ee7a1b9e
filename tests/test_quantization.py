"""graphopt.quantize's flow: the sensitivity fallback, the latency and kernel guards, the result."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_ir as ir
import pytest

import graphopt
from graphopt import model as model_io
from graphopt.cli import main
from graphopt.errors import GuardRefused, InputError
from graphopt.lossy import Judgement, Layer, choose, guards
from graphopt.analysis.attention import has_attention
from graphopt.lossy.fallback import Fallback, Trial
from graphopt.lossy.run import FROZEN
from graphopt.render import lossy_lines
from graphopt.runtime import guard, kernels
from graphopt.runtime.guard import LatencyCheck, compare_latency, missing_kernels
from graphopt.runtime.providers import SessionConfig
from tests.helpers import op_types, parse, run

_RNG = np.random.default_rng(0)
_W1 = _RNG.standard_normal((16, 16)).astype(np.float32)
_W1[0] *= 1e-3  # the outlier channel of x barely reaches h: only the first layer suffers
_W2 = _RNG.standard_normal((16, 16)).astype(np.float32)


def _floats(array: np.ndarray) -> str:
    return ", ".join(repr(float(item)) for item in array.reshape(-1))


def _two_layers() -> onnx.ModelProto:
    model = parse(f"""<ir_version: 9, opset_import: ["" : 18]>
        g (float[B, 16] x) => (float[B, 16] y) <float[16, 16] w1 = {{{_floats(_W1)}}},
                                                 float[16, 16] w2 = {{{_floats(_W2)}}}> {{
            h = MatMul(x, w1)
            y = MatMul(h, w2) }}""")
    model.graph.node[0].name, model.graph.node[1].name = "first", "second"
    return model


def _outlier_inputs() -> dict[str, np.ndarray]:
    x = np.random.default_rng(1).standard_normal((64, 16)).astype(np.float32)  # the same whichever test ran first
    x[:, 0] *= 300  # one channel owns the int8 range of x: the first layer loses the rest
    return {"x": x}


def _damage_measure(damage: dict[str, float]):
    """A score that each layer held back (any form) stops costing."""
    return lambda backed_off: Judgement(1.0 - sum(value for name, value in damage.items() if name not in backed_off),
                                        True)


def test_the_fallback_holds_back_the_most_sensitive_first_and_stops_at_the_budget():
    measure = _damage_measure({"a": 0.01, "b": 0.2, "c": 0.05})
    layers = [Layer(name, ("float",)) for name in "abc"]
    chosen = choose(layers, measure, budget=0.98)
    assert chosen.met and chosen.backed_off == {"b": "float", "c": "float"} and chosen.score == pytest.approx(0.99)
    assert chosen.sensitivity == pytest.approx({"a": 0.01, "b": 0.2, "c": 0.05})
    assert choose(layers, measure, budget=0.5).backed_off == {}
    unmet = choose(layers[:1], measure, budget=0.99)
    assert not unmet.met and unmet.backed_off == {"a": "float"} and unmet.score == pytest.approx(0.75)


def test_the_fallback_with_costs_ranks_by_sensitivity_per_cost():
    measure = _damage_measure({"table": 0.02, "small": 0.01, "other": 0.01})
    layers = [Layer("table", ("int8",), 100.0), Layer("small", ("int8",), 1.0), Layer("other", ("int8",), 2.0)]
    assert list(choose(layers, measure, 0.975, costs=True).backed_off) == ["small", "other"]  # not the table
    assert list(choose(layers, measure, 0.975).backed_off) == ["table"]  # fewest layers


def test_the_fallback_walks_every_layer_down_its_ladder_one_step_at_a_time():
    """A pruning ladder (50% → 25% → 0%): every layer's first step before any layer's second."""
    steps = {"50%": 0.03, "25%": 0.01, "0%": 0.0}  # what each form of a layer costs the score

    def measure(backed_off):
        return Judgement(1.0 - sum(steps[backed_off.get(name, "50%")] for name in "ab"), True)

    chosen = choose([Layer("a", ("25%", "0%")), Layer("b", ("25%", "0%"))], measure, budget=0.99)
    assert chosen.met and chosen.backed_off == {"a": "0%", "b": "25%"}
    assert [trial.backed_off for trial in chosen.path] == [{}, {"a": "25%"}, {"a": "25%", "b": "25%"},
                                                           {"a": "0%", "b": "25%"}]


def test_weight_only_fallback_raises_layers_to_8_bits_not_float(tmp_path):
    feeds = {"x": _RNG.standard_normal((64, 16)).astype(np.float32)}
    plain = graphopt.quantize(_two_layers(), mode="weight-only", preset="O0", target="ort", inputs=feeds,
                              check_speed=False, force=True)
    assert plain.validation.input_sets[0].outputs[0].cosine < 0.9995
    result = graphopt.quantize(_two_layers(), tmp_path / "q.onnx", mode="weight-only", preset="O0", target="ort",
                               inputs=feeds, check_speed=False, min_cosine=0.9995)
    assert result.fallback.met and result.fallback.backed_off and result.untouched == []
    assert set(result.fallback.backed_off.values()) == {"int8"}
    assert {name for name, _, _ in result.other_forms} == set(result.fallback.backed_off)
    assert all(form == "int8" and "the fallback" in reason for _, form, reason in result.other_forms)
    assert result.changed == ["first", "second"]  # both still quantized, some at 8 bits
    bits = {node.name.split("/")[0]: node.attributes["bits"].value for node in result.model.graph}
    assert {name for name, value in bits.items() if value == 8} == set(result.fallback.backed_off)
    assert result.validation.input_sets[0].outputs[0].cosine >= 0.9995
    assert any(line.startswith("int8, not int4: ") for line in lossy_lines(result))
    (got,) = run(onnx.load(tmp_path / "q.onnx"), feeds)
    exact = feeds["x"] @ _W1 @ _W2
    assert np.linalg.norm(got - exact) < np.linalg.norm(run(plain.model, feeds)[0] - exact)


def test_a_budget_is_judged_on_held_out_calibration_samples():
    model, feeds, _ = _wide()
    samples = [{"x": feeds["x"][i:i + 16]} for i in range(0, 256, 16)]  # 16 sets: a quarter held out
    result = graphopt.quantize(model, mode="weight-only", algorithm="gptq", preset="O0", target="ort",
                               calibration=samples, check_speed=False, min_cosine=0.9)
    assert len(result.validation.input_sets) == 4
    assert result.validation.input_sets[0].shapes == {"x": [16, 128]}
    with pytest.raises(InputError, match="--int8: it chooses weight-only quantization's form"):
        graphopt.quantize(model, int8_layers=["first"])


def test_the_outlier_channel_is_measured_and_kept_float(tmp_path):
    model, feeds = _two_layers(), _outlier_inputs()
    plain = graphopt.quantize(model, preset="O0", inputs=feeds, check_speed=False, force=True, outlier_ratio=0,
                              fallback=False)
    assert plain.validation.input_sets[0].outputs[0].cosine < 0.9  # everything int8: far off
    split = graphopt.quantize(model, preset="O0", inputs=feeds, check_speed=False, force=True, outlier_ratio=6,
                              fallback=False)
    assert split.validation.input_sets[0].outputs[0].cosine > 0.999 and split.changed == ["first", "second"]
    assert any("outlier input channels" in change for change in split.report.passes[-1].changes)
    with pytest.raises(InputError, match="--outlier-ratio 6.0: int8 only"):
        graphopt.quantize(model, mode="weight-only", outlier_ratio=6.0)
    # carve acts only on activations a Gelu/Relu of a linear layer makes: x is a graph input
    carved = graphopt.quantize(model, preset="O0", inputs=feeds, check_speed=False, force=True, outlier_ratio=6,
                               outlier_mode="carve", fallback=False)
    assert carved.validation.input_sets[0].outputs[0].cosine < 0.9
    assert not any("outlier" in change for change in carved.report.passes[-1].changes)
    with pytest.raises(InputError, match="--outlier-mode carve: it chooses where --outlier-ratio acts"):
        graphopt.quantize(model, outlier_mode="carve")


def test_the_fallback_meets_a_budget_plain_quantization_misses(tmp_path):
    model, feeds = _two_layers(), _outlier_inputs()
    result = graphopt.quantize(model, tmp_path / "q.onnx", preset="O0", inputs=feeds, check_speed=False,
                               min_cosine=0.999, outlier_ratio=0)
    assert result.fallback.met and result.fallback.backed_off == {"first": "float"}
    assert result.validation.passed and result.validation.input_sets[0].outputs[0].cosine >= 0.999
    assert result.changed == ["second"]
    assert result.untouched[0][0] == "first" and "the fallback" in result.untouched[0][1]
    written = onnx.load(tmp_path / "q.onnx")
    assert [node.name for node in written.graph.node if node.op_type == "MatMul"] == ["first"]


def test_the_fallbacks_alternatives_are_timed_in_a_small_pareto_table():
    model, feeds = _two_layers(), _outlier_inputs()
    result = graphopt.quantize(model, preset="O0", inputs=feeds, min_cosine=0.999, outlier_ratio=0, force=True)
    path = result.fallback.path
    assert [trial.backed_off for trial in path] == [{}, {"first": "float"}]
    assert [item.backed_off for item in result.alternatives] == [{}, {"first": "float"}]
    assert [item.score for item in result.alternatives] == [trial.score for trial in path]
    assert [item.chosen for item in result.alternatives] == [False, True]
    chosen = result.alternatives[1].latency
    short = chosen.speedup < 1 - guards.MARGIN and chosen.result_ms - chosen.float_ms >= guard.FLOOR_MS
    # the guard judged the chosen one as that run timed it, or, found short there, the median of its retimings
    assert (result.latency is chosen) != short
    assert all(item.latency.result_ms > 0 and item.latency.float_ms == chosen.float_ms for item in result.alternatives)
    assert result.alternatives[1].pareto  # the best score: nothing beats it on both
    lines = lossy_lines(result)
    assert any(line.startswith("alternatives on the fallback's path (float") for line in lines)
    assert any("1 held back: score" in line and "[chosen" in line for line in lines)
    assert [item["backed_off"] for item in result.to_dict()["alternatives"]] == [{}, {"first": "float"}]


def test_pareto_points_and_the_points_a_long_path_times():
    def point(score: float, ms: float, chosen: bool = False) -> guards.Alternative:
        return guards.Alternative({}, score, True, guard.LatencyCheck(10.0, ms, "cpu", {}), chosen)

    marked = guards.pareto([point(0.90, 2.0), point(0.95, 2.5), point(0.94, 3.0), point(0.95, 2.5)])
    assert [item.pareto for item in marked] == [True, True, False, True]  # ties are not beaten
    trials = [Trial({f"l{i}": "float" for i in range(count)}, 0.9 + count / 100) for count in range(12)]
    fallback = Fallback(0.99, trials[9].backed_off, trials[9].score, True, {}, trials, trials)
    timed = guards._path_to_time(fallback)
    assert len(timed) <= guards.MAX_ALTERNATIVES and timed[0] is trials[0] and trials[9] in timed
    assert timed[-1] is trials[11] and timed == sorted(timed, key=lambda trial: len(trial.backed_off))


def test_a_cosine_budget_still_needs_the_tolerances_top1_agreement(tmp_path):
    # cosine 0.23 meets a 0.2 budget, but top-1 agreement is 0%: the fallback does not stop there
    result = graphopt.quantize(_two_layers(), preset="O0", inputs=_outlier_inputs(), check_speed=False,
                               min_cosine=0.2, outlier_ratio=0)
    first = result.fallback.trials[0]
    assert first.score >= 0.2 and not first.within_tolerance and result.fallback.backed_off == {"first": "float"}
    assert result.validation.passed and result.validation.input_sets[0].outputs[0].top1_agreement >= 0.9
    assert "within the tolerance's other checks" in result.untouched[0][1]
    assert any("(failing the tolerance's other checks) all quantized" in line for line in lossy_lines(result))


def _wide(k: int = 128, n: int = 32) -> tuple[onnx.ModelProto, dict[str, np.ndarray], np.ndarray]:
    """x @ w with K = 128 and correlated inputs (x = z @ mix): where GPTQ's error moving pays."""
    rng = np.random.default_rng(3)
    weight = rng.standard_normal((k, n)).astype(np.float32)
    model = parse(f"""<ir_version: 9, opset_import: ["" : 18]>
        g (float[M, {k}] x) => (float[M, {n}] y) <float[{k}, {n}] w = {{{_floats(weight)}}}> {{ y = MatMul(x, w) }}""")
    x = (rng.standard_normal((256, k)) @ rng.standard_normal((k, k))).astype(np.float32)
    return model, {"x": x}, x @ weight


def test_gptq_measures_the_gram_matrix_and_beats_round_to_nearest():
    model, feeds, exact = _wide()
    errors = {}
    for algorithm in ("rtn", "gptq"):
        result = graphopt.quantize(model, mode="weight-only", algorithm=algorithm, preset="O0", target="ort",
                                   inputs=feeds, check_speed=False, force=True)
        assert op_types(result.model) == ["MatMulNBits"]
        (got,) = run(result.model, feeds)
        errors[algorithm] = np.linalg.norm(got - exact) / np.linalg.norm(exact)
    assert errors["gptq"] < 0.8 * errors["rtn"], errors


def test_gptq_on_calibration_data_beats_gptq_on_synthesized_inputs(tmp_path):
    model, feeds, exact = _wide()
    np.savez(tmp_path / "calib.npz", x=feeds["x"][:192])  # samples along axis 0: 192 rows of [1, 128]
    errors = {}
    for label, calibration in (("synthesized", None), ("npz", tmp_path / "calib.npz"),
                               ("iterable", [{"x": feeds["x"][i:i + 64]} for i in range(0, 192, 64)])):
        result = graphopt.quantize(model, mode="weight-only", algorithm="gptq", preset="O0", target="ort",
                                   calibration=calibration, check_speed=False, validate=False)
        (got,) = run(result.model, feeds)
        errors[label] = np.linalg.norm(got - exact) / np.linalg.norm(exact)
    assert errors["npz"] == pytest.approx(errors["iterable"], rel=1e-3)  # the same rows, batched differently
    assert errors["npz"] < 0.8 * errors["synthesized"], errors


def test_calibration_data_nothing_would_use_is_an_error(tmp_path):
    model, feeds, _ = _wide()
    with pytest.raises(InputError, match="--calib feeds the statistics a pass measures"):
        graphopt.quantize(model, mode="weight-only", calibration=[feeds], fallback=False)
    with pytest.raises(InputError, match="no array for input 'x'"):
        graphopt.quantize(model, mode="weight-only", algorithm="gptq", calibration=[{"y": feeds["x"]}])


def test_the_cli_reads_a_calibration_folder(tmp_path):
    model, feeds, exact = _wide()
    onnx.save(model, tmp_path / "m.onnx")
    (tmp_path / "calib").mkdir()
    for index in range(3):
        np.savez(tmp_path / "calib" / f"{index}.npz", x=feeds["x"][index * 64:(index + 1) * 64])
    assert main(["quantize", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "q.onnx"), "--mode", "weight-only",
                 "--algorithm", "gptq", "--calib", str(tmp_path / "calib"), "--target", "ort", "--preset", "O0",
                 "--no-check-speed", "--no-validate", "-q"]) == 0
    (got,) = run(onnx.load(tmp_path / "q.onnx"), feeds)
    assert np.linalg.norm(got - exact) / np.linalg.norm(exact) < 0.1
    assert main(["quantize", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "r.onnx"), "--calib",
                 str(tmp_path / "calib"), "--all-or-nothing", "-q"]) == 2
    assert not (tmp_path / "r.onnx").exists()


def test_static_int8_calibrates_every_activation_and_validates(tmp_path):
    from tests.passes.quantize.test_static import _cnn, _samples

    samples = _samples(24)
    results = {}
    for calibrator in ("minmax", "percentile", "entropy"):
        result = graphopt.quantize(_cnn(), mode="static", calibration=samples, calibrator=calibrator,
                                   check_speed=False)
        assert result.validation.passed and result.validation.input_sets[0].outputs[0].cosine > 0.999
        assert op_types(result.model).count("QuantizeLinear") == 7
        assert result.result_bytes < result.float_bytes / 2
        results[calibrator] = result
    # the calibrators chose their own ranges: entropy clips the first Relu's tail (12,288 values),
    # while 99.999% of them is still the largest
    scales = {name: result.model.graph.initializers["r1_scale"].const_value.numpy().item()
              for name, result in results.items()}
    assert scales["minmax"] > scales["entropy"] and scales["minmax"] == scales["percentile"]
    np.savez(tmp_path / "calib.npz", x=np.concatenate([sample["x"] for sample in samples]))
    onnx.save(_cnn(), tmp_path / "m.onnx")
    assert main(["quantize", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "q.onnx"), "--mode", "static",
                 "--calib", str(tmp_path / "calib.npz"), "--calibrator", "percentile", "--no-check-speed", "-q"]) == 0
    (got,), (want,) = run(onnx.load(tmp_path / "q.onnx"), samples[0]), run(_cnn(), samples[0])
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max()
    assert main(["quantize", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "r.onnx"), "--mode", "static",
                 "-q"]) == 2  # no --calib
    assert not (tmp_path / "r.onnx").exists()


def test_the_tolerance_a_user_names_is_the_one_that_judges(tmp_path):
    """`--mode static --tolerance int8` is judged at int8 (5% of elements may differ), not silently at
    the mode's int8-static (any may); without --tolerance the mode's own judges."""
    from tests.passes.quantize.test_static import _cnn, _samples

    onnx.save(_cnn(), tmp_path / "m.onnx")
    np.savez(tmp_path / "calib.npz", x=np.concatenate([sample["x"] for sample in _samples(24)]))
    names = {}
    for flags in ([], ["--tolerance", "int8"], ["--rtol", "0.2"]):
        report = tmp_path / f"report{len(names)}.json"
        main(["quantize", str(tmp_path / "m.onnx"), "-o", str(tmp_path / f"q{len(names)}.onnx"), "--mode", "static",
              "--calib", str(tmp_path / "calib.npz"), "--no-check-speed", "--force", "-q", "--report", str(report),
              *flags])
        tolerance = json.loads(report.read_text())["validation"]["tolerance"]
        names[" ".join(flags)] = (tolerance["name"], tolerance["max_mismatch"], tolerance["rtol"])
    assert names == {"": ("int8-static", 1.0, 0.1), "--tolerance int8": ("int8", 0.05, 0.1),
                     "--rtol 0.2": ("int8-static", 1.0, 0.2)}


def _attention_samples(model: onnx.ModelProto, count: int, seed: int) -> list[dict[str, np.ndarray]]:
    from tests.passes.fusion.test_attention import _feeds

    rng = np.random.default_rng(seed)
    return [{**_feeds(model), "x": rng.standard_normal((2, 5, 8)).astype(np.float32)} for _ in range(count)]


@pytest.mark.parametrize("target", ["ort", "portable"])
@pytest.mark.parametrize("key_form", ["torchscript", "dynamo"])
def test_static_int8_of_a_model_with_attention_quantizes_only_its_linear_layers(target, key_form):
    from tests.passes.fusion.test_attention import _model
    from tests.passes.quantize.test_static import _cnn

    model = _model(key_form, mask="min")
    assert has_attention(model_io.from_proto(model))
    assert not has_attention(model_io.from_proto(_cnn()))
    result = graphopt.quantize(model, mode="static", target=target, calibration=_attention_samples(model, 24, 0),
                               check_speed=False)
    assert result.report.passes[-1].name == "quantize_static_linear" and result.validation.passed
    ops = op_types(result.model)
    # the softmax and the scores stay float: no pair around them, the projections int8
    if target == "ort":
        # (this keys-only mask reaches the fused Attention through an Expand: MultiHeadAttention, not QAttention)
        assert ops.count("MatMulIntegerToFloat") == 4 and "MultiHeadAttention" in ops and "DequantizeLinear" not in ops
    else:
        assert ops.count("QuantizeLinear") == 2 and "Softmax" in ops  # x, and the merged heads
    for feeds in _attention_samples(model, 4, 1):
        (want,), (got,) = run(model, feeds), run(result.model, feeds)
        assert np.dot(want.ravel(), got.ravel()) / np.linalg.norm(want) / np.linalg.norm(got) > 0.995
    qdq = graphopt.quantize(model, mode="static", scheme="qdq", calibration=_attention_samples(model, 24, 0),
                            check_speed=False, validate=False)
    assert qdq.report.passes[-1].name == "quantize_static"


@pytest.mark.parametrize("scheme", ["linear", "qdq"])
def test_static_int8_carves_the_outlier_channels_before_calibrating(scheme):
    """Two Gelu channels 40x the rest own the range static int8 calibrates for the second layer's
    input; carved out of the first layer (float), they leave the others their levels."""
    from tests.passes.quantize.test_dynamic import _B1, _W1 as W1, _ffn

    model = _ffn("portable")
    w1, b1 = W1.copy(), _B1.copy()
    w1[:, [2, 7]] *= 40
    b1[[2, 7]] += 5
    for tensor in model.graph.initializer:
        if tensor.name in ("w1", "b1"):
            tensor.CopyFrom(onnx.numpy_helper.from_array({"w1": w1, "b1": b1}[tensor.name], tensor.name))
    rng = np.random.default_rng(3)
    samples = [{"x": rng.standard_normal((2, 5, 8)).astype(np.float32),
                "r": rng.standard_normal((2, 5, 6)).astype(np.float32)} for _ in range(16)]
    errors = {}
    for ratio in (0, 6):
        result = graphopt.quantize(model, preset="O0", mode="static", scheme=scheme, calibration=samples,
                                   outlier_ratio=ratio, outlier_mode="carve" if ratio else "all", check_speed=False,
                                   force=True)
        (want,), (got,) = run(model, samples[0]), run(result.model, samples[0])
        errors[ratio] = np.abs(got - want).max()
        if ratio:
            assert any(item.name == "carve_outliers" and item.changes for item in result.report.passes)
            held = {outcome.layer: outcome.op_type for outcome in result.outcomes if not outcome.changed}
            # the carved channels' two float MatMuls (and, in QDQ, their bias Add) stay float on purpose;
            # in QDQ the first layer's bias Add too: only the Gelu reads it
            assert sorted(held.values()) == (["Add", "Add", "MatMul", "MatMul"] if scheme == "qdq" else
                                             ["MatMul", "MatMul"])
            idle = {"no int8 kernel reads its output (int8 would only add rounding)"} if scheme == "qdq" else set()
            assert {reason for _, reason in result.untouched} == {FROZEN.format(pass_="carve_outliers"), *idle}
    assert errors[6] < errors[0] / 2.5  # qdq: 1.52 → 0.55 (the bias Add the Gelu reads stays float in both)


def test_the_int8_static_preset_calibrates_in_optimize(tmp_path):
    from tests.passes.quantize.test_static import _cnn, _samples

    samples = _samples(24)
    result = graphopt.optimize(_cnn(), tmp_path / "q.onnx", preset="int8-static", calibration=samples,
                               validate=True, check_speed=False)
    assert result.validation.passed and result.validation.tolerance.name == "int8-static"
    assert len(result.validation.input_sets) == 6  # a quarter of 24 samples held out (8 at least, an eighth at most 32)
    assert op_types(result.model).count("QuantizeLinear") == 7 and result.changed
    (got,), (want,) = run(onnx.load(tmp_path / "q.onnx"), samples[-1]), run(_cnn(), samples[-1])
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max()
    # an observer's `calibration(done, total)` hears every calibration run (the CLI's progress bar)
    heard = []

    def observer(iteration, index, pass_):
        pass

    observer.calibration = lambda done, total: heard.append((done, total))
    graphopt.quantize(_cnn(), mode="static", calibration=samples, check_speed=False, observer=observer)
    assert heard[-1][0] == heard[-1][1] == len(heard) and len(heard) % 18 == 0  # 18 samples after the held-out 6
    # a pass list ending in quantize_static takes the calibrator as an option
    entropy = graphopt.optimize(_cnn(), passes="fold_constants,quantize_static:calibrator=entropy",
                                calibration=samples)
    scale = entropy.model.graph.initializers["r1_scale"].const_value.numpy().item()
    assert scale < result.model.graph.initializers["r1_scale"].const_value.numpy().item()


@pytest.mark.parametrize("kwargs, message", [
    ({"preset": "int8-static"}, "give --calib DATA"),
    ({"preset": "O3", "calibration": []}, "--calib feeds the statistics a pass measures"),
    ({"passes": "quantize_static,fold_constants", "calibration": []}, "no calibration samples"),
    ({"passes": "quantize_static:calibrator=kl", "calibration": []}, "--calibrator 'kl'"),
    ({"preset": "int8-static", "calibration": [], "validate_each": True}, "--validate-each checks float passes"),
])
def test_bad_static_optimize_options_are_clear_errors(tmp_path, kwargs, message):
    from tests.passes.quantize.test_static import _cnn

    with pytest.raises(InputError, match=message):
        graphopt.optimize(_cnn(), tmp_path / "q.onnx", **kwargs)
    assert not (tmp_path / "q.onnx").exists()


def test_smoothquant_before_static_int8_saves_the_channels_an_outlier_crowds_out():
    """One input channel 300x the others owns a per-tensor int8 range: without smoothing the other
    channels round to zero; smoothed (a float Mul dividing each channel, weights multiplied) they stay."""
    model = parse(f"""<ir_version: 9, opset_import: ["" : 18]>
        g (float[B, 16] x) => (float[B, 16] y) <float[16, 16] w1 = {{{_floats(_W1)}}},
                                                 float[16, 16] w2 = {{{_floats(_W2)}}}> {{
            r = Relu(x)
            h = MatMul(r, w1)
            y = MatMul(h, w2) }}""")
    rng = np.random.default_rng(5)

    def sample():
        x = rng.standard_normal((8, 16)).astype(np.float32)
        x[:, 0] *= 300
        return {"x": x}

    calibration, evaluation = [sample() for _ in range(32)], [sample() for _ in range(4)]
    cosines = {}
    for smooth in (None, 0.5):
        result = graphopt.quantize(model, preset="O0", mode="static", calibration=calibration, smooth=smooth,
                                   check_speed=False, force=True, fallback=False)
        assert op_types(result.model).count("QuantizeLinear") == 2
        cosines[smooth] = min(float(np.dot(want.ravel(), got.ravel()) / np.linalg.norm(want) / np.linalg.norm(got))
                              for feeds in evaluation for want, got in [(run(model, feeds)[0],
                                                                         run(result.model, feeds)[0])])
    assert cosines[None] < 0.9 and cosines[0.5] > 0.99
    assert result.untouched == [("r/smooth", FROZEN.format(pass_="smooth_activations"))]  # it runs in float


def test_max_drop_budgets_top1_agreement():
    result = graphopt.quantize(_two_layers(), preset="O0", inputs=_outlier_inputs(), check_speed=False,
                               max_drop=0.02, outlier_ratio=0)
    assert result.fallback.trials[0].score < 0.98 and result.fallback.backed_off == {"first": "float"}
    assert result.validation.input_sets[0].outputs[0].top1_agreement >= 0.98


@pytest.mark.parametrize("kwargs, message", [
    ({"min_cosine": 0.99, "max_drop": 0.01}, "not both"),
    ({"min_cosine": 0.99, "validate": False}, "measured by validation"),
    ({"mode": "weight-only", "bits": 8}, "--bits 8: --mode weight-only quantizes to --bits 4"),
    ({"smooth": 1.5}, "--smooth 1.5: it must be between 0 and 1"),
    ({"accuracy_level": 4}, "--accuracy-level: it chooses weight-only quantization's form"),
    ({"algorithm": "gptq"}, "--algorithm: it chooses weight-only quantization's form"),
    ({"zero_points": False}, "--zero-points/--symmetric: they choose int4 blocks"),
    ({"mode": "static"}, "static int8 measures every activation's range on calibration data: give --calib"),
    ({"calibrator": "entropy"}, "--calibrator: it chooses static quantization's form"),
    ({"mode": "static", "calibrator": "kl", "calibration": []}, "--calibrator 'kl'"),
    ({"mode": "static", "zero_points": False, "calibration": []}, "symmetric activations are int8"),
    ({"mode": "static", "outlier_ratio": 6, "calibration": []}, "--outlier-ratio under --mode static carves"),
    ({"scheme": "linear"}, "--scheme: it chooses static quantization's form"),
    ({"mode": "static", "scheme": "qlinear", "calibration": []}, "--scheme 'qlinear': choose from auto, qdq, linear"),
])
def test_bad_budget_options_are_clear_errors(kwargs, message):
    with pytest.raises(InputError, match=message):
        graphopt.quantize(_two_layers(), **kwargs)


def _tiny() -> onnx.ModelProto:
    """One 1×16·16×16 MatMul."""
    return parse(f"""<ir_version: 9, opset_import: ["" : 18]>
        g (float[1, 16] x) => (float[1, 16] y) <float[16, 16] w = {{{_floats(_W2)}}}> {{ y = MatMul(x, w) }}""")


def _deliberately_slow() -> ir.Model:
    """_tiny's signature and output, plus a 512×512·512×512 product of the input that ONNX Runtime
    cannot fold away: about a thousand times _tiny's work, so no machine load can hide it."""
    return model_io.from_proto(parse(f"""<ir_version: 9, opset_import: ["" : 18]>
        g (float[1, 16] x) => (float[1, 16] y) <float[16, 16] w = {{{_floats(_W2)}}}, int64[2] reps = {{512, 32}},
                                                float zero = {{0.0}}> {{
            big = Tile(x, reps)
            square = MatMul(big, big)
            total = ReduceSum(square)
            nothing = Mul(total, zero)
            product = MatMul(x, w)
            y = Add(product, nothing) }}"""))


def test_compare_latency_times_both_models_on_the_ep():
    check = compare_latency(model_io.from_proto(_tiny()), _deliberately_slow(), SessionConfig(threads=2))
    assert check.slower and check.result_ms > 5 * check.float_ms
    assert check.ep == "cpu" and check.shapes == {"x": [1, 16]} and "float p50" in check.describe()


def test_the_guard_lets_a_result_slower_by_under_5_microseconds_through():
    """int8 cannot win on a 15 µs model (the zoo's MLP: 14 → 16 µs) and makes it 4x smaller: the
    first quantize command on it succeeds and says so; 5 µs or more is refused (after 5 more timings)."""
    from graphopt.lossy.guards import refuse_slower

    def clock(before, after):
        return lambda runs: LatencyCheck(before, after, "cpu", {"x": [1, 32]})

    check = refuse_slower(clock(0.014, 0.016), 1.0, force=False)
    assert check.within_noise and not check.forced and "within what the guard allows for timing noise" in \
        check.describe()
    with pytest.raises(GuardRefused, match="slower than the float one"):
        refuse_slower(clock(0.014, 0.020), 1.0, force=False)
    with pytest.raises(GuardRefused, match="under 1.20x the float's speed"):  # an asked-for speed-up: no allowance
        refuse_slower(clock(0.014, 0.013), 1.2, force=False)


def _slower_by_the_clock(monkeypatch) -> list[dict]:
    """The guard's clock, replaced: it reports every quantized model twice as slow, and records what it timed."""
    timed = []

    def fake(float_model, quantized, config, feeds=None, runs=0, label="quantized"):
        timed.append(feeds)
        shapes = {name: list(array.shape) for name, array in (feeds or {"x": np.zeros((1, 16))}).items()}
        return guard.LatencyCheck(1.0, 2.0, config.resolved_ep(), shapes, label)

    monkeypatch.setattr(guard, "compare_latency", fake)
    return timed


def test_the_guard_refuses_a_slower_model_and_writes_nothing(tmp_path, monkeypatch):
    _slower_by_the_clock(monkeypatch)
    out = tmp_path / "q.onnx"
    with pytest.raises(GuardRefused, match=r"slower than the float one \(.*5 timings\): float p50 1.000 ms, "
                                           r"quantized p50 2.000 ms"):
        graphopt.quantize(_tiny(), out, preset="O0")
    assert not out.exists()
    forced = graphopt.quantize(_tiny(), out, preset="O0", force=True)
    assert forced.latency.slower and forced.latency.forced and out.exists()


def test_the_cli_guard_exits_1_with_both_numbers(tmp_path, capsys, monkeypatch):
    _slower_by_the_clock(monkeypatch)
    path, out = tmp_path / "m.onnx", tmp_path / "q.onnx"
    onnx.save(_tiny(), path)
    assert main(["quantize", str(path), "-o", str(out), "-q"]) == 1
    error = capsys.readouterr().err
    assert "float p50 1.000 ms" in error and "quantized p50 2.000 ms" in error and not out.exists()


def test_optimize_with_a_quantizing_preset_validates_and_refuses_a_slower_model(tmp_path, monkeypatch, capsys):
    _slower_by_the_clock(monkeypatch)
    out = tmp_path / "q.onnx"
    with pytest.raises(GuardRefused, match="float p50 1.000 ms, quantized p50 2.000 ms"):
        graphopt.optimize(_tiny(), out, preset="int8-dynamic", validate=True)
    assert not out.exists()
    assert graphopt.optimize(_tiny(), preset="int8-dynamic").latency is None  # not validated: not timed
    assert graphopt.optimize(_tiny(), preset="int8-dynamic", validate=True, check_speed=False).latency is None
    assert isinstance(graphopt.optimize(_tiny(), preset="O3", validate=True), graphopt.OptimizeResult)  # no guard
    path, report = tmp_path / "m.onnx", tmp_path / "report.json"
    onnx.save(_tiny(), path)
    assert main(["optimize", str(path), "-o", str(out), "--preset", "int8-dynamic", "--validate", "-q"]) == 1
    assert "float p50 1.000 ms" in capsys.readouterr().err and not out.exists()
    assert main(["optimize", str(path), "-o", str(out), "--preset", "int8-dynamic", "--validate", "--force",
                 "--report", str(report)]) == 1
    assert "written because of --force" in capsys.readouterr().err and out.exists()
    assert json.loads(report.read_text())["lossy"]["latency"]["result_ms"] == 2.0


def test_quantize_force_writes_a_slower_model_and_exits_1(tmp_path, monkeypatch, capsys):
    _slower_by_the_clock(monkeypatch)
    path, out = tmp_path / "m.onnx", tmp_path / "q.onnx"
    onnx.save(_tiny(), path)
    assert main(["quantize", str(path), "-o", str(out), "--force"]) == 1
    assert "written because of --force" in capsys.readouterr().err and out.exists()


def test_missing_kernels_names_ops_the_provider_cannot_run():
    model = model_io.from_proto(parse("""<ir_version: 9, opset_import: ["" : 18, "com.microsoft" : 1]>
        g (float[2] x) => (float[2] y) { t = Relu(x)
                                         y = com.microsoft.NoSuchKernel(t) }"""))
    assert missing_kernels(model, "cpu") == ["com.microsoft::NoSuchKernel"]


def test_the_kernel_guard_blames_only_what_the_quantizer_brought_in(monkeypatch):
    """Ops the float model already had (CUDA leaves shape arithmetic to the CPU) are not refused;
    a Constant needs no kernel (ONNX Runtime makes it an initializer)."""
    cpu = kernels.provider_ops("CPUExecutionProvider")
    monkeypatch.setattr(guard, "provider_ops", lambda provider: cpu - {("", "Relu"), ("", "Constant")})
    model = parse(f"""<ir_version: 9, opset_import: ["" : 18]>
        g (float[1, 16] x) => (float[1, 16] y) <float[16, 16] w = {{{_floats(_W2)}}}> {{
            c = Constant <value_float = 2.0> ()
            h = Mul(x, c)
            m = MatMul(h, w)
            y = Relu(m) }}""")
    result = graphopt.quantize(model, preset="O0", validate=False, check_speed=False)
    assert "DynamicQuantizeLinear" in op_types(result.model)
    assert missing_kernels(result.model, "cpu") == ["Relu"]
    monkeypatch.setattr(guard, "provider_ops", lambda provider: cpu - {("", "DynamicQuantizeLinear")})
    with pytest.raises(GuardRefused, match="cpu has no kernel for DynamicQuantizeLinear"):
        graphopt.quantize(model, preset="O0", validate=False, check_speed=False)


def test_a_gpu_build_lists_its_kernels_in_a_child_process(monkeypatch):
    """onnxruntime-gpu 1.31 crashed the process listing kernels without TensorRT's libraries (seen
    on an H100): a GPU build lists them in a child, whose crash leaves nothing to check."""
    import onnxruntime as ort

    in_process = kernels.all_kernels()
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    kernels.all_kernels.cache_clear()
    try:
        assert set(kernels.all_kernels()) == set(in_process)  # this machine's CPU build, through the child
    finally:
        kernels.all_kernels.cache_clear()


def test_validation_on_cuda_turns_tf32_off_unless_asked():
    assert ("use_tf32", "0") in graphopt.RuntimeOptions(ep="cuda").for_validation().provider_options
    assert ("use_tf32", "1") in graphopt.RuntimeOptions(ep="cuda", provider_options={"use_tf32": "1"}) \
        .for_validation().provider_options
    assert graphopt.RuntimeOptions(ep="cuda").for_bench().provider_options == ()
    assert graphopt.RuntimeOptions().for_validation().provider_options == ()


@pytest.mark.parametrize("target", ["portable", "ort"])
def test_every_op_the_quantizer_emits_has_a_cpu_kernel(target):
    result = graphopt.quantize(_two_layers(), preset="O0", target=target, inputs=_outlier_inputs(),
                               check_speed=False, force=True, outlier_ratio=6, fallback=False)
    assert missing_kernels(result.model, "cpu") == []
    float_weights = [value.const_value.shape for value in result.model.graph.initializers.values()
                     if value.const_value.dtype == ir.DataType.FLOAT and len(value.const_value.shape) == 2]
    assert [tuple(shape) for shape in float_weights] == [(1, 16)]  # only x's outlier channel's row stays float


def test_the_guard_times_the_users_inputs_without_validation(monkeypatch):
    timed = _slower_by_the_clock(monkeypatch)
    feeds = {"x": np.full((1, 16), 3.0, np.float32)}
    with pytest.raises(GuardRefused, match=r"at x \[1, 16\]"):
        graphopt.quantize(_tiny(), preset="O0", validate=False, inputs=feeds)
    assert len(timed) == 6 and all(np.array_equal(each["x"], feeds["x"]) for each in timed)  # found slower, 5 more
