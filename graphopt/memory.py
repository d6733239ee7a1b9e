"""Process memory helpers: pausing CPython's cyclic garbage collector during bulk IR work.

Loading and rewriting a model creates and drops many small objects; each automatic
collection then walks the whole model's object graph again, which made O1 1.5-2x slower in
a fresh process. The IR's cycles (values <-> nodes) are collected once work is done.
"""

from __future__ import annotations

import contextlib
import gc


@contextlib.contextmanager
def gc_paused():
    """Disable automatic cyclic collection inside the block; restore the previous state after."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
