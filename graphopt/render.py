"""One renderer per table — passes, validation, lossy outcome — for the terminal and Markdown alike.

Each table is data (Table: title, header, rows); graphopt.cli draws it with rich, `run`'s report
writes it as Markdown, and the JSON reports hold the records the rows come from.
"""

from __future__ import annotations

import dataclasses

from graphopt.lossy import LossyResult
from graphopt.pipeline import PipelineReport
from graphopt.runtime.validate import ValidationResult
from graphopt.units import human_bytes, speed_text

NOTE_LIMIT = 8  # skip reasons listed under a pass table; the report JSON holds them all


@dataclasses.dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[str]]
    numeric: tuple[str, ...] = ()  # the right-aligned columns


def _fmt(value, spec: str = ".3g") -> str:
    return "-" if value is None else format(value, spec)


def _change(before: int, after: int) -> str:
    return f"{after}" if before == after else f"{before} → {after}"


def _bytes_change(before: int, after: int) -> str:
    delta = after - before
    return human_bytes(after) + (f" ({delta:+,} B)" if delta else "")


def passes_table(report: PipelineReport) -> Table:
    rows = []
    for entry in report.passes:
        notes = list(entry.changes) if entry.ran else entry.skipped[:1]
        if entry.ran and entry.skipped:
            notes.append(f"{len(entry.skipped)} skipped")
        rows.append([str(entry.iteration), entry.name, _change(entry.nodes_before, entry.nodes_after),
                     _change(entry.initializers_before, entry.initializers_after),
                     _bytes_change(entry.parameter_bytes_before, entry.parameter_bytes_after),
                     f"{entry.seconds * 1000:.1f}", "yes" if entry.modified else "", "; ".join(notes)])
    return Table(f"passes (target {report.target}, {report.iterations} iteration(s))",
                 ["iter", "pass", "nodes", "initializers", "parameters", "ms", "changed", "notes"], rows, ("iter", "ms"))


def skip_lines(report: PipelineReport) -> list[str]:
    """What the passes left alone and why, once each, at most NOTE_LIMIT of them."""
    reasons = list(dict.fromkeys(f"{entry.name}: {reason}" for entry in report.passes if entry.ran
                                 for reason in entry.skipped))
    lines = [f"skipped {reason}" for reason in reasons[:NOTE_LIMIT]]
    if len(reasons) > NOTE_LIMIT:
        lines.append(f"… and {len(reasons) - NOTE_LIMIT} more (see --report)")
    return lines


PER_SET_LIMIT = 3  # input sets shown one by one; above it, the worst case per output (--verbose: all)


def validation_table(result: ValidationResult, per_set: bool = False) -> Table:
    """A row per input set and output; with more than PER_SET_LIMIT sets (and not `per_set`), a row
    per output holding its worst case over the sets."""
    rows = []
    if per_set or len(result.input_sets) <= PER_SET_LIMIT:
        for run in result.input_sets:
            shapes = ", ".join(f"{name} {shape}" for name, shape in run.shapes.items())
            rows += [[shapes, *_comparison_cells(output)] for output in run.outputs]
    else:
        by_output: dict[str, list] = {}
        for run in result.input_sets:
            for output in run.outputs:
                by_output.setdefault(output.name, []).append(output)
        for outputs in by_output.values():
            rows.append([f"worst of {len(outputs)} sets", *_comparison_cells(_worst(outputs))])
    return Table(f"validation ({result.tolerance.name})",
                 ["inputs", "output", "shape", "max abs", "max rel", "cosine", "mismatch", "top-1", "top-5", "verdict"],
                 rows, ("max abs", "max rel", "cosine", "mismatch", "top-1", "top-5"))


def _comparison_cells(output) -> list[str]:
    return [output.name, str(output.shape), _fmt(output.max_abs_error),
            "n/a" if output.max_rel_error is None else _fmt(output.max_rel_error), f"{output.cosine:.6f}",
            f"{output.mismatch_fraction:.2%}", _fmt(output.top1_agreement, ".1%"), _fmt(output.top5_agreement, ".1%"),
            "ok" if output.passed else f"FAIL {output.reason}"]


def _worst(outputs: list):
    """One comparison holding each measure's worst value over `outputs` (one output, several sets)."""
    def lowest(values):
        present = [value for value in values if value is not None]
        return min(present) if present else None

    failing = next((output for output in outputs if not output.passed), outputs[0])
    return dataclasses.replace(
        failing, max_abs_error=max(output.max_abs_error for output in outputs),
        max_rel_error=max((output.max_rel_error for output in outputs if output.max_rel_error is not None),
                          default=None),
        cosine=min(output.cosine for output in outputs),
        mismatch_fraction=max(output.mismatch_fraction for output in outputs),
        top1_agreement=lowest(output.top1_agreement for output in outputs),
        top5_agreement=lowest(output.top5_agreement for output in outputs),
        shape=failing.shape if len({str(output.shape) for output in outputs}) == 1 else "varies")


def validation_lines(result: ValidationResult) -> list[str]:
    lines = [result.summary()]
    if result.divergence is not None:
        lines += [f"  {result.divergence.describe()}", f"  {result.divergence.inputs_summary()}"]
    return lines


def lossy_lines(result: LossyResult) -> list[str]:
    """What the lossy passes did, what stayed as it was and why, the budget, the guards."""
    ratio = result.result_bytes / max(result.float_bytes, 1)
    lines = [f"{result.verb} {len(result.changed)} of {len(result.outcomes)} layer(s); parameters "
             f"{human_bytes(result.float_bytes)} → {human_bytes(result.result_bytes)} ({ratio:.3f}x)"]
    forms: dict[str, list] = {}
    for outcome in result.outcomes:
        if outcome.changed:
            forms.setdefault(outcome.form, []).append(outcome)
    for form, outcomes in forms.items():  # what each form means, where its layers all say the same
        details = {outcome.detail for outcome in outcomes}
        if len(details) == 1 and "" not in details:
            lines.append(f"{form}: {len(outcomes)} layer(s), {details.pop()}")
    untouched = {outcome.layer: outcome.form for outcome in result.outcomes if not outcome.changed}
    kept: dict[tuple[str, str], list[str]] = {}
    for name, reason in result.untouched:
        kept.setdefault((untouched[name], reason), []).append(name)
    for (form, reason), names in kept.items():  # a line per reason, not per layer
        shown = ", ".join(names[:NOTE_LIMIT]) + (f" … ({len(names)} in all)" if len(names) > NOTE_LIMIT else "")
        lines.append(f"kept {form}: {shown} ({reason})")
    planned = {outcome.layer: outcome.planned for outcome in result.outcomes}
    lines += [f"{form}, not {planned[name]}: {name} ({reason})" for name, form, reason in result.other_forms]
    fallback = result.fallback
    if fallback is not None:
        verdict = "met" if fallback.met else "NOT met (the best found)"
        first = fallback.trials[0]
        lines.append(f"budget {fallback.budget:.4f} {verdict}: score "
                     f"{_score(first.score, first.within_tolerance, fallback)} "
                     f"all {result.verb}, {fallback.score:.4f} with {len(fallback.backed_off)} layer(s) held back "
                     f"({len(fallback.trials)} trials)")
    if result.alternatives:
        lines.append(f"alternatives on the fallback's path (float p50 {result.alternatives[0].latency.float_ms:.3f} ms, "
                     "all timed in one bench run):")
        for item in result.alternatives:
            marks = ", ".join(mark for mark, on in (("chosen", item.chosen), ("Pareto", item.pareto)) if on)
            lines.append(f"  {len(item.backed_off)} held back: score {_score(item.score, item.within_tolerance, fallback)}, "
                         f"p50 {item.latency.result_ms:.3f} ms ({speed_text(item.latency.speedup)})"
                         f"{f'  [{marks}]' if marks else ''}")
    if result.latency is not None:
        lines.append(f"latency: {result.latency.describe()}")
    if result.size is not None:
        lines.append(f"size: {result.size.describe()}")
    return lines


def _score(value: float, within_tolerance: bool, fallback) -> str:
    """A score; one that meets the budget yet fails the tolerance's other checks (top-1) says so."""
    failing = fallback is not None and value >= fallback.budget and not within_tolerance
    return f"{value:.4f}" + (" (failing the tolerance's other checks)" if failing else "")


def markdown(table: Table) -> str:
    cells = [table.header, ["---:" if column in table.numeric else "---" for column in table.header], *table.rows]
    return "\n".join("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in cells)
