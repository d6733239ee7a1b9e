"""The Python API behind every CLI command: optimize, validate, bench, list passes."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Sequence

import onnx
import onnx_ir as ir

from graphopt import model as model_io
from graphopt import quantization
from graphopt.errors import InputError, ValidationFailed
from graphopt.outputs import check_output_file
from graphopt.passes import Pass, create_pass, pass_class, pass_names, pass_options
from graphopt.pipeline import PassManager, PassObserver, PipelineReport, model_opset, resolve_spec
from graphopt.runtime import bench as bench_module
from graphopt.runtime import guard
from graphopt.runtime import inputs as input_io
from graphopt.runtime.bench import BenchResult, ProgressCallback
from graphopt.runtime.compare import Tolerance
from graphopt.runtime.providers import SessionConfig, ort_version, runs_opset
from graphopt.runtime.validate import ValidationResult, Validator

Shapes = dict[str, tuple[int, ...]]
Ranges = dict[str, tuple[float, float]]


@dataclasses.dataclass
class RuntimeOptions:
    """How models are run for validation and benchmarks (mirrors the CLI's runtime flags).

    `opt_level` None is each use's default: validation compares the graphs as written
    ("disable": ONNX Runtime's own rewrites could hide a change), benchmarks time what a
    deployment runs ("all"). `session_config` is any ONNX Runtime session config entry.
    """

    ep: str = "cpu"
    device_id: int = 0
    threads: int | None = None
    opt_level: str | None = None
    provider_options: dict[str, str] = dataclasses.field(default_factory=dict)
    inter_op: int | None = None
    execution_mode: str = "sequential"
    spinning: bool = True
    session_config: dict[str, str] = dataclasses.field(default_factory=dict)

    def for_validation(self) -> SessionConfig:
        """On CUDA, TF32 off unless asked for: validation compares the graphs' float32 math, and
        TF32 products (ONNX Runtime's default) differ by ~1e-4 between any two graphs."""
        config = self._config("disable")
        if config.resolved_ep() == "cuda" and "use_tf32" not in self.provider_options:
            config = dataclasses.replace(config, provider_options=(*config.provider_options, ("use_tf32", "0")))
        return config

    def for_bench(self) -> SessionConfig:
        return self._config("all")

    def _config(self, default_opt_level: str) -> SessionConfig:
        return SessionConfig(self.ep, self.device_id, self.threads, self.opt_level or default_opt_level,
                             tuple(self.provider_options.items()), self.inter_op, self.execution_mode,
                             self.spinning, tuple(self.session_config.items()))


@dataclasses.dataclass
class OptimizeResult:
    model: ir.Model
    report: PipelineReport
    written: list[os.PathLike]
    validation: ValidationResult | None = None
    warnings: list[str] = dataclasses.field(default_factory=list)
    latency: guard.LatencyCheck | None = None  # input vs result, when a quantizing preset is validated


def optimize(
    model: ir.Model | onnx.ModelProto | str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    preset: str | None = None,
    passes: str | Sequence[str] | None = None,
    recipe: str | os.PathLike | None = None,
    target: str = "portable",
    opset: int | None = None,
    fixed_point: bool | None = None,
    max_iterations: int | None = None,
    check: bool = True,
    external_data: bool | None = None,
    validate: bool = False,
    validate_each: bool = False,
    check_speed: bool = True,
    force: bool = False,
    inputs: str | os.PathLike | dict | None = None,
    shapes: Shapes | None = None,
    input_ranges: Ranges | None = None,
    tolerance: str | Tolerance | None = None,
    runtime: RuntimeOptions | None = None,
    observer: PassObserver | None = None,
    fix_shapes: Shapes | None = None,
    keep_metadata: bool = False,
    calibration: str | os.PathLike | Iterable[dict] | None = None,
) -> OptimizeResult | QuantizeResult:
    """Optimize a model (an ir.Model is changed in place) and optionally write it atomically.

    Give at most one of `preset` (O0-O3, default O1), `passes` ("a,b,c" or a list) and
    `recipe` (a TOML/YAML file). `fixed_point` repeats the passes until nothing changes.
    `validate` compares the result with the input in ONNX Runtime and raises ValidationFailed
    (nothing written) when outputs differ beyond `tolerance` (default fp32, int8 when a pass
    quantizes), unless `force`; `validate_each`
    checks after every pass that changed the model and names the first one that broke it.
    When a quantizing pass runs, `validate` also times the input against the result on the EP
    (`check_speed`) and refuses a slower model (QuantizationRefused) unless `force`.
    `fix_shapes` ({input: shape}) makes those inputs static first (validation then runs at
    those shapes); `keep_metadata` keeps the debug info O2/O3 strip. The int8-static preset (or a
    pass list or recipe ending in quantize_static) measures activation ranges on `calibration` (an
    .npz, a folder of them or an iterable of input sets; required) after the passes before it, and
    judges the result as graphopt.quantize's static mode does (int8-static tolerance, on a held-out
    eighth of the calibration data unless `inputs` are given), returning graphopt.quantize's result;
    the preset takes the form its `scheme="auto"` would (a model with attention: only its linear
    layers, quantize_static_linear), a pass list or recipe quantize_static as named.
    """
    spec = resolve_spec(preset, passes, recipe)
    if tolerance is None:
        tolerance = spec.default_tolerance
    if keep_metadata:
        spec.without("strip_debug_info")
    if fix_shapes:
        clash = sorted(name for name in set(fix_shapes) & set(shapes or {}) if tuple(shapes[name]) != tuple(fix_shapes[name]))
        if clash:
            raise InputError(f"--shape {clash[0]} differs from --fix-shape {clash[0]}: the fixed model only runs "
                             "at the fixed shape")
        spec.first("fix_shape", {"shapes": dict(fix_shapes)})
        shapes = {**(shapes or {}), **fix_shapes}
    check_output_file(output)
    if fixed_point is not None:
        spec.fixed_point = fixed_point
    if max_iterations is not None:
        spec.max_iterations = max_iterations
    if calibration is not None or any(name == "quantize_static" for name, _ in spec.passes):
        if validate_each:
            raise InputError("--validate-each checks float passes; quantize_static is judged as a whole (--validate)")
        runtime = runtime or RuntimeOptions()
        # the preset names an intent (static int8, in the form that suits the model); a pass list names quantize_static
        scheme = "auto" if passes is None and recipe is None else "qdq"
        result = quantization.run(model, output, _static_settings(spec, calibration, scheme), preset="O0", target=target,
                                  opset=opset, validate=validate, check_speed=validate and check_speed, force=force,
                                  inputs=inputs, calibration=calibration, shapes=shapes, input_ranges=input_ranges,
                                  tol=tolerance, config=runtime.for_validation(),
                                  bench_config=runtime.for_bench(), observer=observer,
                                  external_data=external_data, float_passes=spec.build()[:-1],
                                  fixed_point=spec.fixed_point)
        result.warnings = opset_warnings(result.model)
        return result
    manager = PassManager(spec.build(), target=target, fixed_point=spec.fixed_point,
                          max_iterations=spec.max_iterations, check=check, observer=observer)
    if isinstance(model, onnx.ModelProto):
        source = model
        model = model_io.from_proto(model)
    elif isinstance(model, ir.Model):
        model_io.check_input(model)
        source = model
    else:
        source = model
        model = model_io.load(model)
    validator = None
    if validate or validate_each:
        # The reference: the file or proto as given (ORT loads it as is), described by a clone
        # of the loaded model taken before the passes run (cheap: tensors are shared).
        snapshot = model.clone()
        validator = Validator(snapshot if isinstance(source, ir.Model) else source, feeds=inputs,
                              shapes=shapes, ranges=input_ranges, tol=tolerance,
                              config=(runtime or RuntimeOptions()).for_validation(),
                              reference_ir=snapshot)
    if validate_each:
        manager.after_change = _each_pass_check(validator)
    if opset is not None:
        model = model_io.convert_opset(model, opset)
    report = manager.run(model)
    validation = None
    if validator is not None:
        validation = validator.validate(model)
        if not validation.passed and not force:
            raise ValidationFailed(f"the optimized model does not match the input: "
                                   f"{validation.summary()}; nothing was written", validation)
    latency = None
    if validate and check_speed and spec.lossy:
        feeds = None if inputs is None else input_io.user_feeds(snapshot, inputs)
        latency = guard.check_speed(snapshot, model, (runtime or RuntimeOptions()).for_bench(), feeds, force)
    written = model_io.save(model, output, external_data=external_data) if output is not None else []
    return OptimizeResult(model, report, written, validation, opset_warnings(model), latency)


QUANTIZE_MODES = tuple(quantization.MODES)
MODE_TOLERANCES = quantization.MODE_TOLERANCES
QuantizeResult = quantization.QuantizeResult


def quantize(
    model: ir.Model | onnx.ModelProto | str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    mode: str = "dynamic",
    bits: int | None = None,
    per_channel: bool = True,
    exclude: Sequence[str] = (),
    int8_layers: Sequence[str] = (),
    embeddings: bool = True,
    block_size: int = 32,
    embedding_block_size: int = 128,
    algorithm: str = "rtn",
    zero_points: bool | None = None,
    accuracy_level: int = 0,
    outlier_ratio: float = 0.0,
    outlier_mode: str = "all",
    smooth: float | None = None,
    calibrator: str = "minmax",
    activation_type: str = "u8",
    scheme: str = "auto",
    bias_correction: bool = True,
    min_cosine: float | None = None,
    max_drop: float | None = None,
    preset: str = "O3",
    target: str = "portable",
    opset: int | None = None,
    validate: bool = True,
    check_speed: bool = True,
    force: bool = False,
    inputs: str | os.PathLike | dict | None = None,
    calibration: str | os.PathLike | Iterable[dict] | None = None,
    shapes: Shapes | None = None,
    input_ranges: Ranges | None = None,
    tolerance: str | Tolerance | None = None,
    runtime: RuntimeOptions | None = None,
    observer: PassObserver | None = None,
    external_data: bool | None = None,
) -> QuantizeResult:
    """Quantize a model after the `preset`'s float passes (O3; O0 quantizes the graph as it is).

    `mode` "dynamic": int8 weights, activations quantized at run time (`bits` 8); "weight-only":
    int4 weights in blocks of `block_size` along K (`bits` 4; `algorithm` "rtn" rounds to nearest,
    "mse" searches each block's clipping against activation-weighted error, "gptq" applies GPTQ with
    the Gram matrix of each layer's inputs; `zero_points` (default yes) gives each int4 block a zero
    point, spanning its own [min, max] — about 40% less squared error than symmetric blocks for
    +0.5 bit per 32 weights; False makes them symmetric; `int8_layers` names nodes or op types
    quantized to 8 bits instead, in blocks of 128 to 512; int4 embedding tables (target "ort") take
    blocks of `embedding_block_size` along a row); `accuracy_level` is
    MatMulNBits': 0 computes in float32, 4 quantizes activations to int8, which pays at one row
    (decoding) and costs at 128). `outlier_ratio` (dynamic int8; 0, off, by default; 6 is a good
    value) keeps the input channels whose measured peak is above that many times the median
    channel's in a small float MatMul beside the int8 one (LLM.int8()'s decomposition: far more
    accurate, somewhat slower); `outlier_mode` "carve" does that only where it is cheap (inputs a
    Gelu/Relu of a linear layer makes), "all" everywhere. `exclude` names nodes or op types kept
    float; `smooth` (SmoothQuant's alpha) moves activation outliers into
    the weights first (static: before calibrating; its dividing Muls run in float). `mode` "static":
    activations quantized at ranges measured on `calibration` (required) by `calibrator` ("minmax",
    "percentile" 99.999, "entropy"), `activation_type` "u8" (zero point) or "s8"
    (`zero_points=False`: symmetric), weights int8 per channel; `scheme` "qdq" puts
    QuantizeLinear/DequantizeLinear pairs around every op int8 kernels run (Conv, MatMul, Gemm,
    Add, Mul, pooling, Concat; biases int32), "linear" quantizes only the linear layers and
    attention projections (dynamic int8's kernels at calibrated scales; embeddings int8 rows),
    "auto" (default) takes linear for a model with attention, qdq otherwise; qdq's `bias_correction`
    (default on) takes E[x]·(Ŵ − W), the mean error the int8 weights add, out of each Conv/Gemm bias;
    `outlier_ratio` with `outlier_mode="carve"` carves before calibrating. The result is validated against the input at int8 tolerance; with
    `min_cosine` (worst output cosine) or `max_drop` (top-1 agreement lost) the most sensitive
    layers go back to float (weight-only: to 8 bits) until the budget is met. `check_speed` times
    float against quantized on the EP and refuses (QuantizationRefused) a slower model, as it
    refuses ops the EP has no kernel for, unless `force`. `opset` converts first (portable int4
    needs 21).

    The statistics (mse, gptq, outlier_ratio, smooth) are measured on `calibration` when given
    (an .npz with the samples along axis 0, a folder of .npz, or an iterable of {input: array};
    see graphopt.runtime.calibration), otherwise on the validation inputs (`inputs`, or
    synthesized ones: random token ids make poor statistics for a language model).
    """
    settings = quantization.QuantizeSettings(
        mode=mode, bits=bits if bits is not None else quantization.MODES.get(mode, (8,))[0],
        per_channel=per_channel, exclude=tuple(exclude), int8_layers=tuple(int8_layers), embeddings=embeddings, block_size=block_size,
        embedding_block_size=embedding_block_size, algorithm=algorithm, zero_points=zero_points, accuracy_level=accuracy_level,
        outlier_ratio=outlier_ratio or 0.0, outlier_mode=outlier_mode,
        smooth_alpha=smooth, calibrator=calibrator, activation_type=activation_type, scheme=scheme,
        bias_correction=bias_correction,
        min_cosine=min_cosine,
        max_drop=max_drop)
    runtime = runtime or RuntimeOptions()
    check_output_file(output)
    return quantization.run(model, output, settings, preset=preset, target=target, opset=opset, validate=validate,
                            check_speed=check_speed, force=force, inputs=inputs, calibration=calibration,
                            shapes=shapes, input_ranges=input_ranges, tol=tolerance,
                            config=runtime.for_validation(),
                            bench_config=runtime.for_bench(), observer=observer, external_data=external_data)


def _static_settings(spec, calibration, scheme: str) -> quantization.QuantizeSettings:
    """quantize_static's options as graphopt.quantize's static settings; it must come last, once."""
    if [name for name, _ in spec.passes].count("quantize_static") != 1 or spec.passes[-1][0] != "quantize_static":
        raise InputError("--calib feeds quantize_static (the int8-static preset), which must be the last pass and "
                         "run once: it quantizes at ranges measured on the model the passes before it make")
    if calibration is None:
        raise InputError("quantize_static (the int8-static preset) measures every activation's range on "
                         "calibration data: give --calib DATA")
    static = create_pass("quantize_static", spec.passes[-1][1])  # checks the options
    return quantization.QuantizeSettings(mode="static", per_channel=static.per_channel,
                                         exclude=tuple(sorted(static.exclude)), calibrator=static.calibrator,
                                         activation_type=static.activation_type, scheme=scheme,
                                         bias_correction=static.bias_correction,
                                         zero_points=False if static.symmetric else None)


OPSET_FLOOR = 7


def opset_warnings(model: ir.Model) -> list[str]:
    """What could not be checked for a model outside the opsets graphopt and its tools support."""
    opset = model_opset(model)
    if opset < OPSET_FLOOR:
        return [f"opset {opset} is below {OPSET_FLOOR}, the oldest graphopt supports: the ONNX checker and "
                "graphopt's invariants passed, but the passes are untested at this opset; check the result "
                f"with --validate, or convert it with --opset {OPSET_FLOOR}"]
    problems = []
    if opset > onnx.defs.onnx_opset_version():
        problems.append(f"than onnx {onnx.__version__} knows ({onnx.defs.onnx_opset_version()}), so its ops "
                        "were not checked against their schemas")
    if not runs_opset(opset):
        problems.append(f"than onnxruntime {ort_version()} runs, so it could not be run, validated or "
                        "benchmarked")
    if not problems:
        return []
    return [f"opset {opset} is newer {' and newer '.join(problems)}; graphopt's structural invariants passed"]


def _each_pass_check(validator: Validator):
    def check(pass_: Pass, model: ir.Model) -> None:
        result = validator.validate(model)
        if not result.passed:
            raise ValidationFailed(f"pass {pass_.name} changed the outputs: {result.summary()}; "
                                   "nothing was written", result)

    return check


def validate(
    reference: ir.Model | onnx.ModelProto | str | os.PathLike,
    candidate: ir.Model | onnx.ModelProto | str | os.PathLike,
    *,
    inputs: str | os.PathLike | dict | None = None,
    shapes: Shapes | None = None,
    input_ranges: Ranges | None = None,
    tolerance: str | Tolerance = "fp32",
    runtime: RuntimeOptions | None = None,
    locate: bool = True,
) -> ValidationResult:
    """Run both models on the same inputs (several shapes when axes are dynamic), compare every
    output, and on failure name the first node whose output diverges."""
    if isinstance(candidate, (str, os.PathLike)):
        model_io.load(candidate)  # a missing or unreadable file is bad input, not a failed validation
    validator = Validator(reference, feeds=inputs, shapes=shapes, ranges=input_ranges,
                          tol=tolerance, config=(runtime or RuntimeOptions()).for_validation())
    return validator.validate(candidate, locate=locate)


def bench(
    models: Sequence[str | os.PathLike],
    *,
    inputs: str | os.PathLike | dict | None = None,
    shapes: Shapes | None = None,
    input_ranges: Ranges | None = None,
    sweep: Sequence[dict[str, tuple[int, ...]]] | None = None,
    warmup: int = 10,
    runs: int | None = None,
    seconds: float | None = None,
    concurrency: int = 1,
    runtime: RuntimeOptions | None = None,
    progress: ProgressCallback | None = None,
    labels: Sequence[str] | None = None,
) -> BenchResult:
    """Latency of one or more models on the same inputs, each timed while it owns the machine
    (models take turns in time slices). `runs` (default 100) or `seconds`, not both; `sweep`
    is a list of shape sets (see graphopt.runtime.inputs.parse_sweep); `concurrency` keeps that
    many requests in flight on each session."""
    return bench_module.bench(models, config=(runtime or RuntimeOptions()).for_bench(), inputs=inputs,
                              shapes=shapes, ranges=input_ranges, sweep=sweep, warmup=warmup, runs=runs,
                              seconds=seconds, concurrency=concurrency, progress=progress, labels=labels)


@dataclasses.dataclass
class PassInfo:
    name: str
    summary: str
    min_opset: int
    targets: list[str]
    options: dict[str, object]
    target_aware: bool = False


def list_passes() -> list[PassInfo]:
    """Every registered pass with its summary, opset window, targets and option defaults."""
    infos = []
    for name in pass_names():
        cls = pass_class(name)
        options = {option.name: option.default for option in pass_options(cls)}
        infos.append(PassInfo(name, cls.summary, cls.min_opset, sorted(cls.targets), options, cls.target_aware))
    return infos


def check_output_differs(source: str | os.PathLike, output: str | os.PathLike) -> None:
    """Refuse an output path that is the input (before any work is done)."""
    if os.path.exists(output) and os.path.exists(source) and os.path.samefile(source, output):
        raise InputError(f"{output}: refusing to overwrite the input model")
