"""Where the command line writes: stdout for results, stderr for errors and progress, one renderer.

Markup is off (model, input, dim and pass names are user data: "[batch, seq]" is not a style),
and pipes and logs get wide tables and unwrapped lines.
"""

from __future__ import annotations

import shutil
import sys

from rich.console import Console
from rich.table import Table as RichTable

from graphopt import render
from graphopt.runtime.validate import ValidationResult

WIDE = 140
out = Console(highlight=False, markup=False)
err = Console(stderr=True, highlight=False, markup=False)


def bind() -> None:
    """The consoles follow the current stdout/stderr; logs and pipes get wide tables."""
    global out, err
    width = None if sys.stdout.isatty() else max(WIDE, shutil.get_terminal_size().columns)
    out = Console(highlight=False, markup=False, width=width)
    err = Console(stderr=True, highlight=False, markup=False)


def table(data: render.Table) -> None:
    drawn = RichTable(title=data.title)
    for column in data.header:
        drawn.add_column(column, justify="right" if column in data.numeric else "left")
    for row in data.rows:
        drawn.add_row(*row)
    out.print(drawn)


def lines(texts: list[str], *, to_err: bool = False) -> None:
    for text in texts:
        (err if to_err else out).print(text, soft_wrap=True)


def validation(result: ValidationResult, *, verbose: bool = False) -> None:
    table(render.validation_table(result, per_set=verbose))
    lines(render.validation_lines(result))


def warnings(texts: list[str]) -> None:
    lines([f"graphopt: warning: {text}" for text in texts], to_err=True)
