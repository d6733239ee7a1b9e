"""Quantization as a client of the lossy pipeline: the settings a user gives, and the passes they mean.

`graphopt quantize`, the quantizing presets of `graphopt optimize` and `graphopt run --quantize`
all come here: the settings (declared once: graphopt.options) become float passes, the passes
that rewrite the float model on measured statistics (SmoothQuant, outlier carving, for static
int8 before its calibration), and the quantizer; graphopt.lossy measures, judges, backs layers
off, guards and writes.
  dynamic      quantize_dynamic: int8 weights, activations quantized at run time
  weight-only  quantize_weight_only: int4 weight blocks (the fallback raises layers to 8 bits)
  static       calibrated int8 activations: scheme qdq (quantize_static, pairs around every op with
               an int8 kernel, for CNNs; its float passes run for the portable target, since contrib
               fusions would hide the ops ONNX Runtime's QDQ fusions look for) or linear
               (quantize_static_linear, only the linear layers, for transformers); auto takes
               linear for a model with attention
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from graphopt import lossy
from graphopt.analysis.attention import has_attention
from graphopt.errors import InputError
from graphopt.options import between, option, settings_from
from graphopt.passes import Pass, create_pass, pass_class
from graphopt.passes.quantize.calibrate import CALIBRATORS
from graphopt.pipeline import FLOAT_PRESETS, PRESETS

MODE_PASSES = {"dynamic": "quantize_dynamic", "weight-only": "quantize_weight_only", "static": "quantize_static"}
MODES = tuple(MODE_PASSES)
OUTLIER_MODES = ("all", "carve")
SCHEMES = ("auto", "qdq", "linear")


def mode_tolerance(mode: str) -> str:
    """The tolerance a mode is judged at without a budget: its quantizer's declaration."""
    return pass_class(MODE_PASSES[mode]).tolerance


@dataclasses.dataclass(frozen=True)
class QuantizeSettings:
    """What to quantize and how: `graphopt quantize`'s options and `graphopt.quantize`'s keywords."""

    mode: str = option("dynamic", "dynamic: int8 weights, activations quantized at run time; weight-only: int4 "
                       "weight blocks; static: int8 activations at ranges calibrated on --calib (see --scheme).",
                       choices=MODES)
    bits: int | None = option(None, "Weight bits: 8 for dynamic and static, 4 for weight-only (the defaults).")
    block_size: int = option(32, "weight-only: weights per scale, along the reduction axis (a power of two, "
                             "at least 16).")
    embedding_block_size: int = option(128, "weight-only, --target ort: values per scale along an int4 embedding "
                                       "table's rows (a power of two, at least 16).")
    algorithm: str = option("rtn", "weight-only: rtn rounds to nearest; mse searches each block's clipping, weighing "
                            "the error by the activations; gptq moves each channel's rounding error onto the "
                            "channels not yet rounded (GPTQ, with the inputs' Gram matrix). Both measure on --calib "
                            "when given.", choices=("rtn", "mse", "gptq"))
    zero_points: bool | None = option(None, "weight-only: a zero point per int4 block, spanning its [min, max] (the "
                                      "default: about 40% less error for +0.5 bit per 32 weights), or symmetric "
                                      "blocks; static: symmetric int8 activations (with --activation-type s8).",
                                      flag="--zero-points/--symmetric")
    calibrator: str = option("minmax", "static: an activation's range from its histogram: min/max, the 99.999th "
                             "percentiles, or the KL-optimal clipping (TensorRT's entropy method).", choices=CALIBRATORS)
    activation_type: str = option("u8", "static: uint8 activations with a zero point (what ONNX Runtime's CPU kernels "
                                  "fuse best) or int8.", choices=("u8", "s8"))
    scheme: str = option("auto", "static: qdq puts Q/DQ pairs around every op with an int8 kernel (CNNs); linear "
                         "quantizes only the linear layers and attention projections, the rest float "
                         "(transformers); auto takes linear for a model with attention, qdq otherwise.",
                         choices=SCHEMES)
    bias_correction: bool = option(True, "static qdq: take the mean error the int8 weights add (mean input times "
                                   "the weight error) out of each Conv/Gemm bias.",
                                   flag="--bias-correction/--no-bias-correction")
    accuracy_level: int = option(0, "weight-only --target ort: MatMulNBits' compute type; 0 float32, 4 int8 "
                                 "activations (faster for one-row decoding, slower at 128 rows on CPU).",
                                 choices=(0, 1, 2, 3, 4))
    outlier_ratio: float = option(0.0, "int8: input channels peaking above this many times the median channel "
                                  "(e.g. 6) stay in a small float MatMul beside the int8 one: more accurate, "
                                  "somewhat slower; 0 is off (static: with --outlier-mode carve, carved before "
                                  "calibrating).")
    outlier_mode: str = option("all", "Where --outlier-ratio acts. carve: only activations a Gelu/Relu of a linear "
                               "layer makes (their outlier channels are carved out of that layer: cheap); all: every "
                               "linear layer's input (the others masked: a full-size Mul and a Gather more each).",
                               choices=OUTLIER_MODES)
    per_channel: bool = option(True, "One weight scale per output channel, or one per tensor.",
                               flag="--per-channel/--per-tensor")
    exclude: tuple[str, ...] = option((), "A node name or op type to keep float (repeatable).", metavar="NODE_OR_OP")
    int8_layers: tuple[str, ...] = option((), "weight-only: a node name or op type to quantize to 8 bits instead of 4 "
                                          "(repeatable).", flag="--int8", metavar="NODE_OR_OP")
    embeddings: bool = option(True, "Quantize embedding tables (Gather of a constant table) too.",
                              flag="--embeddings/--no-embeddings")
    smooth: float | None = option(None, "SmoothQuant first: move activation outliers into the weights (alpha 0-1, "
                                  "e.g. 0.5); static: before calibrating, the dividing Muls kept float.",
                                  metavar="ALPHA", check=between(0.0, 1.0, open_low=True, open_high=True))

    def check(self) -> None:
        """The combinations no single option's check sees."""
        mode = self.mode
        if self.bits is not None and self.bits != (4 if mode == "weight-only" else 8):
            raise InputError(f"--bits {self.bits}: --mode {mode} quantizes to --bits {4 if mode == 'weight-only' else 8}")
        only = {"weight-only": [("--algorithm", self.algorithm != "rtn"), ("--int8", bool(self.int8_layers)),
                                ("--accuracy-level", bool(self.accuracy_level))],
                "static": [("--calibrator", self.calibrator != "minmax"), ("--activation-type", self.activation_type != "u8"),
                           ("--scheme", self.scheme != "auto"), ("--no-bias-correction", not self.bias_correction)]}
        for owner, flags in only.items():
            for flag, given in flags:
                if given and mode != owner:
                    raise InputError(f"{flag}: it chooses {owner} quantization's form (--mode {owner})")
        if mode == "dynamic" and self.zero_points is not None:
            raise InputError("--zero-points/--symmetric: they choose int4 blocks (--mode weight-only) or static "
                             "int8 activations; dynamic int8 weights are symmetric")
        if mode == "static" and self.zero_points is False and self.activation_type != "s8":
            raise InputError("--symmetric: symmetric activations are int8 (--activation-type s8); uint8 needs its zero point")
        if mode == "static" and self.outlier_ratio and self.outlier_mode != "carve":
            raise InputError("--outlier-ratio under --mode static carves (--outlier-mode carve): the carved layers are "
                             "rewritten in float before calibrating; masking x needs its run-time range")
        if self.outlier_ratio and (mode == "weight-only" or self.outlier_ratio <= 1):
            raise InputError(f"--outlier-ratio {self.outlier_ratio}: int8 only, above 1 (0 turns it off)")
        if self.outlier_mode != "all" and not self.outlier_ratio:
            raise InputError(f"--outlier-mode {self.outlier_mode}: it chooses where --outlier-ratio acts; give that too")

    def with_scheme(self, model) -> QuantizeSettings:
        """auto's static form decided on the model: linear with attention, qdq without."""
        if self.mode != "static" or self.scheme != "auto":
            return self
        return dataclasses.replace(self, scheme="linear" if has_attention(model) else "qdq")

    def passes(self) -> list[Pass]:
        """The data-dependent float rewrites (SmoothQuant, static's carving), then the quantizer."""
        exclude = ";".join(self.exclude)
        steps: list[tuple[str, dict]] = []
        if self.smooth is not None:
            steps.append(("smooth_activations", {"alpha": self.smooth, "exclude": exclude,
                                                 "outlier_ratio": self.outlier_ratio}))
        if self.mode == "static" and self.outlier_ratio:
            steps.append(("carve_outliers", {"outlier_ratio": self.outlier_ratio, "exclude": exclude}))
        steps.append(self._quantizer(exclude))
        return [create_pass(name, options) for name, options in steps]

    def _quantizer(self, exclude: str) -> tuple[str, dict]:
        if self.mode == "static":
            options = {"per_channel": self.per_channel, "calibrator": self.calibrator, "exclude": exclude,
                       "activation_type": self.activation_type, "symmetric": self.zero_points is False}
            return ("quantize_static_linear", {**options, "embeddings": self.embeddings}) if self.scheme == "linear" \
                else ("quantize_static", {**options, "bias_correction": self.bias_correction})
        if self.mode == "dynamic":
            return "quantize_dynamic", {"per_channel": self.per_channel, "exclude": exclude, "embeddings": self.embeddings,
                                        "outlier_ratio": self.outlier_ratio,
                                        "mask_outliers": self.outlier_mode == "all"}
        return "quantize_weight_only", {"block_size": self.block_size, "embedding_block_size": self.embedding_block_size,
                                        "algorithm": self.algorithm, "exclude": exclude,
                                        "accuracy_level": self.accuracy_level, "symmetric": self.zero_points is False,
                                        "int8_layers": ";".join(self.int8_layers), "embeddings": self.embeddings}


def settings(**options) -> QuantizeSettings:
    """QuantizeSettings from keyword options (graphopt.quantize's), every one checked."""
    result = settings_from(QuantizeSettings, options)
    result.check()
    return result


def plan(source: lossy.Source, settings_: QuantizeSettings, *, target: str, preset: str = "O3",
         float_passes: Sequence[Pass] | None = None, fixed_point: bool = True, check: bool = True) -> lossy.Plan:
    """The lossy plan for a loaded model: `preset`'s float passes (or `float_passes`), then the
    settings' passes; static qdq's float passes run for the portable target."""
    if float_passes is None and (preset not in FLOAT_PRESETS):
        raise InputError(f"--preset {preset!r}: choose the float passes to run first from O0, O1, O2, O3")
    chosen = settings_.with_scheme(source.model)
    floats = list(float_passes) if float_passes is not None else [create_pass(name) for name in PRESETS[preset]]
    qdq = chosen.mode == "static" and chosen.scheme == "qdq"
    return lossy.Plan(floats, chosen.passes(), target=target, float_target="portable" if qdq else None,
                      fixed_point=fixed_point, check=check)
