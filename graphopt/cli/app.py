"""The `graphopt` command group and its entry point: every expected failure is one line and an exit code.

Exit codes: 0 ok, 1 validation failed, a guard refused the result or a pass broke the model,
2 bad input or usage, 130 interrupted.
"""

from __future__ import annotations

import logging
import sys

import click

from graphopt.cli import console
from graphopt.errors import GraphoptError
from graphopt.passes.plugins import load_plugin


@click.group(help="Optimize ONNX models and prove they still compute the same thing.",
             context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="graphopt")
@click.option("--plugin", "plugin_specs", multiple=True, metavar="MODULE_OR_FILE",
              help="Import a module or a .py file that registers passes (repeatable).")
def app(plugin_specs: tuple[str, ...]) -> None:
    for spec in plugin_specs:
        load_plugin(spec)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, turning every expected failure into one line and an exit code."""
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    console.bind()
    try:
        result = app.main(args=argv, prog_name="graphopt", standalone_mode=False)
    except click.exceptions.Exit as done:
        return done.exit_code
    except click.exceptions.UsageError as usage:
        console.err.print(f"graphopt: error: {usage.format_message()}", soft_wrap=True)
        return 2
    except (click.exceptions.Abort, KeyboardInterrupt):
        console.err.print("graphopt: interrupted; nothing was written")
        return 130
    except GraphoptError as error:
        console.err.print(f"graphopt: error: {error}", soft_wrap=True)
        return error.exit_code
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
