"""Sizes for people: byte counts in binary units, named as such (KiB, MiB, GiB)."""

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
