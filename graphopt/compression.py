"""Compression as a client of the lossy pipeline: `graphopt compress`'s settings and the passes they mean.

The stages run in one order, each on what the one before left (its statistics measured there):
structured pruning of channels (prune_channels) and attention heads (prune_heads), low-rank factorization
(low_rank), weight sharing (cluster_weights), magnitude pruning (prune_magnitude), then reduced precision
(convert_precision) or quantization (the quantizer of graphopt.quantization's mode). One budget judges them together: the fallback backs
each layer off along its own pass's ladder until it holds.
"""

from __future__ import annotations

import dataclasses

from graphopt import lossy
from graphopt.errors import InputError
from graphopt.options import between, option, settings_from
from graphopt.passes import Pass, create_pass
from graphopt.passes.compress.prune import parse_pattern
from graphopt.passes.compress.prune_channels import IMPORTANCE
from graphopt.passes.precision import COMPUTE, FORMATS
from graphopt.pipeline import FLOAT_PRESETS, PRESETS
from graphopt.quantization import MODES, QuantizeSettings

_FRACTION = between(0.0, 1.0, open_low=True, open_high=True)


@dataclasses.dataclass(frozen=True)
class CompressSettings:
    """What to compress and how: `graphopt compress`'s options and `graphopt.compress`'s keywords."""

    prune_channels: float | None = option(None, "Remove this fraction of each layer family's output channels "
                                          "(structured pruning: Conv, Gemm, MatMul; residual streams together).",
                                          metavar="RATIO", check=_FRACTION)
    prune_heads: float | None = option(None, "Remove this fraction of each fused Attention's heads (--target ort), "
                                       "with the output projection's rows.", metavar="RATIO", check=_FRACTION)
    importance: str = option("activation", "--prune-channels/--prune-heads: rank channels by what their readers lose without "
                             "them (activation, measured on --calib) or by their filters' norms (l1, l2).",
                             choices=IMPORTANCE)
    reconstruct: bool = option(True, "--prune-channels/--prune-heads: refit the next layers by least squares on the measured "
                               "statistics (no training).", flag="--reconstruct/--no-reconstruct")
    round_to: int = option(8, "--prune-channels: keep a multiple of this many channels (CPU kernels work in "
                           "blocks of 8 or 16).")
    low_rank: float | None = option(None, "Factor linear layers by truncated SVD, keeping this share of the "
                                    "singular values' energy (0-1).", metavar="ENERGY", check=_FRACTION)
    rank_ratio: float | None = option(None, "Factor linear layers by truncated SVD, keeping this fraction of "
                                      "their parameters.", metavar="RATIO", check=_FRACTION)
    whiten: bool = option(True, "--low-rank/--rank-ratio: whiten by the input's Gram matrix (activation-aware SVD).",
                          flag="--whiten/--no-whiten")
    cluster_bits: int | None = option(None, "Share weights: k-means into 2^B values per group of channels, stored "
                                      "as B-bit indices decoded at load (the file shrinks; run-time memory stays "
                                      "float's).",
                                      metavar="B", choices=(2, 3, 4, 5, 6, 7, 8))
    cluster_table_bits: int | None = option(None, "--cluster-bits for the embedding tables (Gather's) instead: half of a "
                                            "small transformer's weights, and they cost its outputs far less per bit "
                                            "than its linear layers.", metavar="B", choices=(2, 3, 4, 5, 6, 7, 8))
    sparsity: float | None = option(None, "Zero this fraction of the smallest weights (shrinks the compressed "
                                    "file only: ONNX Runtime's CPU kernels compute dense).", metavar="RATIO",
                                    check=_FRACTION)
    pattern: str | None = option(None, "--sparsity in blocks: of every M consecutive weights along a layer's inputs "
                                 "the N largest kept (2:4: NVIDIA's sparse tensor cores, through TensorRT); alone "
                                 "it means --sparsity 1-N/M.", metavar="N:M")
    precision: str | None = option(None, "Convert to float16 or bfloat16: computed in it where the EP has half "
                                   "kernels and the measured values fit, else the weights only (the file halves; "
                                   "on the CPU EP, whose x86 build has no half MatMul, that is what it does).",
                                   choices=tuple(FORMATS))
    precision_compute: str = option("auto", "--precision: where to compute in half: auto (where the EP has the "
                                     "kernels), all (every node ONNX allows, for runtimes that have them: TensorRT, "
                                     "Core ML), weights (store only).", choices=COMPUTE)
    quantize: str | None = option(None, "Quantize last: dynamic, static (with --calib) or weight-only.",
                                  choices=MODES)
    exclude: tuple[str, ...] = option((), "A node name or op type no stage changes (repeatable).",
                                      metavar="NODE_OR_OP")

    def check(self) -> None:
        if self.precision and (self.quantize or self.cluster_bits):
            other = f"--quantize {self.quantize}" if self.quantize else "--cluster-bits"
            raise InputError(f"--precision {self.precision} and {other} both store the weights in fewer bits: choose one")
        if self.precision_compute != "auto" and not self.precision:
            raise InputError("--precision-compute says where --precision computes in half: give --precision")
        if self.cluster_table_bits and not self.cluster_bits:
            raise InputError("--cluster-table-bits sets the embedding tables' width for --cluster-bits: give --cluster-bits")
        if not any((self.prune_channels, self.prune_heads, self.low_rank, self.rank_ratio, self.cluster_bits, self.sparsity,
                    self.pattern, self.precision, self.quantize)):
            raise InputError("nothing to do: give --prune-channels, --prune-heads, --low-rank/--rank-ratio, "
                             "--cluster-bits, --sparsity/--pattern, --precision or --quantize")
        if self.low_rank and self.rank_ratio:
            raise InputError("--low-rank and --rank-ratio both set a layer's rank: give one")
        if self.cluster_bits and self.quantize:
            raise InputError(f"--cluster-bits and --quantize {self.quantize} both store the weights in fewer bits: "
                             "choose one (the quantizer cannot read a codebook's decoded weights)")
        if self.pattern:
            kept, block = parse_pattern(self.pattern.strip())
            if self.sparsity and abs(self.sparsity - (1 - kept / block)) > 1e-9:
                raise InputError(f"--pattern {self.pattern} zeroes {1 - kept / block:.0%} of the weights, "
                                 f"--sparsity {self.sparsity} asks {self.sparsity:.0%}: give one")
        if self.cluster_bits and (self.sparsity or self.pattern):
            raise InputError("--cluster-bits after --sparsity would move the zeroed weights onto its centroids: "
                             "choose one")

    def quantizer(self, model) -> QuantizeSettings | None:
        """The quantization stage's settings, its static scheme decided on the model."""
        return None if not self.quantize else QuantizeSettings(mode=self.quantize, exclude=self.exclude).with_scheme(model)

    def passes(self, model) -> list[Pass]:
        exclude = ";".join(self.exclude)
        steps: list[tuple[str, dict]] = []
        if self.prune_channels:
            steps.append(("prune_channels", {"ratio": self.prune_channels, "importance": self.importance,
                                             "reconstruct": self.reconstruct, "round_to": self.round_to,
                                             "exclude": exclude}))
        if self.prune_heads:
            steps.append(("prune_heads", {"ratio": self.prune_heads, "importance": self.importance,
                                          "reconstruct": self.reconstruct, "exclude": exclude}))
        if self.low_rank or self.rank_ratio:
            steps.append(("low_rank", {"energy": self.low_rank or 0.0, "rank_ratio": self.rank_ratio or 0.0,
                                       "whiten": self.whiten, "exclude": exclude}))
        if self.cluster_bits:
            steps.append(("cluster_weights", {"bits": self.cluster_bits, "table_bits": self.cluster_table_bits or 0,
                                              "exclude": exclude}))
        if self.sparsity or self.pattern:
            steps.append(("prune_magnitude", {"exclude": exclude, **({"pattern": self.pattern.strip()} if self.pattern
                                                                     else {"sparsity": self.sparsity})}))
        if self.precision:
            steps.append(("convert_precision", {"precision": self.precision, "compute": self.precision_compute,
                                                "exclude": exclude}))
        passes = [create_pass(name, options) for name, options in steps]
        quantizer = self.quantizer(model)
        return passes + (quantizer.passes() if quantizer is not None else [])


def settings(**options) -> CompressSettings:
    """CompressSettings from keyword options (graphopt.compress's), every one checked."""
    result = settings_from(CompressSettings, options)
    result.check()
    return result


def plan(source: lossy.Source, settings_: CompressSettings, *, target: str, preset: str = "O3") -> lossy.Plan:
    """`preset`'s float passes, then the stages (for static int8 in Q/DQ pairs, the float passes
    run for the portable target, as graphopt.quantization's do)."""
    if preset not in FLOAT_PRESETS:
        raise InputError(f"--preset {preset!r}: choose the float passes to run first from O0, O1, O2, O3")
    quantizer = settings_.quantizer(source.model)
    qdq = quantizer is not None and quantizer.mode == "static" and quantizer.scheme == "qdq"
    return lossy.Plan([create_pass(name) for name in PRESETS[preset]], settings_.passes(source.model), target=target,
                      float_target="portable" if qdq else None)
