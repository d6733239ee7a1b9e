"""The `graphopt` command: subcommands mirror the Python API; errors are one line and an exit code.

app.py holds the group and the entry point; each module below registers its commands on it.
"""

from graphopt.cli import distill, measure, models, optimize  # noqa: F401  (they register the commands)
from graphopt.cli.app import app, main

__all__ = ["app", "main"]
