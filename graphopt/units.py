"""Quantities for people: byte counts in binary units, named as such (KiB, MiB, GiB), and speed
comparisons in one convention ("1.85x faster", "1.20x slower") wherever a command prints one."""

from __future__ import annotations


def human_bytes(count: int | None) -> str:
    """`1536` -> `1.5 KiB`; None (unknown) -> `-`."""
    if count is None:
        return "-"
    if abs(count) < 1024:
        return f"{count} B"
    value = count / 1024
    for unit in ("KiB", "MiB"):
        if abs(value) < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def speed_text(speedup: float) -> str:
    """'1.85x faster' or '1.20x slower' (`speedup` = the reference's time over this one's)."""
    if speedup != speedup or speedup <= 0:  # NaN: nothing to compare against
        return "-"
    return f"{speedup:.2f}x faster" if speedup >= 1.0 else f"{1.0 / speedup:.2f}x slower"


def time_ratio_text(ratio: float) -> str:
    """A time ratio (this one's time over the reference's) in the same words as speed_text."""
    return speed_text(1.0 / ratio) if ratio and ratio == ratio else "-"
