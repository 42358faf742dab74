"""numpy arrays in a pickle, rebuilt from their raw bytes with a whitelisted numeric dtype."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from ..errors import Sen12msError
from .limits import MAX_ARRAY_VALUES, clip, describe, excerpt

# dtype codes as numpy pickles them: floats, signed and unsigned integers.
NUMERIC_CODES = frozenset({"f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8"})
_BYTE_ORDERS = ("<", ">", "|", "=")
_MAX_DIMS = 32


class _ArrayPatternError(ValueError, Sen12msError):
    """Something in an array's or dtype's pickle is not what numpy writes for a numeric array."""


class Global(NamedTuple):
    """A global a pickle names: never imported, only compared with the allowed ones."""

    module: str
    name: str

    def __str__(self) -> str:
        return f"{clip(self.module)}.{clip(self.name)}"


NDARRAY = Global("numpy", "ndarray")


@dataclass(eq=False)
class PendingDtype:
    """`numpy.dtype(code, align, copy)` before its BUILD sets the byte order."""

    code: str
    dtype: np.dtype | None = None


@dataclass(eq=False)
class PendingArray:
    """An array made by `_reconstruct` or `ndarray(shape, dtype)` before its BUILD gives the data."""

    array: np.ndarray | None = None


def _is_flag(value: Any) -> bool:
    return type(value) in (bool, int) and value in (0, 1)


def _equals(value: Any, expected: Any) -> bool:
    """`value == expected` for plain data, never numpy's elementwise comparison."""
    if type(expected) is Global:
        return type(value) is Global and value == expected
    if isinstance(expected, tuple):
        return (isinstance(value, tuple) and len(value) == len(expected)
                and all(_equals(v, e) for v, e in zip(value, expected)))
    return type(value) is type(expected) and value == expected


def _shape(value: Any) -> tuple[int, ...]:
    if not (isinstance(value, tuple) and len(value) <= _MAX_DIMS
            and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value)):
        raise _ArrayPatternError(f"array shape {describe(value)} is not a tuple of sizes")
    count = 1
    for d in value:
        count *= d
        if count > MAX_ARRAY_VALUES:
            raise _ArrayPatternError(f"array of shape {value} holds more than {MAX_ARRAY_VALUES} values")
    return value


def _built_dtype(value: Any) -> np.dtype:
    if not isinstance(value, PendingDtype) or value.dtype is None:
        raise _ArrayPatternError(f"array dtype is {describe(value)}, not a numeric numpy dtype")
    return value.dtype


def from_raw(raw: Any, dtype: np.dtype, shape: tuple[int, ...], fortran: bool) -> np.ndarray:
    """The array of `shape` whose values are the bytes `raw` (a str holds them as latin-1)."""
    if isinstance(raw, str):
        try:
            raw = raw.encode("latin-1")
        except UnicodeEncodeError:
            raise _ArrayPatternError("array data is a string with characters beyond latin-1") from None
    if not isinstance(raw, (bytes, bytearray)):
        raise _ArrayPatternError(f"array data is {describe(raw)}, not bytes")
    count = 1
    for d in shape:
        count *= d
    if len(raw) != count * dtype.itemsize:
        raise _ArrayPatternError(f"array data holds {len(raw)} bytes, shape {shape} of {dtype.str} "
                                 f"needs {count * dtype.itemsize}")
    flat = np.frombuffer(raw, dtype=dtype, count=count)
    # A copy in native byte order, as numpy's own unpickling gives.
    return flat.reshape(shape, order="F" if fortran else "C").astype(dtype.newbyteorder("="), order="K")


def new_dtype(args: tuple) -> PendingDtype:
    """`numpy.dtype(code, align, copy)`: only the numeric codes."""
    if not (len(args) == 3 and isinstance(args[0], str) and _is_flag(args[1]) and _is_flag(args[2])):
        raise _ArrayPatternError("numpy.dtype is called with other arguments than (code, align, copy)")
    if args[0] not in NUMERIC_CODES:
        raise _ArrayPatternError(f"numpy dtype {excerpt(args[0])} is not a numeric type "
                                 "(float16/32/64 or an integer type)")
    return PendingDtype(args[0])


def build_dtype(pending: PendingDtype, state: Any) -> None:
    """BUILD of a dtype: (3, byte order, None, None, None, -1, -1, 0), as numpy writes for numbers."""
    if pending.dtype is not None:
        raise _ArrayPatternError("a numpy dtype is given its state twice")
    if not (isinstance(state, tuple) and len(state) == 8 and _equals(state[0], 3)
            and any(_equals(state[1], order) for order in _BYTE_ORDERS)
            and _equals(state[2:], (None, None, None, -1, -1, 0))):
        raise _ArrayPatternError(f"the state of numpy dtype {excerpt(pending.code)} is not that of a numeric type")
    order = state[1]
    dtype = np.dtype(pending.code if order in ("|", "=") else order + pending.code)
    if (order == "|") != (dtype.itemsize == 1):
        raise _ArrayPatternError(f"byte order {order!r} does not fit numpy dtype {excerpt(pending.code)}")
    pending.dtype = dtype


def reconstruct(args: tuple) -> PendingArray:
    """`_reconstruct(ndarray, (0,), b'b')`, numpy's array pickle before protocol 5."""
    if not (len(args) == 3 and _equals(args[0], NDARRAY) and _equals(args[1], (0,))
            and (_equals(args[2], b"b") or _equals(args[2], "b"))):
        raise _ArrayPatternError("numpy's _reconstruct is called with other arguments than (ndarray, (0,), b'b')")
    return PendingArray()


def new_ndarray(args: tuple) -> PendingArray:
    """`ndarray(shape, dtype)`, as `convert labels` writes its compatibility pickles."""
    if not (len(args) == 2 and isinstance(args[1], PendingDtype)):
        raise _ArrayPatternError("numpy.ndarray is called with other arguments than (shape, dtype)")
    _shape(args[0])
    _built_dtype(args[1])
    return PendingArray()


def build_array(pending: PendingArray, state: Any) -> None:
    """BUILD of an array: (1, shape, dtype, fortran flag, raw bytes)."""
    if pending.array is not None:
        raise _ArrayPatternError("a numpy array is given its data twice")
    if not (isinstance(state, tuple) and len(state) == 5 and _equals(state[0], 1) and _is_flag(state[3])):
        raise _ArrayPatternError("the state of a numpy array is not (1, shape, dtype, fortran, data)")
    pending.array = from_raw(state[4], _built_dtype(state[2]), _shape(state[1]), bool(state[3]))


def frombuffer(args: tuple) -> np.ndarray:
    """`_frombuffer(buffer, dtype, shape, order)`, numpy's array pickle at protocol 5."""
    if not (len(args) == 4 and (_equals(args[3], "C") or _equals(args[3], "F"))):
        raise _ArrayPatternError("numpy's _frombuffer is called with other arguments than (data, dtype, shape, order)")
    return from_raw(args[0], _built_dtype(args[1]), _shape(args[2]), args[3] == "F")


def scalar(args: tuple) -> np.generic:
    """`scalar(dtype, raw bytes)`: a numpy number."""
    if len(args) != 2:
        raise _ArrayPatternError("numpy's scalar is called with other arguments than (dtype, data)")
    return from_raw(args[1], _built_dtype(args[0]), (), False)[()]


__all__ = ["NUMERIC_CODES", "_ArrayPatternError", "Global", "NDARRAY", "PendingDtype", "PendingArray",
           "from_raw", "new_dtype", "build_dtype", "reconstruct", "new_ndarray", "build_array",
           "frombuffer", "scalar"]
