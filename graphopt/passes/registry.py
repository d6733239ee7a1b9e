"""The pass contract and the registry that maps a pass's name to its class and options.

A pass is an onnx-ir in-place pass with a registered name, a one-line summary (its
docstring), typed options (its constructor's keyword arguments) and an opset window.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import logging
import typing
from typing import Any, ClassVar

import onnx_ir as ir

from graphopt.errors import InputError

logger = logging.getLogger(__name__)

TARGETS = ("portable", "ort")


class Pass(ir.passes.InPlacePass):
    """Base of graphopt passes: a pure graph rewrite that records why it skipped anything."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    min_opset: ClassVar[int] = 1
    targets: ClassVar[frozenset[str]] = frozenset(TARGETS)

    def __init__(self) -> None:
        super().__init__()
        self.skipped: list[str] = []

    def skip(self, reason: str) -> None:
        """Record a case the pass left alone, for the report."""
        logger.debug("%s skipped: %s", self.name, reason)
        self.skipped.append(reason)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


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


def pass_names() -> list[str]:
    return sorted(_REGISTRY)


def pass_class(name: str) -> type[Pass]:
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else "; `graphopt passes` lists them"
        raise InputError(f"unknown pass {name!r}{hint}") from None


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
