"""Markdown reference of the command line and the passes, generated from their definitions.

The documentation site renders these (docs/hooks.py), so the options tables cannot drift from
`graphopt --help` and the passes reference cannot drift from the registry.
"""

from __future__ import annotations

import inspect
import re
import sys
from collections.abc import Iterator

import click

from graphopt.passes import create_pass, pass_class, pass_names, pass_options
from graphopt.pipeline import PRESET_SUMMARIES, PRESETS


def commands() -> dict[str, click.Command]:
    """Every `graphopt` subcommand by name."""
    from graphopt.cli import app

    return dict(sorted(app.commands.items()))


def command(name: str | None) -> click.Command:
    """A subcommand by name, or the `graphopt` group itself for None."""
    from graphopt.cli import app

    return app if name is None else commands()[name]


def command_params(name: str | None) -> list[click.Parameter]:
    """A subcommand's (or the group's) options and arguments, `--help` excluded."""
    return [param for param in command(name).params if param.name != "help"]


def option_flags(param: click.Option) -> list[str]:
    """Every spelling of an option: `--validate`, `--no-validate`, `-o`, `--output`."""
    return [*param.opts, *param.secondary_opts]


def usage(name: str) -> str:
    """`graphopt NAME [OPTIONS] ARGS`, as `--help` prints it."""
    from graphopt.cli import app

    parent = click.Context(app, info_name="graphopt")
    context = click.Context(commands()[name], info_name=name, parent=parent)
    return " ".join(commands()[name].collect_usage_pieces(context)).join([f"graphopt {name} ", ""])


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _type_text(param: click.Option) -> str:
    if param.is_flag and not param.secondary_opts:
        return "flag"
    if param.is_flag:
        return "on/off"
    if isinstance(param.type, click.Choice):
        return " \\| ".join(f"`{choice}`" for choice in param.type.choices)
    metavar = param.metavar or param.type.name.upper()
    return f"`{metavar}`" + (" (repeatable)" if param.multiple else "")


def _default_text(param: click.Option) -> str:
    default = param.to_info_dict()["default"]  # None where unset (click's own sentinel otherwise)
    if param.multiple or default is None or (param.is_flag and not param.secondary_opts and default is False):
        return ""
    if param.is_flag and param.secondary_opts:
        return f"`{(param.opts if default else param.secondary_opts)[0]}`"
    return f"`{default}`"


def options_table(name: str | None) -> str:
    """The options of `graphopt NAME` as a Markdown table: flags, values, default, help."""
    lines = ["| option | value | default | what it does |", "|---|---|---|---|"]
    for param in command_params(name):
        if isinstance(param, click.Option):
            flags = " / ".join(f"`{flag}`" for flag in option_flags(param))
            lines.append(f"| {flags} | {_type_text(param)} | {_default_text(param)} | {_cell(param.help or '')} |")
    return "\n".join(lines)


def command_markdown(name: str) -> str:
    """Usage, the command's own description and its options table."""
    command = commands()[name]
    description = inspect.cleandoc(command.help or "")
    return f"```text\n{usage(name)}\n```\n\n{description}\n\n{options_table(name)}\n"


def _pass_modules() -> dict[str, list[str]]:
    """Registered pass names grouped by the module that defines them, in the order the presets run
    them (passes in no preset last, by name)."""
    order = list(dict.fromkeys(name for names in PRESETS.values() for name in names))
    names = sorted(pass_names(), key=lambda name: (order.index(name) if name in order else len(order), name))
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(pass_class(name).__module__, []).append(name)
    return groups


def _option_rows(name: str) -> Iterator[str]:
    for option in pass_options(pass_class(name)):
        type_name = getattr(option.type, "__name__", str(option.type))
        default = "" if option.default is inspect.Parameter.empty else f"`{option.default!r}`"
        yield f"| `{option.name}` | {type_name} | {default} |"


def pass_markdown(name: str) -> str:
    """One pass: summary, opset floor, targets, its docstring and its options."""
    cls = pass_class(name)
    doc = inspect.getdoc(cls) or ""
    body = "\n".join(doc.splitlines()[1:]).strip()
    targets = ", ".join(f"`{target}`" for target in sorted(cls.targets))
    per_target = " (emits different ops per target)" if cls.target_aware else ""
    presets = [preset for preset, names in PRESETS.items() if name in names]
    lines = [f"### `{name}`", "", cls.summary, "",
             f"opset ≥ {cls.min_opset} · targets {targets}{per_target} · "
             + (f"presets {', '.join(f'`{preset}`' for preset in presets)}" if presets else "in no preset")
             + f" · `{cls.__module__}.{cls.__name__}`", ""]
    if cls.lossy:
        lines += [_lossy_line(name), ""]
    if body:
        lines += [body, ""]
    rows = list(_option_rows(name))
    if rows:
        lines += ["| option | type | default |", "|---|---|---|", *rows, ""]
    return "\n".join(lines)


def _lossy_line(name: str) -> str:
    """What a lossy pass declares to the lossy pipeline, with its default options."""
    pass_ = create_pass(name)
    tolerance = getattr(pass_.tolerance, "name", pass_.tolerance)
    ladder = " → ".join(f"`{form}`" for form in pass_.ladder())
    return (f"Lossy: judged at `{tolerance}` without a budget; under one, the fallback steps the most sensitive "
            f"layers along {ladder} until it holds, moving the fewest {pass_.cost}; the {pass_.objective} guard "
            f"judges the result; a layer the pass leaves alone stays `{pass_.untouched}`.")


def passes_markdown() -> str:
    """Every registered pass, grouped by module under the module's docstring (where the math lives)."""
    sections = []
    for module, names in _pass_modules().items():
        doc = inspect.getdoc(sys.modules[module]) or ""
        sections.append(f"## {module}\n\n{doc}\n\n" + "\n".join(pass_markdown(name) for name in names))
    return "\n".join(sections)


# a marker is a line of its own (a page may quote the syntax inline)
MARKER = re.compile(r"^<!-- graphopt:(command|global|passes|presets|tolerances|settings)(?: ([\w-]+))? -->$", re.M)


def expand_markers(markdown: str) -> str:
    """A page with its `<!-- graphopt:command NAME -->`, `<!-- graphopt:global -->` (the options
    before the command), `<!-- graphopt:passes -->`, `<!-- graphopt:presets -->` and
    `<!-- graphopt:tolerances -->` markers replaced by the generated reference."""
    def render(match: re.Match) -> str:
        kind, argument = match.groups()
        if kind == "command":
            if argument not in commands():
                raise ValueError(f"no graphopt command {argument!r} (marker {match.group(0)})")
            return command_markdown(argument)
        if kind == "global":
            return options_table(None)
        if kind == "settings":
            return settings_markdown(argument)
        return {"passes": passes_markdown, "presets": presets_markdown, "tolerances": tolerances_markdown}[kind]()

    return MARKER.sub(render, markdown)


def presets_markdown() -> str:
    """The presets: what each runs, and its pass list as the latest of the longest earlier presets it
    extends plus its own passes."""
    lines = ["| preset | what it runs | passes |", "|---|---|---|"]
    for index, (preset, summary) in enumerate(PRESET_SUMMARIES.items()):
        lines.append(f"| `{preset}` | {_cell(summary)} | {_preset_passes(list(PRESETS)[:index], PRESETS[preset])} |")
    return "\n".join(lines)


def _preset_passes(earlier: list[str], names: tuple[str, ...]) -> str:
    bases = [(len(PRESETS[base]), position, base) for position, base in enumerate(earlier)
             if PRESETS[base] and names[:len(PRESETS[base])] == PRESETS[base]]
    own = ", ".join(f"`{name}`" for name in names[max(bases)[0] if bases else 0:])
    if not bases:
        return own or "none"
    base = max(bases)[2]
    return f"`{base}` + {own}" if own else f"the same as `{base}`"


def tolerances_markdown() -> str:
    """The named tolerances and their bounds."""
    from graphopt.runtime.compare import TOLERANCES

    lines = ["| tolerance | rtol | atol | or of the output's largest | elements allowed outside | min cosine | "
             "min top-1 agreement |", "|---|---:|---:|---:|---:|---:|---:|"]
    for tol in TOLERANCES.values():
        mismatch = "any" if tol.max_mismatch >= 1 else f"{tol.max_mismatch:.1%}"
        lines.append(f"| `{tol.name}` | {tol.rtol:g} | {tol.atol:g} | {f'{tol.scale:.1%}' if tol.scale else '-'} | "
                     f"{mismatch} | {tol.min_cosine or '-'} | {f'{tol.min_top1:.0%}' if tol.min_top1 else '-'} |")
    return "\n".join(lines)


def settings_classes() -> dict:
    """The declared settings the API takes as keywords, by the name a page's marker uses."""
    from graphopt.compression import CompressSettings
    from graphopt.lossy import Budget
    from graphopt.quantization import QuantizeSettings

    from graphopt.train.loop import DistillSettings

    return {"quantize": QuantizeSettings, "compress": CompressSettings, "budget": Budget, "distill": DistillSettings}


def settings_markdown(name: str) -> str:
    """A settings class's keywords: name, type, default, command-line flag, help (graphopt.options)."""
    from graphopt import options

    lines = ["| keyword | type | default | flag | what it does |", "|---|---|---|---|---|"]
    for field, spec, hint in options.declared(settings_classes()[name]):
        type_name = getattr(hint, "__name__", str(hint)).replace("typing.", "")
        flag = f"`{options.flags(field, spec)}`" if spec.cli else "(API only)"
        lines.append(f"| `{field.name}` | {_cell(type_name)} | `{field.default!r}` | {flag} | {_cell(spec.help)} |")
    return "\n".join(lines)
