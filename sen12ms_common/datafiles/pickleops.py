"""The opcodes of the pickle machine (`picklemachine`): what each one does with the machine, and `run`."""

from __future__ import annotations

import codecs
import pickle
import struct
from typing import Any, Callable

from . import picklenumpy as pn
from .limits import MAX_NUMBER_DIGITS, MAX_STRING_CHARS, excerpt
from .picklemachine import STOPPED, Calls, Machine, _PickleProblem, _broken, _what

_MAX_INT_BYTES = MAX_NUMBER_DIGITS // 2


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
        raise _PickleProblem(f"a string of {len(raw)} bytes, more than {MAX_STRING_CHARS}")
    m.spend(0, len(raw))
    return raw.decode("latin-1")


def _text_unicode(m: Machine) -> str:
    try:
        text = m.line().decode("raw-unicode-escape")
    except UnicodeDecodeError:
        raise _broken("UNICODE argument has a broken escape") from None
    if len(text) > MAX_STRING_CHARS:
        raise _PickleProblem(f"a string of {len(text)} characters, more than {MAX_STRING_CHARS}")
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
        raise _PickleProblem(f"an integer of {n} bytes, more than {_MAX_INT_BYTES}")
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
        raise _PickleProblem(f"BUILD sets the state of {_what(target)}; only numpy arrays and dtypes have one")


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
    return STOPPED


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
    """The value a pickle builds; `_PickleProblem` if it is refused or broken."""
    return Machine(data, calls, _OPS).run()
