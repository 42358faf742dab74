"""Compiled (numba) kernels of the readers: the zstd byte un-shuffle, bands written into a
batch with non-temporal stores, and the CPU's uint16 -> normalised float32 conversion; numpy's
and torch's passes stand in without numba."""

from __future__ import annotations

import importlib
from functools import lru_cache
from types import ModuleType


@lru_cache(maxsize=None)
def compiled(name: str) -> ModuleType | None:
    """The kernel module `name` of this package (numba compiles it), or None without numba.
    Imported on first use: numba adds about a second to a start-up that does not need it."""
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ImportError:  # numba is missing: the caller's numpy / torch passes
        return None
