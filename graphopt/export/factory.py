"""`--module path/to/file.py:factory`: a user's model, built by a function in their own file.

The factory takes no arguments and returns (module, example_inputs), or a dict with `module`
and `example_inputs` and optionally `input_names`, `output_names` and `dynamic_axes`.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from graphopt.errors import InputError
from graphopt.export.zoo import ZooModel

_OPTIONAL = ("input_names", "output_names", "dynamic_axes")


def load_factory(spec: str, flag: str = "--module") -> ZooModel:
    """Import the file, call the factory, and check what it returned."""
    path_text, sep, name = spec.rpartition(":")
    if not sep or not path_text or not name:
        raise InputError(f"{flag} {spec!r} must look like path/to/file.py:factory")
    path = Path(path_text)
    if not path.is_file():
        raise InputError(f"{flag} {spec!r}: {path} does not exist")
    module_name = f"graphopt_user_{abs(hash(path.resolve()))}"
    loader_spec = importlib.util.spec_from_file_location(module_name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise InputError(f"{flag} {spec!r}: {path} is not a Python file")
    user_module = importlib.util.module_from_spec(loader_spec)
    sys.modules[module_name] = user_module
    try:
        loader_spec.loader.exec_module(user_module)
    except Exception as error:
        raise InputError(f"{flag} {spec!r}: importing {path} failed: {type(error).__name__}: {error}") from None
    factory = getattr(user_module, name, None)
    if not callable(factory):
        raise InputError(f"{flag} {spec!r}: {path} has no function {name!r}")
    try:
        built = factory()
    except Exception as error:
        raise InputError(f"{flag} {spec!r}: {name}() failed: {type(error).__name__}: {error}") from None
    return _as_zoo_model(spec, built, flag)


def _as_zoo_model(spec: str, built, flag: str = "--module") -> ZooModel:
    import torch

    if isinstance(built, dict):
        if "module" not in built or "example_inputs" not in built:
            raise InputError(f"{flag} {spec!r}: the dict needs 'module' and 'example_inputs'")
        module, example_inputs = built["module"], built["example_inputs"]
        options = {key: built[key] for key in _OPTIONAL if key in built}
    elif isinstance(built, tuple) and len(built) == 2:
        (module, example_inputs), options = built, {}
    else:
        raise InputError(f"{flag} {spec!r}: the factory must return (module, example_inputs) or a dict")
    if not isinstance(module, torch.nn.Module):
        raise InputError(f"{flag} {spec!r}: {type(module).__name__} is not a torch.nn.Module")
    example_inputs = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    return ZooModel(module, example_inputs, list(options.get("input_names") or []),
                    list(options.get("output_names") or []), dict(options.get("dynamic_axes") or {}))
