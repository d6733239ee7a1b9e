"""Comparing two runs output by output, and the tolerances that decide pass or fail.

Per output: max abs error, max rel error, cosine similarity, the fraction of elements outside
`atol + rtol * |reference|`, and top-1/top-5 agreement when the output looks like logits.
fp32 is tight (every element within tolerance); fp16 and int8 allow a small mismatching
fraction and are judged mostly by cosine similarity and top-1 agreement. Integer and bool
outputs must match exactly, up to the same mismatch fraction.

fp32 arithmetic itself has a noise floor: summing in another order moves a deep network's outputs.
Where the validator measured it — the reference run once more with ONNX Runtime's own graph
optimizations the other way (on if they were off), its largest change to an output is that output's
`noise` — an element is also within tolerance when its error is at most NOISE_FACTOR times that
noise (and at most rtol times the output's largest magnitude). Measured: HardSwish written as one
node instead of Add/Clip/Mul/Div moved PicoDet's box outputs by up to 1.5e-5 (2.6x ONNX Runtime's
own 5.8e-6 there), a few elements of 300,000 beyond atol=1e-5 on values of ~0.02.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from graphopt.errors import InputError


NOISE_FACTOR = 4  # a rewrite that rounds differently changes a few roundings per block; ORT's reorder, one


@dataclasses.dataclass(frozen=True)
class Tolerance:
    name: str
    rtol: float
    atol: float
    max_mismatch: float = 0.0
    min_cosine: float = 0.0
    min_top1: float = 0.0
    # an element is also within tolerance when its error is at most this share of the output's largest
    # magnitude: a format's rounding of the weights moves every element by a share of the output's
    # scale, however small the element (float16 weights: 4 of 512 elements of a 128-wide MatMul beyond
    # atol=1e-3, by 3e-3 on outputs up to 40)
    scale: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


TOLERANCES = {
    "fp32": Tolerance("fp32", rtol=1e-4, atol=1e-5),
    # fp16: an element is inside within 0.5% of its output's largest magnitude (float16 weights moved
    # PicoDet's box logits, up to 5.5, by up to 0.02 at a cosine of 0.9999992), and up to 1% of elements
    # may be outside, for a steep activation moves the few elements on its slope by more (PP-OCR's
    # detector: 0.27% of its 102,400 probabilities off by up to 0.03, at a cosine of 0.999996)
    "fp16": Tolerance("fp16", rtol=1e-2, atol=1e-3, max_mismatch=1e-2, min_cosine=0.999, scale=5e-3),
    # bfloat16 keeps 8 bits of mantissa to float16's 11: 8x float16's rounding
    "bf16": Tolerance("bf16", rtol=5e-2, atol=1e-2, max_mismatch=1e-2, min_cosine=0.999, scale=4e-2),
    "int8": Tolerance("int8", rtol=0.1, atol=0.05, max_mismatch=0.05, min_cosine=0.99, min_top1=0.9),
    # int4 weights: judged by cosine and top-1 only (half the logits off by 20% is normal at a cosine of 0.99)
    "int4": Tolerance("int4", rtol=0.2, atol=0.1, max_mismatch=1.0, min_cosine=0.98, min_top1=0.8),
    # static int8: one activation scale fixed at calibration leaves small outputs far off in relative
    # terms (a 64-wide layer: 12% of them beyond int8's atol at a cosine of 0.9999); cosine and top-1 judge
    "int8-static": Tolerance("int8-static", rtol=0.1, atol=0.05, max_mismatch=1.0, min_cosine=0.99, min_top1=0.9),
}


def tolerance(name: str = "fp32", *, rtol: float | None = None, atol: float | None = None,
              max_mismatch: float | None = None, min_cosine: float | None = None) -> Tolerance:
    """A preset by name, or `custom` (fp32 with the given overrides); overrides apply to presets too."""
    if name == "custom":
        base = TOLERANCES["fp32"]
    elif name in TOLERANCES:
        base = TOLERANCES[name]
    else:
        raise InputError(f"unknown tolerance {name!r} (choose from {', '.join(TOLERANCES)}, custom)")
    overrides = {key: value for key, value in
                 dict(rtol=rtol, atol=atol, max_mismatch=max_mismatch, min_cosine=min_cosine).items()
                 if value is not None}
    if name == "custom" and not overrides:
        raise InputError("--tolerance custom needs at least one of --rtol, --atol, --max-mismatch, --min-cosine")
    for key, value in overrides.items():
        _check_bound(key, value)
    return dataclasses.replace(base, name=name, **overrides)


_BOUNDS = {"rtol": (0.0, math.inf), "atol": (0.0, math.inf), "max_mismatch": (0.0, 1.0), "min_cosine": (-1.0, 1.0)}


def _check_bound(key: str, value: float) -> None:
    low, high = _BOUNDS[key]
    if not (isinstance(value, (int, float)) and low <= value <= high) or math.isnan(value):
        flag = "--" + key.replace("_", "-")
        upper = "" if math.isinf(high) else f" and at most {high:g}"
        raise InputError(f"{flag} {value!r} is out of range: it must be at least {low:g}{upper}")


@dataclasses.dataclass
class OutputComparison:
    name: str
    shape: list[int]
    dtype: str
    max_abs_error: float
    max_rel_error: float | None  # over elements above the tolerance's atol; None when none is
    cosine: float
    mismatch_fraction: float
    top1_agreement: float | None
    top5_agreement: float | None
    passed: bool
    reason: str = ""
    noise: float | None = None  # the reference's own fp32 noise on this output, where it was measured
    outside: int = 0            # elements beyond the tolerance

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _looks_like_logits(name: str, array: np.ndarray) -> bool:
    """Class scores, where top-k agreement means something: [batch, classes], or [batch, positions,
    classes] named so (a language model's logits). A detection head's [1, 4 + classes, anchors] is
    not: top-1 over 2,100 anchors is noise (cosine judges it)."""
    if array.dtype.kind != "f" or array.ndim < 2 or array.shape[-1] < 2:
        return False
    return array.ndim == 2 or (array.ndim == 3 and any(word in name.lower() for word in ("logit", "prob", "class")))


def _topk_agreement(expected: np.ndarray, actual: np.ndarray, k: int) -> float | None:
    classes = expected.shape[-1]
    if classes < k:
        return None
    want = expected.reshape(-1, classes)
    got = actual.reshape(-1, classes)
    if k == 1:
        return float(np.mean(np.argmax(want, axis=1) == np.argmax(got, axis=1)))
    top_want = np.argpartition(-want, k - 1, axis=1)[:, :k]
    top_got = np.argpartition(-got, k - 1, axis=1)[:, :k]
    hits = [len(set(a) & set(b)) / k for a, b in zip(top_want.tolist(), top_got.tolist())]
    return float(np.mean(hits))


def compare(name: str, expected: Any, actual: Any, tol: Tolerance, noise: float | None = None) -> OutputComparison:
    """Compare one output of the reference run with the same output of the candidate run; `noise`:
    the reference's own fp32 noise on it (module docstring), None where it was not measured."""
    expected, actual = np.asarray(expected), np.asarray(actual)
    if expected.shape != actual.shape or expected.dtype != actual.dtype:
        return OutputComparison(name, list(expected.shape), str(expected.dtype), math.inf, math.inf,
                                0.0, 1.0, None, None, False,
                                f"shape/dtype {list(actual.shape)} {actual.dtype} differs from "
                                f"{list(expected.shape)} {expected.dtype}")
    if expected.size == 0:
        return OutputComparison(name, list(expected.shape), str(expected.dtype), 0.0, 0.0, 1.0, 0.0,
                                None, None, True)
    floating = expected.dtype.kind in "fc"
    want = expected.astype(np.float64) if expected.dtype.kind != "c" else expected.astype(np.complex128)
    got = actual.astype(want.dtype)
    both_nan = np.isnan(want) & np.isnan(got) if floating else np.zeros(want.shape, bool)
    same_inf = np.isinf(want) & (want == got) if floating else np.zeros(want.shape, bool)
    special = both_nan | same_inf
    difference = np.where(special, 0.0, np.abs(want - got))
    difference = np.where(np.isnan(difference), np.inf, difference)
    magnitude = np.abs(want)
    if floating:
        allowed = tol.atol + tol.rtol * np.where(np.isfinite(magnitude), magnitude, 0)
        largest = float(np.max(magnitude, where=np.isfinite(magnitude), initial=0.0))
        if noise:
            allowed = np.maximum(allowed, min(NOISE_FACTOR * noise, tol.rtol * largest))
        if tol.scale:
            allowed = np.maximum(allowed, tol.scale * largest)
        outside = difference > allowed
    else:
        outside = difference > 0
    max_abs = float(np.max(difference))
    # relative to values that are not ~0 (a sigmoid map's 1e-300s would make it 1e+300): above atol
    significant = np.isfinite(magnitude) & (magnitude > max(tol.atol, np.finfo(np.float64).tiny))
    max_rel = float(np.max(difference[significant] / magnitude[significant])) if significant.any() else None
    finite = np.isfinite(want) & np.isfinite(got)
    a, b = np.where(finite, want, 0).ravel(), np.where(finite, got, 0).ravel()
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    cosine = float(np.real(np.vdot(a, b)) / norms) if norms else (1.0 if max_abs == 0 else 0.0)
    mismatch, count = float(np.mean(outside)), int(np.count_nonzero(outside))
    top1 = top5 = None
    if _looks_like_logits(name, expected):
        top1 = _topk_agreement(want, got, 1)
        top5 = _topk_agreement(want, got, 5)
    reasons = []
    if mismatch > tol.max_mismatch:
        share = f"{count:,} of {outside.size:,} elements" if count < 100 else f"{mismatch:.2%} of elements"
        beyond = f" or {NOISE_FACTOR}x the reference's own fp32 noise ({noise:.3g})" if noise else ""
        beyond += f" or {tol.scale:g} of the output's largest" if tol.scale else ""
        reasons.append(f"{share} outside rtol={tol.rtol:g} atol={tol.atol:g}{beyond}")
    if floating and cosine < tol.min_cosine:
        reasons.append(f"cosine {cosine:.5f} < {tol.min_cosine}")
    if top1 is not None and top1 < tol.min_top1:
        reasons.append(f"top-1 agreement {top1:.2%} < {tol.min_top1:.0%}")
    return OutputComparison(name, list(expected.shape), str(expected.dtype), max_abs, max_rel, cosine,
                            mismatch, top1, top5, not reasons, "; ".join(reasons), noise, count)
