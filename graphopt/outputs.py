"""Output paths checked before any work, so a bad one fails fast and nothing is half-written.

A file output must not be a folder, its folder must be creatable and writable; a folder
output must not be a file. Writability is probed with a real temporary file, since
permission bits say nothing for root and nothing about read-only or immutable folders.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from graphopt.errors import InputError


def check_output_file(path: str | os.PathLike | None, flag: str = "output", *, new_folders: bool = True) -> None:
    """Refuse a file output that cannot be written: a folder, under a file, unwritable; without
    `new_folders` (the command line: a typo in a path must not create folders) in no folder."""
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{flag} {path}: is a folder, expected a file path")
    if not new_folders and not path.parent.exists():
        raise InputError(f"{flag} {path}: no such folder {path.parent}")
    _check_writable_folder(path.parent, flag, path)


def check_output_folder(path: str | os.PathLike, flag: str = "--out") -> None:
    """Refuse a folder output that is a file or cannot be created or written."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{flag} {path}: exists and is not a folder")
    _check_writable_folder(path, flag, path)


def _check_writable_folder(folder: Path, flag: str, given: Path) -> None:
    existing = folder
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise InputError(f"{flag} {given}: {existing} is a file, not a folder")
    try:
        handle, probe = tempfile.mkstemp(prefix=".graphopt-probe-", dir=existing)
    except OSError as error:
        raise InputError(f"{flag} {given}: cannot write in {existing}: {error.strerror or error}") from None
    os.close(handle)
    os.unlink(probe)


def write_error(path: str | os.PathLike, error: OSError) -> InputError:
    """The one-line error for a write the system refused."""
    return InputError(f"{path}: cannot write: {error.strerror or error}")


def check_output_differs(source: str | os.PathLike, output: str | os.PathLike) -> None:
    """Refuse an output path that is the input (before any work is done)."""
    if os.path.exists(output) and os.path.exists(source) and os.path.samefile(source, output):
        raise InputError(f"{output}: refusing to overwrite the input model")
