"""The registry that maps a pass's name to its class and options.

A pass (graphopt.passes.contract) is registered with a name, a one-line summary (its docstring's
first line), typed options (its constructor's keyword arguments) and an opset window.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import typing
from typing import Any

from graphopt.errors import InputError
from graphopt.passes.contract import TARGETS, LossyPass, Pass

__all__ = ["TARGETS", "LossyPass", "Pass", "PassOption", "create_pass", "option_from_text", "pass_class",
           "pass_names", "pass_options", "register", "unregister"]



@dataclasses.dataclass(frozen=True)
class PassOption:
    name: str
    type: type
    default: Any


_REGISTRY: dict[str, type[Pass]] = {}


def register(name: str, *, min_opset: int = 1, targets: tuple[str, ...] = TARGETS):
    """Class decorator: register a Pass subclass under `name` with its opset window."""

    def decorate(cls: type[Pass]) -> type[Pass]:
        if name in _REGISTRY:
            raise ValueError(f"pass {name!r} registered twice")
        doc = inspect.getdoc(cls) or ""
        if not doc.strip():
            raise ValueError(f"pass {cls.__name__} needs a one-line docstring")
        cls.name = name
        cls.summary = doc.strip().splitlines()[0]
        cls.min_opset = min_opset
        cls.targets = frozenset(targets)
        _REGISTRY[name] = cls
        return cls

    return decorate


def unregister(name: str) -> None:
    """Forget a registered pass (a plugin that failed half-way, a test's own pass)."""
    del _REGISTRY[name]


def pass_names() -> list[str]:
    """Every registered pass's name, installed plugins' included."""
    return sorted(_loaded_registry())


def pass_class(name: str) -> type[Pass]:
    """The class registered under `name`; an unknown name is an InputError with a hint."""
    try:
        return _loaded_registry()[name]
    except KeyError:
        from graphopt.passes import plugins  # here, not at the top: plugins imports this module

        close = difflib.get_close_matches(name, _REGISTRY, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else "; `graphopt passes` lists them"
        raise InputError(f"unknown pass {name!r}{hint}{plugins.missing_pass_note()}") from None


def _loaded_registry() -> dict[str, type[Pass]]:
    """The registry, after the installed plugins (`graphopt.passes` entry points) filled it in."""
    from graphopt.passes import plugins  # here, not at the top: plugins imports this module

    plugins.load_installed()
    return _REGISTRY


def pass_options(cls: type[Pass]) -> list[PassOption]:
    """The keyword options a pass takes, with their types and defaults."""
    hints = typing.get_type_hints(cls.__init__)
    options = []
    for parameter in inspect.signature(cls.__init__).parameters.values():
        if parameter.name == "self" or parameter.kind in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL):
            continue
        options.append(PassOption(parameter.name, hints.get(parameter.name, str), parameter.default))
    return options


def create_pass(name: str, options: dict[str, Any] | None = None) -> Pass:
    """Instantiate a registered pass, checking option names and types."""
    cls = pass_class(name)
    known = {option.name: option for option in pass_options(cls)}
    kwargs = {}
    for key, value in (options or {}).items():
        option = known.get(key)
        if option is None:
            valid = ", ".join(known) or "none"
            raise InputError(f"pass {name!r} has no option {key!r} (options: {valid})")
        kwargs[key] = _coerce(name, option, value)
    return cls(**kwargs)


def _coerce(pass_name: str, option: PassOption, value: Any) -> Any:
    expected = option.type
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is bool and not isinstance(value, bool):
        raise InputError(f"option {pass_name}.{option.name} must be true or false, got {value!r}")
    if expected is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise InputError(f"option {pass_name}.{option.name} must be an integer, got {value!r}")
    if expected in (float, str) and not isinstance(value, expected):
        raise InputError(
            f"option {pass_name}.{option.name} must be a {expected.__name__}, got {value!r}"
        )
    return value


_TRUE = ("true", "yes", "1")
_FALSE = ("false", "no", "0")


def option_from_text(pass_name: str, option: PassOption, text: str) -> Any:
    """An option's value from text (`--passes name:key=value`), converted to the option's type."""
    expected = option.type
    if expected is bool:
        if text.lower() in _TRUE + _FALSE:
            return text.lower() in _TRUE
        raise InputError(f"option {pass_name}.{option.name} must be true or false "
                         f"(or yes/no, 1/0), got {text!r}")
    if expected in (int, float):
        try:
            return expected(text)
        except ValueError:
            kind = "an integer" if expected is int else "a number"
            raise InputError(f"option {pass_name}.{option.name} must be {kind}, got {text!r}") from None
    if expected is str:
        return text
    type_name = getattr(expected, "__name__", expected)
    raise InputError(f"option {pass_name}.{option.name} ({type_name}) cannot be given as text; "
                     f"set it in a recipe")


@dataclasses.dataclass
class PassInfo:
    name: str
    summary: str
    min_opset: int
    targets: list[str]
    options: dict[str, object]
    target_aware: bool = False


def list_passes() -> list[PassInfo]:
    """Every registered pass with its summary, opset window, targets and option defaults."""
    infos = []
    for name in pass_names():
        cls = pass_class(name)
        options = {option.name: option.default for option in pass_options(cls)}
        infos.append(PassInfo(name, cls.summary, cls.min_opset, sorted(cls.targets), options, cls.target_aware))
    return infos
