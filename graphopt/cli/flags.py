"""The option groups commands share: runtime flags, tolerance, inputs, model source, and the click
options made from declared settings (graphopt.options)."""

from __future__ import annotations

import functools
import types
import typing
from pathlib import Path

import click

from graphopt import options
from graphopt.runtime.compare import TOLERANCES
from graphopt.runtime.compare import tolerance as make_tolerance
from graphopt.runtime.options import RuntimeOptions
from graphopt.runtime.providers import EP_CHOICES, EXECUTION_MODES, OPT_LEVELS, parse_key_values

RUNTIME_FLAGS = ("ep", "device_id", "threads", "opt_level", "provider_option", "inter_op", "execution_mode",
                 "spinning", "session_config")
TARGET_HELP = "portable: standard ONNX ops only (any runtime); ort: may use ONNX Runtime's com.microsoft ops."


def apply(command, decorators):
    for decorator in reversed(decorators):
        command = decorator(command)
    return command


def runtime(command):
    """The runtime flags, handed to the command as one `runtime=RuntimeOptions(...)`."""

    @functools.wraps(command)
    def with_runtime(*args, **kwargs):
        flags = {name: kwargs.pop(name) for name in RUNTIME_FLAGS}
        kwargs["runtime"] = RuntimeOptions(
            flags["ep"], flags["device_id"], flags["threads"], flags["opt_level"],
            dict(parse_key_values(flags["provider_option"])), flags["inter_op"], flags["execution_mode"],
            flags["spinning"] == "on", dict(parse_key_values(flags["session_config"], "--session-config")))
        kwargs["runtime"].for_bench()  # check the combination now, before any work
        return command(*args, **kwargs)

    return apply(with_runtime, [
        click.option("--ep", type=click.Choice(EP_CHOICES), default="cpu", show_default=True,
                     help="Execution provider; auto = cuda when available, else cpu."),
        click.option("--device-id", type=int, default=0, show_default=True, help="GPU index."),
        click.option("--threads", type=int, help="Intra-op threads (ORT default: one per physical core)."),
        click.option("--inter-op", type=int, help="Inter-op threads (for --execution-mode parallel)."),
        click.option("--execution-mode", type=click.Choice(list(EXECUTION_MODES)), default="sequential",
                     show_default=True, help="Run independent nodes one at a time or in parallel."),
        click.option("--spinning", type=click.Choice(["on", "off"]), default="on", show_default=True,
                     help="Whether idle ONNX Runtime threads spin waiting for work (ORT's default: on)."),
        click.option("--opt-level", type=click.Choice(list(OPT_LEVELS)),
                     help="ONNX Runtime's own graph optimizations (default: disable when validating, "
                          "so the graphs are compared as written; all when benchmarking)."),
        click.option("--session-config", "session_config", multiple=True, metavar="KEY=VALUE",
                     help="Any ONNX Runtime session config entry (repeatable)."),
        click.option("--provider-option", "provider_option", multiple=True, metavar="KEY=VALUE",
                     help="GPU execution provider option (repeatable)."),
    ])


def tolerance(command=None, *, default: str | None = "fp32", cosine: bool = True, default_help: str = "",
              base=lambda kwargs: "fp32"):
    """--tolerance and its overrides, handed to the command as one `tolerance=Tolerance(...)`, or None
    when neither is given and `default` is None: the command's own default (`default_help` says which).
    Overrides without --tolerance apply to `base(kwargs)`, the tolerance the command would pick.
    cosine=False leaves --min-cosine to the command (a lossy run's budget)."""
    if command is None:
        return functools.partial(tolerance, default=default, cosine=cosine, default_help=default_help, base=base)

    @functools.wraps(command)
    def with_tolerance(*args, **kwargs):
        names = ("tolerance", "rtol", "atol", "max_mismatch") + (("min_cosine",) if cosine else ())
        flags = {name: kwargs.pop(name) for name in names}
        name = flags.pop("tolerance")
        overridden = any(value is not None for value in flags.values())
        kwargs["tolerance"] = None if name is None and not overridden else make_tolerance(name or base(kwargs), **flags)
        return command(*args, **kwargs)

    return apply(with_tolerance, [
        click.option("--tolerance", type=click.Choice([*TOLERANCES, "custom"]), default=default,
                     show_default=default is not None,
                     help="fp32 tight; fp16 and int8 looser, judged by cosine and top-1 agreement; custom: fp32 "
                          "with the overrides below." + (f" Default: {default_help}." if default_help else "")),
        click.option("--rtol", type=float, help="Relative tolerance (custom, or override a preset)."),
        click.option("--atol", type=float, help="Absolute tolerance (custom, or override a preset)."),
        click.option("--max-mismatch", type=float, help="Allowed fraction of elements outside tolerance."),
        *([click.option("--min-cosine", type=float, help="Lowest acceptable cosine similarity.")] if cosine else []),
    ])


def inputs(command):
    """--inputs, --shape, --input-range."""
    return apply(command, [
        click.option("--inputs", "inputs_file", type=click.Path(path_type=Path),
                     help=".npz with one array per input name (otherwise inputs are synthesized)."),
        click.option("--shape", "shape", multiple=True, metavar="NAME=1x128",
                     help="Shape of one input (repeatable); dynamic dims default to batch 2, sequence 16."),
        click.option("--input-range", "input_range", multiple=True, metavar="NAME=LO:HI",
                     help="Value range of one synthesized input (repeatable)."),
    ])


def model_source(command):
    """--zoo NAME | --module file.py:factory, --exporter, --opset."""
    return apply(command, [
        click.option("--zoo", help="A built-in model (`graphopt zoo` lists them)."),
        click.option("--module", "module_spec", metavar="FILE.py:FACTORY",
                     help="Your model: a function returning (module, example_inputs) or a dict."),
        click.option("--exporter", type=click.Choice(["dynamo", "torchscript"]), default="dynamo",
                     show_default=True, help="torch.onnx exporter (the other is a stated fallback)."),
        click.option("--opset", type=int, help="ONNX opset to export to (exporter default otherwise)."),
    ])


def declared(settings_class: type):
    """A click option for every declared field of a settings class (graphopt.options), passed to the
    command under the field's name."""
    made = []
    for field, spec, hint in options.declared(settings_class):
        if not spec.cli:
            continue
        kind, many = _click_type(hint, spec)
        default = None if field.default is None or many else field.default
        made.append(click.option(options.flags(field, spec), field.name, type=kind, multiple=many,
                                 default=default, show_default=default is not None,
                                 metavar=spec.metavar or None, help=spec.help))
    return lambda command: apply(command, made)


def _click_type(hint, spec: options.Declared):
    """(click type, whether repeatable) for a field's type hint."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    if typing.get_origin(hint) is tuple:
        return str, True
    if hint is bool:
        return None, False  # a --flag/--no-flag switch
    if spec.choices and all(isinstance(choice, int) for choice in spec.choices):
        return click.IntRange(min(spec.choices), max(spec.choices)), False
    if spec.choices:
        return click.Choice(list(spec.choices)), False
    return hint, False


def pick(settings_class: type, kwargs: dict) -> dict:
    """Take the declared fields' values out of a command's keyword arguments."""
    names = [field.name for field, spec, _ in options.declared(settings_class) if spec.cli]
    return {name: kwargs.pop(name) for name in names if name in kwargs}
