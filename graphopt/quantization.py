"""`graphopt quantize`: float passes, the quantizer, then proof that the result is worth having.

1. The preset's float passes (O3) run on the loaded model: the float model.
2. Activation statistics, when a step needs them, come from running the float model on the
   calibration data (graphopt.runtime.calibration, checked before any work) or else on the
   validation inputs (graphopt.runtime.activations): SmoothQuant's and the outlier channels'
   peaks, int4's channel weights and GPTQ's Gram matrices.
   Static int8 takes one of two forms (`scheme`; auto: linear when the model has attention):
   qdq, Q/DQ pairs around every op with an int8 kernel (quantize_static, for CNNs), whose float
   passes run for the portable target whatever the target, since contrib fusions (FusedConv,
   Attention) would hide the ops ONNX Runtime's QDQ fusions look for; or linear, only the linear
   layers and attention projections (quantize_static_linear, for transformers). SmoothQuant and
   the outlier carving rewrite the float model first. It measures a histogram of every float value
   (qdq) or linear layer input (linear) on the calibration data (required) and gives each its
   range by `calibrator` (passes/quantize/calibrate.py).
3. The quantizer runs on a clone: dynamic int8, weight-only int4 or static int8; `exclude`
   stays float.
4. Validation against the input at int8 tolerance (static int8: int8-static, on the held-out
   slice below even without a budget: its ranges fit real data, and synthesized inputs saturate
   them). With `min_cosine` (worst output cosine) or
   `max_drop` (top-1 agreement lost) the score is measured (on a held-out slice of the
   calibration data when there is some and no `inputs`: an eighth, at most HELD_OUT samples,
   which the statistics never see), and when quantizing everything
   misses it, the most sensitive layers go back to float until it is met (fallback.choose_float);
   a candidate failing the tolerance's other checks (top-1 under a cosine budget) does not meet it.
   Under weight-only int4 the chosen layers go to 8 bits instead of float (`int8_layers`): about a
   quarter of float's bytes, and as close to float as the budget needs.
5. Guards: ops without a kernel on the execution provider are refused, and the quantized model
   is timed against the float model on that provider and refused when slower (QuantizationRefused,
   exit 1) unless forced.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import onnx
import onnx_ir as ir

from graphopt import model as model_io
from graphopt import shapes
from graphopt.errors import InputError, QuantizationRefused, ValidationFailed
from graphopt.passes import create_pass
from graphopt.passes.match import MS_DOMAIN, constant_tensor, is_op
from graphopt.passes.quantize.fallback import Fallback, choose_float
from graphopt.passes.quantize.smooth import linear_weight
from graphopt.pipeline import PRESETS, PassManager, PassObserver, PipelineReport
from graphopt.runtime import guard
from graphopt.runtime import inputs as input_io
from graphopt.runtime.calibration import CalibrationData
from graphopt.passes.quantize.calibrate import CALIBRATORS, calibrated_range
from graphopt.runtime.activations import channel_means, channel_stats, histograms
from graphopt.runtime.compare import Tolerance, tolerance as named_tolerance
from graphopt.runtime.providers import SessionConfig, create_session
from graphopt.runtime.validate import ValidationResult, Validator

MODES = {"dynamic": (8,), "weight-only": (4,), "static": (8,)}
MODE_TOLERANCES = {"dynamic": "int8", "weight-only": "int4", "static": "int8-static"}  # each mode's default
# Where --outlier-ratio acts (passes/quantize/outliers.py): carve, only activations a Gelu/Relu of
# a linear layer makes (three small float MatMuls each); all, every linear layer's input.
OUTLIER_MODES = ("all", "carve")
# Static int8's two forms: qdq, pairs around every op with an int8 kernel (quantize_static: CNNs);
# linear, only the linear layers and attention projections (quantize_static_linear: transformers);
# auto, linear when the model has attention (see has_attention), else qdq.
SCHEMES = ("auto", "qdq", "linear")
QUANTIZABLE_OPS = ("MatMul", "Gemm", "Attention", "Gather", "Conv", "ConvTranspose", "Add", "Mul", "AveragePool",
                   "GlobalAveragePool", "Concat")
FAILS_TOLERANCE = 2.0  # cosines and agreements lie in [-1, 1]: minus 2 is below every budget
LOAD_CHECK_BYTES = 2**30  # the kernel guard loads quantized models up to this size in ONNX Runtime
HELD_OUT = 32  # calibration samples judging a budget, at most (an eighth of them, at least one)


@dataclasses.dataclass
class QuantizeSettings:
    """What to quantize and how (the API's and CLI's options, checked)."""

    mode: str = "dynamic"
    bits: int = 8
    per_channel: bool = True
    exclude: tuple[str, ...] = ()
    int8_layers: tuple[str, ...] = ()  # weight-only: layers at 8 bits
    embeddings: bool = True
    block_size: int = 32
    embedding_block_size: int = 128  # weight-only int4 tables (GatherBlockQuantized)
    algorithm: str = "rtn"
    zero_points: bool | None = None  # weight-only: None means yes
    accuracy_level: int = 0
    outlier_ratio: float = 0.0
    outlier_mode: str = "all"
    smooth_alpha: float | None = None
    calibrator: str = "minmax"  # static: how a histogram becomes a range
    activation_type: str = "u8"  # static
    scheme: str = "auto"  # static: SCHEMES
    bias_correction: bool = True  # static qdq: Conv/Gemm biases corrected for the weights' mean error
    min_cosine: float | None = None
    max_drop: float | None = None

    def check(self) -> None:
        if self.mode not in MODES:
            raise InputError(f"unknown quantization mode {self.mode!r} (choose from {', '.join(MODES)})")
        if self.bits not in MODES[self.mode]:
            allowed = " or ".join(f"--bits {bits}" for bits in MODES[self.mode])
            raise InputError(f"--bits {self.bits}: --mode {self.mode} quantizes to {allowed}")
        if self.mode != "weight-only" and self.algorithm != "rtn":
            raise InputError(f"--algorithm {self.algorithm}: it chooses int4 weights (--mode weight-only)")
        if self.mode == "dynamic" and self.zero_points is not None:
            raise InputError("--zero-points/--symmetric: they choose int4 blocks (--mode weight-only) or static "
                             "int8 activations; dynamic int8 weights are symmetric")
        if self.mode == "static" and self.zero_points is False and self.activation_type != "s8":
            raise InputError("--symmetric: symmetric activations are int8 (--activation-type s8); uint8 needs "
                             "its zero point")
        if self.mode != "static" and (self.calibrator != "minmax" or self.activation_type != "u8"):
            raise InputError("--calibrator and --activation-type choose static int8's activations (--mode static)")
        if self.calibrator not in CALIBRATORS:
            raise InputError(f"--calibrator {self.calibrator!r}: choose from {', '.join(CALIBRATORS)}")
        if self.scheme not in SCHEMES:
            raise InputError(f"--scheme {self.scheme!r}: choose from {', '.join(SCHEMES)}")
        if self.mode != "static" and not self.bias_correction:
            raise InputError("--no-bias-correction: bias correction is static int8's (--mode static)")
        if self.mode != "static" and self.scheme != "auto":
            raise InputError(f"--scheme {self.scheme}: it chooses static int8's form (--mode static)")
        if self.mode == "static" and self.outlier_ratio and self.outlier_mode != "carve":
            raise InputError("--outlier-ratio under --mode static carves (--outlier-mode carve): the carved layers are "
                             "rewritten in float before calibrating; masking x needs its run-time range")
        if self.mode != "weight-only" and self.int8_layers:
            raise InputError("--int8: it names layers weight-only int4 quantizes to 8 bits instead "
                             "(--mode weight-only); dynamic int8 quantizes every layer to 8 bits")
        if self.mode != "weight-only" and self.accuracy_level:
            raise InputError(f"--accuracy-level {self.accuracy_level}: it sets MatMulNBits' compute type "
                             "(--mode weight-only)")
        if self.min_cosine is not None and self.max_drop is not None:
            raise InputError("give --min-cosine or --max-drop, not both")
        if self.min_cosine is not None and not -1.0 <= self.min_cosine <= 1.0:
            raise InputError(f"--min-cosine {self.min_cosine}: it must be between -1 and 1")
        if self.max_drop is not None and not 0.0 <= self.max_drop <= 1.0:
            raise InputError(f"--max-drop {self.max_drop}: it must be between 0 and 1 (a fraction of top-1 agreement)")
        if self.outlier_ratio and (self.mode == "weight-only" or self.outlier_ratio <= 1):
            raise InputError(f"--outlier-ratio {self.outlier_ratio}: int8 only, above 1 (0 turns it off)")
        if self.outlier_mode not in OUTLIER_MODES:
            raise InputError(f"--outlier-mode {self.outlier_mode!r}: choose from {', '.join(OUTLIER_MODES)}")
        if self.outlier_mode != "all" and not self.outlier_ratio:
            raise InputError(f"--outlier-mode {self.outlier_mode}: it chooses where --outlier-ratio acts; give that too")
        if self.smooth_alpha is not None and not 0.0 < self.smooth_alpha < 1.0:
            raise InputError(f"--smooth {self.smooth_alpha}: SmoothQuant's alpha must be between 0 and 1")

    def passes(self, fallback: Sequence[str] = ()) -> list[tuple[str, dict]]:
        """The quantization passes; the `fallback`'s layers float (dynamic) or at 8 bits (weight-only)."""
        raised = fallback if self.mode == "weight-only" else ()
        exclude = ";".join([*self.exclude, *(() if raised else fallback)])
        steps: list[tuple[str, dict]] = []
        if self.smooth_alpha is not None and self.mode != "static":  # static smooths before calibrating
            carving = {"outlier_ratio": self.outlier_ratio, "exclude": exclude} if self.mode == "dynamic" else {}
            steps.append(("smooth_activations", {"alpha": self.smooth_alpha, **carving}))
        if self.mode == "static":
            options = {"per_channel": self.per_channel, "activation_type": self.activation_type,
                       "symmetric": self.zero_points is False, "exclude": exclude}
            steps.append(("quantize_static_linear", {**options, "embeddings": self.embeddings})
                         if self.scheme == "linear" else
                         ("quantize_static", {**options, "bias_correction": self.bias_correction}))
        elif self.mode == "dynamic":
            steps.append(("quantize_dynamic", {"per_channel": self.per_channel, "exclude": exclude,
                                               "embeddings": self.embeddings, "outlier_ratio": self.outlier_ratio,
                                               "mask_outliers": self.outlier_mode == "all"}))
        else:
            steps.append(("quantize_weight_only", {"bits": self.bits, "block_size": self.block_size,
                                                   "embedding_block_size": self.embedding_block_size,
                                                   "algorithm": self.algorithm, "exclude": exclude,
                                                   "accuracy_level": self.accuracy_level,
                                                   "symmetric": self.zero_points is False,
                                                   "int8_layers": ";".join([*self.int8_layers, *raised]),
                                                   "embeddings": self.embeddings}))
        return steps

    @property
    def needs_statistics(self) -> bool:
        return self.mode == "static" or self.smooth_alpha is not None or \
            (self.mode == "weight-only" and self.algorithm != "rtn") or \
            (self.mode == "dynamic" and bool(self.outlier_ratio))

    @property
    def budget(self) -> float | None:
        if self.min_cosine is not None:
            return self.min_cosine
        return None if self.max_drop is None else 1.0 - self.max_drop


MAX_ALTERNATIVES = 6  # points of the fallback's path timed for the report
ATTENTION_DEPTH = 4  # has_attention: how far back from a Softmax to look for the scores' MatMul
SCORE_OPS = ("Add", "Sub", "Mul", "Div", "Where", "Cast", "Reshape", "Transpose", "Unsqueeze", "Squeeze")


@dataclasses.dataclass
class Alternative:
    """A point of the fallback's path (everything quantized, then the most sensitive layers float
    one by one), timed against float in the latency guard's bench run."""

    kept_float: tuple[str, ...]
    score: float
    latency: guard.LatencyCheck
    chosen: bool
    pareto: bool = False  # no other point scores at least as well and runs at least as fast

    def line(self) -> str:
        marks = ", ".join(mark for mark, on in (("chosen", self.chosen), ("Pareto", self.pareto)) if on)
        return (f"{len(self.kept_float)} float: score {_score_text(self.score)}, "
                f"p50 {self.latency.quantized_ms:.3f} ms "
                f"({self.latency.speedup:.2f}x float){f'  [{marks}]' if marks else ''}")

    def to_dict(self) -> dict:
        return {"kept_float": list(self.kept_float), "score": self.score, "p50_ms": self.latency.quantized_ms,
                "speedup": self.latency.speedup, "chosen": self.chosen, "pareto": self.pareto}


@dataclasses.dataclass
class QuantizeResult:
    model: ir.Model
    report: PipelineReport
    written: list
    validation: ValidationResult | None
    warnings: list[str]
    quantized: list[str]
    kept_float: list[tuple[str, str]]
    float_bytes: int
    quantized_bytes: int
    fallback: Fallback | None = None
    latency: guard.LatencyCheck | None = None
    int8: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # weight-only layers at 8 bits
    fallback_to: str = "float"  # where the fallback's layers went: "float" or "8 bits"
    alternatives: list[Alternative] = dataclasses.field(default_factory=list)

    def summary_lines(self) -> list[str]:
        lines = [f"quantized {len(self.quantized)} node(s); parameters {self.float_bytes / 2**20:.1f} MiB → "
                 f"{self.quantized_bytes / 2**20:.1f} MiB ({self.quantized_bytes / max(self.float_bytes, 1):.3f}x)"]
        lines += [f"kept float: {name} ({reason})" for name, reason in self.kept_float]
        lines += [f"int8, not int4: {name} ({reason})" for name, reason in self.int8]
        if self.fallback is not None:
            fallback = self.fallback
            verdict = "met" if fallback.met else "NOT met (the best found)"
            lines.append(f"budget {fallback.budget:.4f} {verdict}: score {_score_text(fallback.trials[0].score)} all "
                         f"quantized, {_score_text(fallback.score)} with {len(fallback.kept_float)} layer(s) "
                         f"{self.fallback_to} ({len(fallback.trials)} trials)")
        if self.alternatives:
            lines.append(f"alternatives on the fallback's path ({self.fallback_to}; float p50 "
                         f"{self.alternatives[0].latency.float_ms:.3f} ms, all timed in one bench run):")
            lines += [f"  {alternative.line()}" for alternative in self.alternatives]
        if self.latency is not None:
            lines.append(f"latency: {self.latency.describe()}")
        return lines

    def to_dict(self) -> dict:
        return {"quantized": self.quantized, "kept_float": [list(item) for item in self.kept_float],
                "int8": [list(item) for item in self.int8],
                "float_bytes": self.float_bytes, "quantized_bytes": self.quantized_bytes,
                "fallback": self.fallback.to_dict() if self.fallback else None,
                "alternatives": [alternative.to_dict() for alternative in self.alternatives],
                "latency": self.latency.to_dict() if self.latency else None}


def _score_text(value: float) -> str:
    if value < -1.0:
        return f"{value + FAILS_TOLERANCE:.4f} (failing the tolerance's other checks)"
    return f"{value:.4f}"


def score(result: ValidationResult, settings: QuantizeSettings) -> float:
    """The budget's measure: worst output cosine, or worst top-1 agreement, over every input set."""
    outputs = [output for run in result.input_sets for output in run.outputs]
    if settings.max_drop is not None:
        agreements = [output.top1_agreement for output in outputs if output.top1_agreement is not None]
        if not agreements:
            raise InputError("--max-drop measures top-1 agreement, and no output looks like logits "
                             "(use --min-cosine)")
        return min(agreements)
    return min((output.cosine for output in outputs), default=0.0)


def run(model, output, settings: QuantizeSettings, *, preset: str, target: str, opset: int | None,
        validate: bool, check_speed: bool,
        force: bool, inputs, calibration, shapes, input_ranges, tol: str | Tolerance | None, config: SessionConfig,
        bench_config: SessionConfig, observer: PassObserver | None, external_data: bool | None,
        float_passes: Sequence | None = None, fixed_point: bool | None = None) -> QuantizeResult:
    """`float_passes` (Pass objects, repeated until nothing changes unless `fixed_point` is False)
    replace the `preset`'s when given (graphopt.optimize's int8-static preset, and recipes and pass
    lists ending in quantize_static). `tol` None is the mode's own tolerance (MODE_TOLERANCES)."""
    settings.check()
    tol = tol or MODE_TOLERANCES[settings.mode]
    if float_passes is None and (preset not in PRESETS or preset.startswith("int")):
        raise InputError(f"--preset {preset!r}: choose the float passes to run first from O0, O1, O2, O3")
    if settings.budget is not None and not validate:
        raise InputError("--min-cosine and --max-drop are measured by validation: drop --no-validate")
    if settings.mode == "static" and calibration is None:
        raise InputError("--mode static measures every activation's range on calibration data: give --calib DATA")
    source, float_model = _load(model)
    samples, tamed, means = None, [], {}
    if calibration is not None:
        if not settings.needs_statistics:
            raise InputError("--calib feeds the measured statistics of --algorithm mse/gptq, --outlier-ratio and "
                             "--smooth; this run measures none (nothing would use the data)")
        samples = CalibrationData(float_model, calibration)
    # a budget, and static int8 whatever the budget, are judged on data like the calibration data:
    # synthesized inputs (random pixels, random ids) saturate ranges measured on real samples
    judged_on_data = settings.budget is not None or settings.mode == "static"
    held_out = samples.split_off(min(HELD_OUT, max(1, len(samples) // 8))) \
        if samples is not None and len(samples) > 1 and judged_on_data and inputs is None else None
    if opset is not None:
        float_model = model_io.convert_opset(float_model, opset)
    if settings.mode == "static" and settings.scheme == "auto":
        settings = dataclasses.replace(settings, scheme="linear" if has_attention(float_model) else "qdq")
    float_target = "portable" if settings.mode == "static" and settings.scheme == "qdq" else target  # see above
    if float_passes is None:
        float_passes = [create_pass(name) for name in PRESETS[preset]]
    fixed_point = bool(float_passes) if fixed_point is None else fixed_point
    float_report = PassManager(list(float_passes), target=float_target, fixed_point=fixed_point,
                               observer=observer).run(float_model)
    _name_nodes(float_model)
    tol = _tolerance(tol, settings)
    validator = Validator(source, feeds=inputs, shapes=shapes, ranges=input_ranges, tol=tol, config=config,
                          reference_ir=source if isinstance(source, ir.Model) else None, feed_sets=held_out) \
        if validate or (settings.needs_statistics and samples is None) else None
    data = samples if samples is not None else validator.input_sets if validator is not None else None
    if settings.mode == "static":
        if settings.smooth_alpha is not None or settings.outlier_ratio:
            # smoothed and carved first: the ranges are those of the activations int8 will read
            rewritten, tamed = _tamed(float_model, settings, data, config)
            float_report = _merged(float_report, rewritten)
            settings = dataclasses.replace(settings, exclude=(*settings.exclude, *tamed))
        values = _linear_inputs(float_model) if settings.scheme == "linear" else _float_values(float_model)
        stats = {name: calibrated_range(histogram, settings.calibrator) for name, histogram in
                 histograms(float_model, values, data, config,
                            progress=getattr(observer, "calibration", None)).items()}
        if settings.scheme == "qdq" and settings.bias_correction:
            means = channel_means(float_model, _conv_gemm_inputs(float_model), data, config)
    else:
        stats = channel_stats(float_model, _linear_inputs(float_model), data, config,
                              gram=settings.algorithm == "gptq") if settings.needs_statistics else {}

    blocks_cache: dict = {}  # int4 weights computed once for every candidate the fallback builds

    def build(kept: Sequence[str]) -> tuple[ir.Model, PipelineReport]:
        candidate = float_model.clone()
        passes = [_with_statistics(create_pass(name, options), stats, blocks_cache, means)
                  for name, options in settings.passes(kept)]
        return candidate, PassManager(passes, target=target).run(candidate)

    candidate, report = build(())
    fallback = None
    if settings.budget is not None:
        fallback = _fall_back(float_model, candidate, settings, validator, build)
        if fallback.kept_float:
            candidate, report = build(fallback.kept_float)
    validation = validator.validate(candidate, locate=False) if validate else None  # int8 differs everywhere
    if validation is not None and not validation.passed and not force:
        raise ValidationFailed(f"the quantized model does not match the input: {validation.summary()}; "
                               "nothing was written", validation)
    raised = settings.mode == "weight-only"
    result = QuantizeResult(candidate, _merged(float_report, report), [], validation, [],
                            _quantized(float_model, candidate), _kept_float(report, None if raised else fallback, tamed),
                            model_io.parameter_bytes(float_model), model_io.parameter_bytes(candidate), fallback,
                            int8=[(name, "given") for name in settings.int8_layers] +
                            (_fallback_reasons(fallback) if raised and fallback else []),
                            fallback_to="8 bits" if raised else "float")
    _check_kernels(float_model, candidate, config, force)
    if check_speed:
        feeds = None if inputs is None else input_io.user_feeds(float_model, inputs)
        path = _path_to_time(fallback)
        if len(path) > 1:  # the fallback's alternatives timed with the chosen one: a small Pareto table
            checks = guard.compare_latencies(
                float_model, [(lambda: candidate) if trial.kept_float == fallback.kept_float else
                              (lambda kept=trial.kept_float: build(kept)[0]) for trial in path], bench_config, feeds)
            result.alternatives = _pareto([Alternative(trial.kept_float, trial.score, check,
                                                       trial.kept_float == fallback.kept_float)
                                           for trial, check in zip(path, checks)])
            result.latency = guard.refuse_slower(next(item.latency for item in result.alternatives if item.chosen),
                                                 force)
        else:
            result.latency = guard.check_speed(float_model, candidate, bench_config, feeds, force)
    if output is not None:
        result.written = model_io.save(candidate, output, external_data=external_data)
    return result


def _path_to_time(fallback: Fallback | None) -> list:
    """The fallback path's points to time: all of them up to MAX_ALTERNATIVES, else evenly spaced
    ones, the first and the chosen among them."""
    if fallback is None or len(fallback.path) < 2:
        return []
    path = fallback.path
    chosen = next((index for index, trial in enumerate(path) if trial.kept_float == fallback.kept_float), 0)
    picked = {round(index * (len(path) - 1) / (MAX_ALTERNATIVES - 2)) for index in range(MAX_ALTERNATIVES - 1)} \
        if len(path) > MAX_ALTERNATIVES else set(range(len(path)))
    return [path[index] for index in sorted(picked | {0, chosen})]


def _pareto(alternatives: list[Alternative]) -> list[Alternative]:
    """Mark the points no other point beats on both score and latency."""
    for item in alternatives:
        item.pareto = not any(other.score >= item.score and other.latency.quantized_ms <= item.latency.quantized_ms
                              and (other.score > item.score or other.latency.quantized_ms < item.latency.quantized_ms)
                              for other in alternatives)
    return alternatives


def _load(model) -> tuple[object, ir.Model]:
    """(the reference as given, the model the passes change)."""
    if isinstance(model, onnx.ModelProto):
        return model, model_io.from_proto(model)
    if isinstance(model, ir.Model):
        model_io.check_input(model)
        return model.clone(), model
    return model, model_io.load(model)


def _tolerance(tol: str | Tolerance, settings: QuantizeSettings) -> Tolerance:
    """With a budget, the budget judges: elementwise closeness no longer does (int8 hidden states
    differ by more than 10% in many small elements at a cosine of 0.999)."""
    tol = tol if isinstance(tol, Tolerance) else named_tolerance(tol)
    if settings.min_cosine is not None:
        tol = dataclasses.replace(tol, min_cosine=settings.min_cosine, max_mismatch=1.0)
    if settings.max_drop is not None:
        tol = dataclasses.replace(tol, min_top1=1.0 - settings.max_drop, max_mismatch=1.0)
    return tol


def _linear_inputs(model: ir.Model) -> list[str]:
    """Names of the activations that linear layers with constant weights read."""
    return sorted({value.name for node in model.graph for value in node.inputs[:1]
                   if value is not None and value.name and any(linear_weight(use) for use in value.uses())})


def _float_values(model: ir.Model) -> list[str]:
    """Names of the model's float inputs and node outputs (static int8 calibrates each); missing
    types are inferred first (a model loaded without value_info, under --preset O0)."""
    try:
        shapes.infer_shapes(model, only_if_missing=True)
    except shapes.InferenceFailed:
        pass  # values of unknown type are not calibrated, and quantize_static says which stayed float
    values = [*model.graph.inputs, *(value for node in model.graph for value in node.outputs)]
    return [value.name for value in values if value.name and value.dtype == ir.DataType.FLOAT
            and isinstance(value.type, ir.TensorType)]  # not a sequence of float tensors


def _conv_gemm_inputs(model: ir.Model) -> dict[str, int]:
    """{name of the input x of a Conv or Gemm with a constant weight: its channel axis}: what bias
    correction measures the mean of."""
    axes = {}
    for node in model.graph:
        if is_op(node, "Conv", "Gemm") and len(node.inputs) > 1 and constant_tensor(node.inputs[1]) is not None \
                and node.inputs[0] is not None and node.inputs[0].name and \
                not (node.op_type == "Gemm" and node.attributes.get_int("transA", 0)):
            axes[node.inputs[0].name] = 1
    return axes


def _with_statistics(pass_, stats, blocks_cache: dict, means: dict):
    if pass_.name in ("quantize_static", "quantize_static_linear"):
        pass_.ranges = stats
        if pass_.name == "quantize_static":
            pass_.input_means = means
    elif pass_.name == "smooth_activations":
        pass_.peaks = {name: item.peak for name, item in stats.items()}
    elif pass_.name == "quantize_dynamic" and stats:
        pass_.channel_peaks = {name: item.peak for name, item in stats.items()}
    elif pass_.name == "quantize_weight_only" and stats:
        pass_.channel_weights = {name: item.mean_square for name, item in stats.items()}
        pass_.hessians = {name: item.gram for name, item in stats.items() if item.gram is not None}
    if pass_.name == "quantize_weight_only":
        pass_.blocks_cache = blocks_cache
    return pass_


def _tamed(model: ir.Model, settings: QuantizeSettings, data, config: SessionConfig) -> tuple[PipelineReport,
                                                                                         list[str]]:
    """Static int8's float rewrites before calibrating, from the linear layers' input channel peaks
    on `data`, in place (exact in float): SmoothQuant (`smooth_alpha`), then the Gelu/Relu outputs'
    outlier channels carved out (`outlier_ratio`; smoothing leaves those to it). (The report, the
    nodes to keep float, every node they added: the Muls smoothing put in front of layers, whose
    input int8 would lose what smoothing saves, and the carved channels' own small layers.)"""
    peaks = {name: item.peak for name, item in channel_stats(model, _linear_inputs(model), data, config).items()}
    before = {node.name for node in model.graph}
    passes = []
    if settings.smooth_alpha is not None:
        smooth = create_pass("smooth_activations", {"alpha": settings.smooth_alpha, "exclude": ";".join(settings.exclude),
                                                    "outlier_ratio": settings.outlier_ratio})
        smooth.peaks = peaks
        passes.append(smooth)
    if settings.outlier_ratio:
        carve = create_pass("carve_outliers", {"outlier_ratio": settings.outlier_ratio,
                                               "exclude": ";".join(settings.exclude)})
        carve.peaks = peaks
        passes.append(carve)
    report = PassManager(passes).run(model)
    return report, [node.name for node in model.graph if node.name not in before]


def has_attention(model: ir.Model) -> bool:
    """Whether the model has attention: a fused attention node, or a Softmax reading (through at
    most ATTENTION_DEPTH elementwise or layout ops: scaling, masking) a MatMul of two activations."""
    for node in model.graph:
        if node.domain == MS_DOMAIN and node.op_type in ("Attention", "MultiHeadAttention", "QAttention"):
            return True
        if node.op_type != "Softmax" or node.domain not in ("", "ai.onnx"):
            continue
        frontier = [node.inputs[0]]
        for _ in range(ATTENTION_DEPTH):
            producers = [value.producer() for value in frontier if value is not None and value.producer() is not None]
            if any(producer.op_type in ("MatMul", "Einsum") and
                   all(constant_tensor(value) is None for value in producer.inputs) for producer in producers):
                return True
            frontier = [value for producer in producers if producer.op_type in SCORE_OPS for value in producer.inputs]
    return False


def _name_nodes(model: ir.Model) -> None:
    """Name the unnamed nodes (op type and index): the report, --exclude and the fallback know
    layers by name."""
    taken = {node.name for node in model.graph if node.name}
    for index, node in enumerate(model.graph):
        if not node.name:
            name = f"{node.op_type}_{index}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)


def _quantized(float_model: ir.Model, candidate: ir.Model) -> list[str]:
    """Quantizable nodes of the float model that the quantizer replaced (their names are gone)
    or now read their weight through a DequantizeLinear (portable int4)."""
    remaining = {node.name: node for node in candidate.graph}
    quantized = []
    for node in float_model.graph:
        if node.op_type not in QUANTIZABLE_OPS or not node.name:
            continue
        after = remaining.get(node.name)
        if after is None or any(value is not None and value.producer() is not None
                                and value.producer().op_type == "DequantizeLinear" for value in after.inputs):
            quantized.append(node.name)
    return quantized


def _fall_back(float_model: ir.Model, candidate: ir.Model, settings: QuantizeSettings, validator: Validator,
               build: Callable) -> Fallback:
    def judged(model: ir.Model) -> float:
        """The budget's score; a candidate that meets it but fails the tolerance's other checks
        (top-1 agreement under a cosine budget) scores below any budget, by FAILS_TOLERANCE."""
        result = validator.check(model)
        value = score(result, settings)
        return value - FAILS_TOLERANCE if value >= settings.budget and not result.passed else value

    cache = {(): judged(candidate)}

    def measure(kept: tuple[str, ...]) -> float:
        if kept not in cache:
            cache[kept] = judged(build(kept)[0])
        return cache[kept]

    candidates = _quantized(float_model, candidate)
    # weight-only raises layers to 8 bits: their bytes grow with their weights, so rank per weight
    cost = _weight_elements(float_model, candidates) if settings.mode == "weight-only" else None
    return choose_float(candidates, measure, settings.budget, cost=cost)


def _weight_elements(model: ir.Model, names: Sequence[str]) -> dict[str, float]:
    """Elements of each named node's constant weight (a Gather's table, a MatMul/Gemm/Attention's W)."""
    nodes = {node.name: node for node in model.graph}
    elements = {}
    for name in names:
        node = nodes[name]
        tensor = constant_tensor(node.inputs[0 if node.op_type == "Gather" else 1])
        elements[name] = float(max(tensor.size if tensor is not None else 1, 1))
    return elements


def _kept_float(report: PipelineReport, fallback: Fallback | None, tamed: Sequence[str] = ()) -> list[tuple[str, str]]:
    """(node, why) for the layers the quantizer kept float; `tamed` names the float parts of the
    float rewrites (smoothing's Muls, the carved channels' MatMuls), kept float on purpose."""
    kept = []
    for pass_report in report.passes:
        for reason in pass_report.skipped:
            if " kept float" in reason:
                name, _, why = reason.partition(" kept float")
                if any(f"'{item}'" in name for item in tamed):
                    why = "the float part of smoothing or carving"
                if fallback is None or not any(f"'{item}'" in name for item in fallback.kept_float):
                    kept.append((name, why.lstrip(": ") or "excluded"))
    return kept + (_fallback_reasons(fallback) if fallback is not None else [])


def _fallback_reasons(fallback: Fallback) -> list[tuple[str, str]]:
    return [(name, "the fallback: alone it " + (
                "brings the model within the tolerance's other checks" if fallback.sensitivity[name] > 1.0
                else f"raises the score by {fallback.sensitivity[name]:+.4f}")) for name in fallback.kept_float]


def _merged(first: PipelineReport, second: PipelineReport) -> PipelineReport:
    return dataclasses.replace(first, passes=first.passes + second.passes, seconds=first.seconds + second.seconds,
                               nodes_after=second.nodes_after)


def _check_kernels(float_model: ir.Model, model: ir.Model, config: SessionConfig, force: bool) -> None:
    """Refuse ops the quantizer brought in that the EP has no kernel for (ops the float model already
    had, such as the shape arithmetic CUDA leaves to the CPU, are not the quantizer's doing), and a
    model ONNX Runtime cannot load (a kernel missing for the model's opset: QuantizeLinear-28) —
    loaded only up to LOAD_CHECK_BYTES of parameters, since a session holds another copy of them
    (a bigger model is loaded by validation, unless --no-validate)."""
    ep = config.resolved_ep()
    try:
        if model_io.parameter_bytes(model) <= LOAD_CHECK_BYTES:
            create_session(model, config, label="the quantized model")
    except InputError as error:
        if not force:
            raise QuantizationRefused(f"{error}; nothing was written (--force writes it)") from None
    missing = sorted(set(guard.missing_kernels(model, ep)) - set(guard.missing_kernels(float_model, ep)))
    if missing and not force:
        raise QuantizationRefused(f"{ep} has no kernel for {', '.join(missing)}: those nodes would run on the "
                                  "CPU with copies both ways; nothing was written (--force writes it)")
