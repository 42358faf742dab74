"""The pickle stack machine of `safepickle`: it interprets the opcodes one at a time, counts
every value, container item, memo entry and byte against the limits of `datalimits` before it
allocates, and calls only the globals of the table it is given. The opcode table is at the end.
"""

from __future__ import annotations

import codecs
import pickle
import struct
from typing import Any, Callable

import numpy as np

from . import picklenumpy as pn
from .datalimits import (
    MAX_NUMBER_DIGITS, MAX_PICKLE_DATA_BYTES, MAX_PICKLE_LINE, MAX_PICKLE_OBJECTS, MAX_PICKLE_STACK,
    MAX_STRING_CHARS, excerpt,
)
from .errors import Sen12msError

REFUSED_GLOBAL = "which is not a container, string, number or numpy array"
_MAX_INT_BYTES = MAX_NUMBER_DIGITS // 2
_DATA = (str, bytes, int, float, type(None), list, dict, np.ndarray, np.generic)
KEY_TYPES = (str, bytes, int, float, bool, type(None))
Calls = dict[pn.Global, Callable[[tuple], Any]]


class PickleProblem(Sen12msError):
    """Why a pickle is not loaded: refused (asks for more than data, over a limit) or broken."""

    def __init__(self, reason: str, broken: bool = False) -> None:
        super().__init__(reason)
        self.reason, self.broken = reason, broken


def _broken(reason: str) -> PickleProblem:
    return PickleProblem(reason, broken=True)


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
_STOPPED = object()
_UINT = {n: struct.Struct(f"<{code}") for n, code in ((1, "B"), (2, "H"), (4, "I"), (8, "Q"))}


class Machine:
    """The stack machine: one opcode at a time, every allocation counted against the limits."""

    def __init__(self, data: bytes, calls: Calls) -> None:
        self.data, self.pos, self.calls = data, 0, calls
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
                op = _OPS.get(code)
                if op is None:
                    if code in _OBJECT_OPS:
                        raise PickleProblem(f"the pickle uses the opcode {_OBJECT_OPS[code]}, "
                                            "which builds objects, not data")
                    raise _broken(f"unknown opcode 0x{code:02x}")
                if op(self) is _STOPPED:
                    return self.result
            raise _broken("no STOP opcode: the file is cut short")
        except PickleProblem as exc:
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
                raise PickleProblem(f"a text argument longer than {MAX_PICKLE_LINE} bytes")
            raise _broken("the file ends inside an opcode")
        text = self.data[self.pos:end]
        self.pos = end + 1
        return text

    def sized(self, n: int) -> bytes:
        if n > MAX_STRING_CHARS:
            raise PickleProblem(f"a string of {n} bytes, more than {MAX_STRING_CHARS}")
        self.spend(1, n)
        return self.take(n)

    def number_text(self) -> str:
        text = self.line().strip()
        if len(text) > MAX_NUMBER_DIGITS + 2:
            raise PickleProblem(f"a number of more than {MAX_NUMBER_DIGITS} digits")
        return text.decode("ascii", "replace")

    # --- the stack and the limits ------------------------------------------------------------------------
    def spend(self, objects: int, nbytes: int = 0) -> None:
        self.objects += objects
        self.data_bytes += nbytes
        if self.objects > MAX_PICKLE_OBJECTS:
            raise PickleProblem(f"the pickle creates more than {MAX_PICKLE_OBJECTS} objects")
        if self.data_bytes > MAX_PICKLE_DATA_BYTES:
            raise PickleProblem(f"the pickle creates more than {MAX_PICKLE_DATA_BYTES} bytes of strings and arrays")

    def push(self, value: Any, new: bool = True) -> None:
        if new:
            self.objects += 1
            if self.objects > MAX_PICKLE_OBJECTS:
                self.spend(0)
        if len(self.stack) >= MAX_PICKLE_STACK:
            raise PickleProblem(f"more than {MAX_PICKLE_STACK} values on the pickle stack")
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
            raise PickleProblem(f"more than {MAX_PICKLE_STACK} open marks")
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
        raise PickleProblem(f"the pickle uses {_what(value)} as data")

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
                raise PickleProblem(f"a dict key is {_what(key)}, not a string or number")
            target[key] = self.data_value(value)

    def extend(self, target: Any, items: list[Any]) -> None:
        if type(target) is not list:
            raise _broken(f"APPEND(S) on {_what(target)}, not a list")
        self.spend(len(items))
        target.extend(self.data_value(x) for x in items)

    def load_global(self, module: str, name: str) -> None:
        found = pn.Global(module, name)
        if found not in self.calls:
            raise PickleProblem(f"the pickle asks for {found}, {REFUSED_GLOBAL}")
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


def _text_string(m: Machine) -> str:
    # Python 2's str, written as its repr; read as latin-1 text, as pickle.load(encoding='latin1').
    text = m.line().rstrip(b"\r")
    if len(text) < 2 or text[0] != text[-1] or text[:1] not in (b"'", b'"'):
        raise _broken("STRING argument is not quoted")
    try:
        raw = codecs.escape_decode(text[1:-1])[0]
    except ValueError:
        raise _broken("STRING argument has a broken escape") from None
    if len(raw) > MAX_STRING_CHARS:
        raise PickleProblem(f"a string of {len(raw)} bytes, more than {MAX_STRING_CHARS}")
    m.spend(0, len(raw))
    return raw.decode("latin-1")


def _text_unicode(m: Machine) -> str:
    try:
        text = m.line().decode("raw-unicode-escape")
    except UnicodeDecodeError:
        raise _broken("UNICODE argument has a broken escape") from None
    if len(text) > MAX_STRING_CHARS:
        raise PickleProblem(f"a string of {len(text)} characters, more than {MAX_STRING_CHARS}")
    m.spend(0, len(text))
    return text


def _utf8(raw: bytes) -> str:
    try:
        return raw.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        raise _broken("a string that is not UTF-8") from None


def _int_text(m: Machine) -> int | bool:
    text = m.number_text()
    if text in ("00", "01"):  # protocol 0 writes False and True as INT 00 / 01
        return text == "01"
    try:
        return int(text.rstrip("L"))
    except ValueError:
        raise _broken(f"INT argument {excerpt(text)} is not a number") from None


def _index_text(m: Machine) -> int:
    text = m.number_text()
    if not text.isdigit():
        raise _broken(f"memo index {excerpt(text)} is not a number")
    return int(text)


def _float_text(m: Machine) -> float:
    text = m.number_text()
    try:
        return float(text)
    except ValueError:
        raise _broken(f"FLOAT argument {excerpt(text)} is not a number") from None


def _long(m: Machine, n: int) -> int:
    if n > _MAX_INT_BYTES:
        raise PickleProblem(f"an integer of {n} bytes, more than {_MAX_INT_BYTES}")
    return int.from_bytes(m.take(n), "little", signed=True)


def _signed4(m: Machine) -> int:
    return struct.unpack("<i", m.take(4))[0]


def _length4(m: Machine) -> int:
    n = _signed4(m)
    if n < 0:
        raise _broken("negative length")
    return n


def _reduce(m: Machine) -> None:
    args, func = m.pop(), m.pop()
    if not isinstance(func, pn.Global) or not isinstance(args, tuple):
        raise _broken("REDUCE without a global and an argument tuple")
    value = m.calls[func](args)
    m.push(value)
    if isinstance(value, bytes):
        m.spend(0, len(value))


def _build(m: Machine) -> None:
    state, target = m.pop(), m.top()
    if isinstance(target, pn.PendingDtype):
        pn.build_dtype(target, state)
    elif isinstance(target, pn.PendingArray):
        pn.build_array(target, state)
        m.spend(0, target.array.nbytes)
    else:
        raise PickleProblem(f"BUILD sets the state of {_what(target)}; only numpy arrays and dtypes have one")


def _proto(m: Machine) -> None:
    version = m.uint(1)
    if version > pickle.HIGHEST_PROTOCOL:
        raise _broken(f"protocol {version}, newer than {pickle.HIGHEST_PROTOCOL}")


def _frame(m: Machine) -> None:
    # Frames only group opcodes for buffered reading; the whole file is in memory.
    if m.uint(8) > len(m.data) - m.pos:
        raise _broken("FRAME longer than the rest of the file")


def _stop(m: Machine) -> object:
    m.result = m.data_value(m.pop())
    return _STOPPED


def _pop(m: Machine) -> None:
    if len(m.stack) > m.fence:
        m.stack.pop()
    else:
        m.pop_mark()


def _dict(m: Machine) -> None:
    items = m.pop_mark()
    m.push({})
    m.set_items(m.stack[-1], items)


def _list(m: Machine) -> None:
    items = m.pop_mark()
    m.push([])
    m.extend(m.stack[-1], items)


def _setitems(m: Machine) -> None:
    items = m.pop_mark()
    m.set_items(m.top(), items)


def _appends(m: Machine) -> None:
    items = m.pop_mark()
    m.extend(m.top(), items)


def _setitem(m: Machine) -> None:
    value, key = m.pop(), m.pop()
    m.set_items(m.top(), [key, value])


def _append(m: Machine) -> None:
    value = m.pop()
    m.extend(m.top(), [value])


def _stack_global(m: Machine) -> None:
    name, module = m.pop(), m.pop()
    if type(module) is not str or type(name) is not str:
        raise _broken("STACK_GLOBAL without two strings")
    m.load_global(module, name)


def _global(m: Machine) -> None:
    module, name = (_utf8(m.line()).strip() for _ in range(2))
    m.load_global(module, name)


def _tuple_of(n: int) -> Callable[[Machine], None]:
    def op(m: Machine) -> None:
        items = [m.pop() for _ in range(n)][::-1]
        m.push(m.make_tuple(items), new=False)
    return op


# The opcode table: every opcode the reader knows, as (opcode, what it does with the machine).
_OPS: dict[int, Callable[[Machine], Any]] = {ord(op): fn for op, fn in (
    (pickle.PROTO, _proto), (pickle.FRAME, _frame), (pickle.STOP, _stop),
    (pickle.MARK, Machine.mark), (pickle.POP, _pop), (pickle.POP_MARK, lambda m: m.pop_mark()),
    (pickle.DUP, lambda m: m.push(m.top(), new=False)),
    (pickle.NONE, lambda m: m.push(None)),
    (pickle.NEWTRUE, lambda m: m.push(True)), (pickle.NEWFALSE, lambda m: m.push(False)),
    (pickle.INT, lambda m: m.push(_int_text(m))), (pickle.LONG, lambda m: m.push(_int_text(m))),
    (pickle.BININT, lambda m: m.push(_signed4(m))), (pickle.BININT1, lambda m: m.push(m.uint(1))),
    (pickle.BININT2, lambda m: m.push(m.uint(2))),
    (pickle.LONG1, lambda m: m.push(_long(m, m.uint(1)))), (pickle.LONG4, lambda m: m.push(_long(m, _length4(m)))),
    (pickle.FLOAT, lambda m: m.push(_float_text(m))),
    (pickle.BINFLOAT, lambda m: m.push(struct.unpack(">d", m.take(8))[0])),
    (pickle.STRING, lambda m: m.push(_text_string(m))),
    (pickle.BINSTRING, lambda m: m.push(m.sized(_length4(m)).decode("latin-1"), new=False)),
    (pickle.SHORT_BINSTRING, lambda m: m.push(m.sized(m.uint(1)).decode("latin-1"), new=False)),
    (pickle.UNICODE, lambda m: m.push(_text_unicode(m))),
    (pickle.BINUNICODE, lambda m: m.push(_utf8(m.sized(m.uint(4))), new=False)),
    (pickle.SHORT_BINUNICODE, lambda m: m.push(_utf8(m.sized(m.uint(1))), new=False)),
    (pickle.BINUNICODE8, lambda m: m.push(_utf8(m.sized(m.uint(8))), new=False)),
    (pickle.BINBYTES, lambda m: m.push(m.sized(m.uint(4)), new=False)),
    (pickle.SHORT_BINBYTES, lambda m: m.push(m.sized(m.uint(1)), new=False)),
    (pickle.BINBYTES8, lambda m: m.push(m.sized(m.uint(8)), new=False)),
    (pickle.BYTEARRAY8, lambda m: m.push(m.sized(m.uint(8)), new=False)),  # read as bytes
    (pickle.EMPTY_LIST, lambda m: m.push([])), (pickle.APPEND, _append),
    (pickle.APPENDS, _appends),
    (pickle.LIST, _list),
    (pickle.EMPTY_TUPLE, lambda m: m.push(())),
    (pickle.TUPLE, lambda m: m.push(m.make_tuple(m.pop_mark()), new=False)),
    (pickle.TUPLE1, _tuple_of(1)), (pickle.TUPLE2, _tuple_of(2)), (pickle.TUPLE3, _tuple_of(3)),
    (pickle.EMPTY_DICT, lambda m: m.push({})), (pickle.DICT, _dict), (pickle.SETITEM, _setitem),
    (pickle.SETITEMS, _setitems),
    (pickle.GET, lambda m: m.memo_get(_index_text(m))), (pickle.BINGET, lambda m: m.memo_get(m.uint(1))),
    (pickle.LONG_BINGET, lambda m: m.memo_get(m.uint(4))),
    (pickle.PUT, lambda m: m.memo_put(_index_text(m))), (pickle.BINPUT, lambda m: m.memo_put(m.uint(1))),
    (pickle.LONG_BINPUT, lambda m: m.memo_put(m.uint(4))), (pickle.MEMOIZE, lambda m: m.memo_put(len(m.memo))),
    (pickle.GLOBAL, _global), (pickle.STACK_GLOBAL, _stack_global),
    (pickle.REDUCE, _reduce), (pickle.BUILD, _build),
)}


def run(data: bytes, calls: Calls) -> Any:
    """The value a pickle builds; `PickleProblem` if it is refused or broken."""
    return Machine(data, calls).run()
