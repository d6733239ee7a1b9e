"""`graphopt run`'s report.md: the export, the passes, validation, quantization, latency, accuracy.

Drawn with the same tables the command line prints (graphopt.render).
"""

from __future__ import annotations

from graphopt import render
from graphopt.units import time_ratio_text


def run_markdown(result, preset: str) -> str:
    export = result.export
    lines = [f"# graphopt run: {result.name}", "",
             f"Exported with the {export.exporter} exporter at opset {export.opset}; parity with torch: max abs "
             f"error {export.max_abs_error:.3g} over {len(export.parity)} input shape set(s).",
             *(f"- note: {note}" for note in export.notes), ""]
    if result.optimize is not None:
        report = result.optimize.report
        lines += [f"## Passes ({preset}, target {report.target}, {report.iterations} iteration(s), "
                  f"{report.seconds * 1000:.0f} ms)", "", render.markdown(render.passes_table(report)), "",
                  *(f"- {line}" for line in render.skip_lines(report)),
                  *(f"- warning: {warning}" for warning in result.optimize.warnings), ""]
    lines += ["## Validation", ""]
    if result.validation is None:
        lines += ["not run", ""]
    else:
        lines += [f"**{result.validation.summary()}**", "", render.markdown(render.validation_table(result.validation))]
        if result.validation.divergence is not None:
            lines += ["", result.validation.divergence.describe()]
        lines.append("")
    lines += _lossy(result)
    lines += _latency(result)
    if result.accuracy:
        lines += ["## Accuracy on the held-out test set", "",
                  *(f"- {label}: {value:.2%}" for label, value in result.accuracy.items()), ""]
    return "\n".join(lines)


def _lossy(result) -> list[str]:
    """A section per lossy model (quantized, reduced precision): what was done, its validation, or
    why it was not written."""
    lines: list[str] = []
    for title, done, refusal in result.lossy():
        lines += [f"## {title}", ""]
        if done is not None:
            lines += [f"- {line}" for line in render.lossy_lines(done)]
            lines.append(f"- validation against the export: **{done.validation.summary()}**")
            cosines = [output.cosine for run in done.validation.input_sets for output in run.outputs]
            lines.append(f"- worst output cosine {min(cosines):.4f}")
        if refusal:
            lines.append(f"**not written: {refusal}**")
        lines.append("")
    return lines


def _latency(result) -> list[str]:
    if result.bench is None:
        return []
    models = result.bench.models
    p50s = " → ".join(f"{model.p50_ms:.3f} ms" for model in models)
    ratios = ", ".join(f"{model.model} {time_ratio_text(ratio)}"
                       for model, ratio in zip(models[1:], result.bench.ratios()[1:]))
    return [f"## Latency ({' vs '.join(model.model for model in models)})", "",
            f"p50 {p50s} at {result.bench.cases[0].shapes_text()}: against the exported model, {ratios} "
            "(p50 against p50). All ran in this process in turns, each alone on the "
            "machine while timed, with the session settings below.", "",
            *([f"**the optimized model was not written: {result.speed_refusal}**", ""] if result.speed_refusal else []),
            result.bench.to_markdown(), "![latency](latency.png)", ""]
