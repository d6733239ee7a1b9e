"""Latency baselines for CI: compare a bench run with a saved one, model by model and shape by shape.

A baseline is a bench result saved as JSON (`--save-baseline`, or any `--json` output).
Rows are matched by model label (or, failing that, by file name) and input shapes; a row
whose p50 grew by more than the allowed fraction is a regression. Settings that make the
two runs incomparable (another CPU, thread count, ONNX Runtime version …) are named.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

from graphopt.errors import InputError
from graphopt.runtime.bench import BenchResult
from graphopt.runtime.machine import COMPARABLE_FIELDS

FORMAT_PREFIX = "graphopt-bench/"


@dataclasses.dataclass
class BaselineRow:
    model: str
    shapes: str
    baseline_p50_ms: float | None
    current_p50_ms: float | None
    status: str  # ok, regressed, improved, new (not in the baseline), missing (not in this run)

    @property
    def change(self) -> float | None:
        """Relative change of p50: +0.05 is 5% slower than the baseline."""
        if self.baseline_p50_ms is None or self.current_p50_ms is None or not self.baseline_p50_ms:
            return None
        return self.current_p50_ms / self.baseline_p50_ms - 1.0

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "change": self.change}


@dataclasses.dataclass
class BaselineComparison:
    baseline: str
    max_regression: float
    rows: list[BaselineRow]
    setting_differences: list[str]

    @property
    def regressions(self) -> list[BaselineRow]:
        return [row for row in self.rows if row.status == "regressed"]

    @property
    def passed(self) -> bool:
        return not self.regressions

    def summary(self) -> str:
        compared = sum(1 for row in self.rows if row.change is not None)
        if self.passed:
            return (f"no p50 regression beyond {self.max_regression:.1%} against {self.baseline} "
                    f"({compared} model/shape pair(s) compared)")
        worst = max(self.regressions, key=lambda row: row.change or 0.0)
        return (f"{len(self.regressions)} p50 regression(s) beyond {self.max_regression:.1%} against "
                f"{self.baseline}; worst {worst.model} at {worst.shapes}: {worst.baseline_p50_ms:.3f} ms "
                f"→ {worst.current_p50_ms:.3f} ms ({worst.change:+.1%})")

    def to_dict(self) -> dict[str, Any]:
        return {"baseline": self.baseline, "max_regression": self.max_regression, "passed": self.passed,
                "setting_differences": self.setting_differences, "rows": [row.to_dict() for row in self.rows]}

    def to_markdown(self) -> str:
        lines = [f"Against baseline {self.baseline} (max regression {self.max_regression:.1%}):", "",
                 "| model | inputs | baseline p50 ms | p50 ms | change | verdict |", "|---|---|---:|---:|---:|---|"]
        for row in self.rows:
            change = "-" if row.change is None else f"{row.change:+.1%}"
            lines.append(f"| {row.model} | {row.shapes} | {_ms(row.baseline_p50_ms)} | {_ms(row.current_p50_ms)} "
                         f"| {change} | {row.status} |")
        lines.extend(f"- note: {difference}" for difference in self.setting_differences)
        return "\n".join(lines) + "\n"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def parse_threshold(text: str) -> float:
    """`5%` as a fraction, 0.05 (the % is required: a bare 0.05 could mean either)."""
    stripped = text.strip()
    try:
        if not stripped.endswith("%"):
            raise ValueError
        value = float(stripped[:-1]) / 100.0
    except ValueError:
        raise InputError(f"--max-regression {text!r} must be a percentage such as 5%") from None
    if not math.isfinite(value) or value < 0:
        raise InputError(f"--max-regression {text!r} must be a percentage of at least 0%")
    return value


def load(path: str | os.PathLike) -> dict[str, Any]:
    """A saved bench result, checked enough to compare against."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: no such baseline file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{path}: not a readable JSON baseline ({error})") from None
    if not isinstance(data, dict) or not str(data.get("format", "")).startswith(FORMAT_PREFIX):
        raise InputError(f"{path}: not a graphopt bench result (save one with --save-baseline or --json)")
    if not _well_formed(data):
        raise InputError(f"{path}: a damaged graphopt bench result (each case needs input_shapes and "
                         "models with a model name and a numeric p50_ms)")
    return data


def _well_formed(data: dict[str, Any]) -> bool:
    cases = data.get("cases")
    if not isinstance(cases, list) or not cases:
        return False
    for case in cases:
        if not isinstance(case, dict) or not isinstance(case.get("input_shapes"), dict) \
                or not isinstance(case.get("models"), list):
            return False
        for entry in case["models"]:
            if not isinstance(entry, dict) or not isinstance(entry.get("model"), str) \
                    or not isinstance(entry.get("p50_ms"), (int, float)):
                return False
    return True


def shapes_key(shapes: dict[str, list[int]]) -> str:
    return ", ".join(f"{name} {'x'.join(map(str, shape)) or 'scalar'}" for name, shape in sorted(shapes.items()))


def compare(current: BenchResult, baseline: dict[str, Any], max_regression: float,
            name: str = "the baseline") -> BaselineComparison:
    """Each (model, shapes) of this run against the baseline's p50."""
    saved: dict[tuple[str, str], float] = {}
    for case in baseline["cases"]:
        key = shapes_key(case["input_shapes"])
        for entry in case["models"]:
            saved[(entry["model"], key)] = entry["p50_ms"]
    by_file = _unique_by_file_name(model for model, _ in saved)
    rows, used = [], set()
    for case in current.cases:
        key = shapes_key(case.input_shapes)
        for entry in case.models:
            model = entry.model if (entry.model, key) in saved else by_file.get(Path(entry.model).name, entry.model)
            before = saved.get((model, key))
            if before is None:
                rows.append(BaselineRow(entry.model, key, None, entry.p50_ms, "new"))
                continue
            used.add((model, key))
            row = BaselineRow(entry.model, key, before, entry.p50_ms, "ok")
            if row.change is not None and row.change > max_regression:
                row.status = "regressed"
            elif row.change is not None and row.change < -max_regression:
                row.status = "improved"
            rows.append(row)
    rows.extend(BaselineRow(model, key, p50, None, "missing") for (model, key), p50 in saved.items()
                if (model, key) not in used)
    if not used:
        raise InputError(f"nothing to compare: none of this run's models at these shapes is in {name} "
                         f"(it has {', '.join(sorted({model for model, _ in saved}))})")
    return BaselineComparison(name, max_regression, rows, _setting_differences(baseline.get("metadata", {}),
                                                                               current.metadata))


def _unique_by_file_name(models) -> dict[str, str]:
    found: dict[str, list[str]] = {}
    for model in dict.fromkeys(models):
        found.setdefault(Path(model).name, []).append(model)
    return {file_name: labels[0] for file_name, labels in found.items() if len(labels) == 1}


def _setting_differences(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    return [f"{field} was {before.get(field)!r} in the baseline, {after.get(field)!r} now"
            for field in COMPARABLE_FIELDS if field in before and before.get(field) != after.get(field)]
