"""The pickle stack machine of `safepickle`: it interprets the opcodes one at a time, counts
every value, container item, memo entry and byte against the limits of `datalimits` before it
allocates, and calls only the globals of the table it is given. The opcode table is at the end.
"""

from __future__ import annotations

import pickle
import struct
from typing import Any, Callable

import numpy as np

from . import picklenumpy as pn
from ..errors import Sen12msError
from .limits import (MAX_NUMBER_DIGITS, MAX_PICKLE_DATA_BYTES, MAX_PICKLE_LINE, MAX_PICKLE_OBJECTS, MAX_PICKLE_STACK,
                     MAX_STRING_CHARS)

REFUSED_GLOBAL = "which is not a container, string, number or numpy array"
_DATA = (str, bytes, int, float, type(None), list, dict, np.ndarray, np.generic)
KEY_TYPES = (str, bytes, int, float, bool, type(None))
Calls = dict[pn.Global, Callable[[tuple], Any]]


class _PickleProblem(Sen12msError):
    """Why a pickle is not loaded: refused (asks for more than data, over a limit) or broken."""

    def __init__(self, reason: str, broken: bool = False) -> None:
        super().__init__(reason)
        self.reason, self.broken = reason, broken


def _broken(reason: str) -> _PickleProblem:
    return _PickleProblem(reason, broken=True)


class _ArgTuple(tuple):
    """A tuple holding a global, a dtype or an unfinished array: an argument, never data."""


def _what(value: Any) -> str:
    if isinstance(value, pn.Global):
        return f"the global {value}"
    if isinstance(value, pn.PendingDtype):
        return "a numpy dtype outside an array"
    if isinstance(value, pn.PendingArray):
        return "a numpy array before its data"
    if isinstance(value, _ArgTuple):
        return "a tuple of call arguments"
    name = type(value).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


# Opcodes that build objects of a class the file names (or reach outside the file): refused.
_OBJECT_OPS = {ord(op): name for op, name in (
    (pickle.INST, "INST"), (pickle.OBJ, "OBJ"), (pickle.NEWOBJ, "NEWOBJ"), (pickle.NEWOBJ_EX, "NEWOBJ_EX"),
    (pickle.PERSID, "PERSID"), (pickle.BINPERSID, "BINPERSID"), (pickle.EXT1, "EXT1"), (pickle.EXT2, "EXT2"),
    (pickle.EXT4, "EXT4"), (pickle.NEXT_BUFFER, "NEXT_BUFFER"), (pickle.READONLY_BUFFER, "READONLY_BUFFER"),
    (pickle.EMPTY_SET, "EMPTY_SET"), (pickle.ADDITEMS, "ADDITEMS"), (pickle.FROZENSET, "FROZENSET"),
)}
STOPPED = object()  # what the STOP opcode returns
_UINT = {n: struct.Struct(f"<{code}") for n, code in ((1, "B"), (2, "H"), (4, "I"), (8, "Q"))}


class Machine:
    """The stack machine: one opcode at a time, every allocation counted against the limits."""

    def __init__(self, data: bytes, calls: Calls, ops: dict[int, Callable[["Machine"], Any]]) -> None:
        self.data, self.pos, self.calls, self.ops = data, 0, calls, ops
        self.stack: list[Any] = []
        self.marks: list[int] = []  # stack lengths at each MARK
        self.fence = 0  # the last mark: nothing below it may be popped before POP_MARK
        self.memo: dict[int, Any] = {}
        self.objects = self.data_bytes = 0
        self.result: Any = None

    def run(self) -> Any:
        start = 0
        try:
            while self.pos < len(self.data):
                start, code = self.pos, self.data[self.pos]
                self.pos += 1
                op = self.ops.get(code)
                if op is None:
                    if code in _OBJECT_OPS:
                        raise _PickleProblem(f"the pickle uses the opcode {_OBJECT_OPS[code]}, "
                                             "which builds objects, not data")
                    raise _broken(f"unknown opcode 0x{code:02x}")
                if op(self) is STOPPED:
                    return self.result
            raise _broken("no STOP opcode: the file is cut short")
        except _PickleProblem as exc:
            if exc.broken:
                exc.reason += f" at byte {start}"
            raise

    # --- arguments ------------------------------------------------------------------------------------
    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise _broken("the file ends inside an opcode")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def uint(self, n: int) -> int:
        end = self.pos + n
        if end > len(self.data):
            raise _broken("the file ends inside an opcode")
        value = _UINT[n].unpack_from(self.data, self.pos)[0]
        self.pos = end
        return value

    def line(self) -> bytes:
        end = self.data.find(b"\n", self.pos, self.pos + MAX_PICKLE_LINE + 1)
        if end < 0:
            if len(self.data) - self.pos > MAX_PICKLE_LINE:
                raise _PickleProblem(f"a text argument longer than {MAX_PICKLE_LINE} bytes")
            raise _broken("the file ends inside an opcode")
        text = self.data[self.pos:end]
        self.pos = end + 1
        return text

    def sized(self, n: int) -> bytes:
        if n > MAX_STRING_CHARS:
            raise _PickleProblem(f"a string of {n} bytes, more than {MAX_STRING_CHARS}")
        self.spend(1, n)
        return self.take(n)

    def number_text(self) -> str:
        text = self.line().strip()
        if len(text) > MAX_NUMBER_DIGITS + 2:
            raise _PickleProblem(f"a number of more than {MAX_NUMBER_DIGITS} digits")
        return text.decode("ascii", "replace")

    # --- the stack and the limits ------------------------------------------------------------------------
    def spend(self, objects: int, nbytes: int = 0) -> None:
        self.objects += objects
        self.data_bytes += nbytes
        if self.objects > MAX_PICKLE_OBJECTS:
            raise _PickleProblem(f"the pickle creates more than {MAX_PICKLE_OBJECTS} objects")
        if self.data_bytes > MAX_PICKLE_DATA_BYTES:
            raise _PickleProblem(f"the pickle creates more than {MAX_PICKLE_DATA_BYTES} bytes of strings and arrays")

    def push(self, value: Any, new: bool = True) -> None:
        if new:
            self.objects += 1
            if self.objects > MAX_PICKLE_OBJECTS:
                self.spend(0)
        if len(self.stack) >= MAX_PICKLE_STACK:
            raise _PickleProblem(f"more than {MAX_PICKLE_STACK} values on the pickle stack")
        self.stack.append(value)

    def pop(self) -> Any:
        if len(self.stack) <= self.fence:
            raise _broken("stack underflow")
        return self.stack.pop()

    def top(self) -> Any:
        if len(self.stack) <= self.fence:
            raise _broken("stack underflow")
        return self.stack[-1]

    def mark(self) -> None:
        if len(self.marks) >= MAX_PICKLE_STACK:
            raise _PickleProblem(f"more than {MAX_PICKLE_STACK} open marks")
        self.fence = len(self.stack)
        self.marks.append(self.fence)

    def pop_mark(self) -> list[Any]:
        if not self.marks:
            raise _broken("no MARK before an opcode that needs one")
        start = self.marks.pop()
        self.fence = self.marks[-1] if self.marks else 0
        items = self.stack[start:]
        del self.stack[start:]
        return items

    # --- values: what may go into a container, and tuples ----------------------------------------------
    def data_value(self, value: Any) -> Any:
        if isinstance(value, pn.PendingArray) and value.array is not None:
            return value.array
        if type(value) is tuple or (isinstance(value, _DATA) and not isinstance(value, tuple)):
            return value
        raise _PickleProblem(f"the pickle uses {_what(value)} as data")

    def make_tuple(self, items: list[Any]) -> tuple:
        self.spend(1 + len(items))
        done = [x.array if isinstance(x, pn.PendingArray) and x.array is not None else x for x in items]
        if all(type(x) is tuple or (isinstance(x, _DATA) and not isinstance(x, tuple)) for x in done):
            return tuple(done)
        return _ArgTuple(done)

    def set_items(self, target: Any, items: list[Any]) -> None:
        if type(target) is not dict:
            raise _broken(f"SETITEM(S) on {_what(target)}, not a dict")
        if len(items) % 2:
            raise _broken("SETITEMS with an odd number of values")
        self.spend(len(items) // 2)
        for key, value in zip(items[::2], items[1::2]):
            if not isinstance(key, KEY_TYPES):
                raise _PickleProblem(f"a dict key is {_what(key)}, not a string or number")
            target[key] = self.data_value(value)

    def extend(self, target: Any, items: list[Any]) -> None:
        if type(target) is not list:
            raise _broken(f"APPEND(S) on {_what(target)}, not a list")
        self.spend(len(items))
        target.extend(self.data_value(x) for x in items)

    def load_global(self, module: str, name: str) -> None:
        found = pn.Global(module, name)
        if found not in self.calls:
            raise _PickleProblem(f"the pickle asks for {found}, {REFUSED_GLOBAL}")
        self.push(found)

    def memo_get(self, index: int) -> None:
        if index not in self.memo:
            raise _broken(f"memo entry {index} is not set")
        self.push(self.memo[index], new=False)

    def memo_put(self, index: int) -> None:
        if index < 0:
            raise _broken("negative memo index")
        self.spend(1)
        self.memo[index] = self.top()
