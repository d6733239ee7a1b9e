"""Plugins: modules or .py files whose `@register` decorators add passes to the registry.

Explicit plugins come from `--plugin` (`load_plugin`); installed ones from the `graphopt.passes`
entry-point group, imported once, the first time the registry is read (`load_installed`).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.metadata
import importlib.util
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

from graphopt import checks
from graphopt.errors import InputError
from graphopt.passes import registry

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "graphopt.passes"

_installed_loaded = False
_installed_failures: list[str] = []


def load_plugin(spec: str) -> ModuleType:
    """Import a plugin given as a module name (`my_company.passes`) or a .py file's path."""
    load_installed()  # first, so a name clash with an installed plugin is blamed on this one
    is_path = spec.endswith(".py") or "/" in spec or "\\" in spec
    if is_path and not (Path(spec).suffix == ".py" and Path(spec).is_file()):
        raise InputError(f"cannot load plugin {spec}: no such .py file")
    try:
        with _registrations_undone_on_failure():
            return _import_file(Path(spec)) if is_path else importlib.import_module(spec)
    except Exception as error:
        raise InputError(f"cannot load plugin {spec}: {_cause(error)}") from error


def load_installed() -> None:
    """Import every `graphopt.passes` entry point once; a broken one is remembered, not raised.

    One broken installed package must not stop graphopt for everyone: its passes are missing,
    and asking for a missing pass names the broken plugins (`missing_pass_note`).
    """
    global _installed_loaded
    if _installed_loaded:
        return
    _installed_loaded = True  # before importing: a plugin may read the registry at import time
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            with _registrations_undone_on_failure():
                entry_point.load()
        except Exception as error:
            failure = f"{_describe(entry_point)} failed to load: {_cause(error)}"
            logger.warning("%s", failure)
            _installed_failures.append(failure)


def missing_pass_note() -> str:
    """For an unknown-pass error: the installed plugins that failed to load, if any."""
    return "".join(f"; {failure}" for failure in _installed_failures)


def _import_file(path: Path) -> ModuleType:
    path = path.resolve()
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:8]
    name = f"graphopt_plugin_{path.stem}_{digest}"
    if name in sys.modules:  # loaded already: main() may run twice in one process
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickle look a class's module up there
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


@contextlib.contextmanager
def _registrations_undone_on_failure() -> Iterator[None]:
    """A plugin that fails half-way leaves no passes behind, so loading it again works."""
    before = set(registry.pass_names())
    try:
        yield
    except BaseException:
        for name in set(registry.pass_names()) - before:
            registry.unregister(name)
        raise


def _describe(entry_point: importlib.metadata.EntryPoint) -> str:
    where = f"entry point {entry_point.name} = {entry_point.value}"
    dist = getattr(entry_point, "dist", None)
    if dist is not None:
        return f"plugin {dist.name} {dist.version} ({where})"
    return f"plugin ({where})"


def _cause(error: BaseException) -> str:
    return f"{type(error).__name__}: {checks.first_line(str(error))}"
