"""Options declared once: a settings dataclass field carries its default, type, help, choices and
check, and the command line's click options, the API's keywords and the docs' tables are made from
it (graphopt.cli.declared_options, settings_from, graphopt.reference)."""

from __future__ import annotations

import dataclasses
import difflib
import typing
from collections.abc import Callable
from typing import Any

from graphopt.errors import InputError


@dataclasses.dataclass(frozen=True)
class Declared:
    help: str
    flag: str = ""  # "--per-channel/--per-tensor", "--int8": the command line's spelling (default --field-name)
    choices: tuple = ()
    metavar: str = ""
    check: Callable[[Any], str] | None = None  # the value's problem in a user's words, or ""
    cli: bool = True  # False: an API keyword only (data, not a flag)


def option(default: Any, help: str, **declared: Any) -> Any:
    """A settings field declared for the command line, the API and the docs."""
    return dataclasses.field(default=default, metadata={"option": Declared(help, **declared)})


def declared(cls: type) -> list[tuple[dataclasses.Field, Declared, Any]]:
    """(field, declaration, type) of every declared field of a settings class, in order."""
    hints = typing.get_type_hints(cls)
    return [(field, field.metadata["option"], hints[field.name]) for field in dataclasses.fields(cls)
            if "option" in field.metadata]


def flags(field: dataclasses.Field, spec: Declared) -> str:
    return spec.flag or "--" + field.name.replace("_", "-")


def settings_from(cls: type, options: dict[str, Any]):
    """An instance of `cls` from keyword options, every one checked: an unknown name or a bad value
    is one InputError in the command line's words."""
    known = {field.name: (field, spec) for field, spec, _ in declared(cls)}
    for name in options:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f" (options: {', '.join(known)})"
            raise InputError(f"unknown option {name!r}{hint}")
    settings = cls(**{name: tuple(value) if isinstance(value, list) else value for name, value in options.items()})
    check_fields(settings)
    return settings


def check_fields(settings) -> None:
    """Every declared field's choices and check, or one InputError naming the flag and the value."""
    for field, spec, _ in declared(type(settings)):
        value = getattr(settings, field.name)
        flag = flags(field, spec).split("/")[0]
        if spec.choices and value not in spec.choices and value is not None:
            raise InputError(f"{flag} {value!r}: choose from {', '.join(map(str, spec.choices))}")
        problem = spec.check(value) if spec.check is not None and value is not None else ""
        if problem:
            raise InputError(f"{flag} {value}: {problem}")


def between(low: float, high: float, *, open_low: bool = False, open_high: bool = False) -> Callable[[Any], str]:
    """A check: the value lies in [low, high] (or the open ends)."""
    def check(value: float) -> str:
        below = value <= low if open_low else value < low
        above = value >= high if open_high else value > high
        return f"it must be between {low:g} and {high:g}" if below or above else ""

    return check
