"""A restricted unpickler for the original toolbox's label and split pickles.

The original ships its labels and splits as pickles; `pickle.load` on an untrusted file runs
arbitrary code. This loader accepts plain containers, strings, numbers and numpy arrays and
refuses every other global with an error naming the file.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

_BUILTINS = frozenset({
    "dict", "list", "tuple", "set", "frozenset", "str", "bytes", "bytearray", "int", "float",
    "complex", "bool", "slice", "range",
})
# What numpy arrays and scalars need to unpickle, under numpy 1.x and 2.x module names.
_NUMPY = frozenset({
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
})
_OTHER = frozenset({("collections", "OrderedDict"), ("_codecs", "encode")})


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle that asks for something other than data."""


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BufferedIOBase, source: str) -> None:
        super().__init__(file)
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        allowed = (
            (module == "builtins" and name in _BUILTINS)
            or (module, name) in _NUMPY
            or (module, name) in _OTHER
        )
        if not allowed:
            raise UnsafePickleError(
                f"{self._source}: refused to load: the pickle asks for {module}.{name}, "
                "which is not a container, string, number or numpy array"
            )
        if module.startswith("numpy.core"):
            module = "numpy._core" + module[len("numpy.core"):]
        return super().find_class(module, name)


def loads(data: bytes, source: str = "<bytes>") -> Any:
    """Unpickle `data`, allowing only containers, strings, numbers and numpy arrays."""
    try:
        return _RestrictedUnpickler(io.BytesIO(data), source).load()
    except UnsafePickleError:
        raise
    except Exception as exc:  # truncated or garbled pickles fail in many ways
        raise UnsafePickleError(f"{source}: not a readable pickle ({exc.__class__.__name__}: {exc})") from exc


def load(path: str | Path) -> Any:
    """Load a pickle file from disk with the restricted unpickler."""
    p = Path(path)
    return loads(p.read_bytes(), str(p))
