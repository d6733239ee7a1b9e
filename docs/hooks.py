"""MkDocs hooks: the generated reference in place of `<!-- graphopt:... -->` markers
(graphopt.reference), and the benchmark plots of benchmarks/results/ as files of the site."""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File

from graphopt.reference import expand_markers

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def on_page_markdown(markdown, page, config, files):
    return expand_markers(markdown)


def on_files(files, config):
    for plot in sorted(RESULTS.glob("*.png")):
        files.append(File.generated(config, f"benchmarks/results/{plot.name}", abs_src_path=str(plot)))
    return files
