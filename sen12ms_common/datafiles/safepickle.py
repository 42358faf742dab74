"""A pickle reader for the original toolbox's label and split files that interprets the opcodes
itself (`picklemachine`): it builds containers, strings, numbers and numeric numpy arrays, never
imports or calls what a file names, and refuses a file over the limits of `datalimits` before
allocating for it. The accepted opcodes and globals are listed in docs/datafiles.md.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from . import picklenumpy as pn
from ..errors import UnsafePickleError
from .limits import MAX_DEPTH, MAX_FILE_BYTES, MAX_TREE_VALUES
from .picklemachine import KEY_TYPES, REFUSED_GLOBAL, Calls, _PickleProblem
from .pickleops import run


# --- the globals a pickle may name, and what a call of each gives -----------------------------------

def _latin1(args: tuple) -> bytes:
    # Python 3 pickles bytes as _codecs.encode(text, 'latin1') at protocols 0-2.
    if not (len(args) == 2 and type(args[0]) is str and type(args[1]) is str and args[1] in ("latin1", "latin-1")):
        raise _PickleProblem("_codecs.encode is called with other arguments than (text, 'latin1')")
    try:
        return args[0].encode("latin-1")
    except UnicodeEncodeError:
        raise _PickleProblem("_codecs.encode is given characters beyond latin-1") from None


def _empty_bytes(args: tuple) -> bytes:
    # ... and the empty bytes as bytes().
    if args:
        raise _PickleProblem("bytes is called with arguments (only bytes() is read)")
    return b""


def _ordered_dict(args: tuple) -> dict:
    # Python 3 fills an OrderedDict by SETITEMS; Python 2 passes its items as [[key, value], ...].
    if not args:
        return {}
    pairs = args[0] if len(args) == 1 and type(args[0]) is list else None
    if pairs is None or not all(type(p) is list and len(p) == 2 and isinstance(p[0], KEY_TYPES) for p in pairs):
        raise _PickleProblem("collections.OrderedDict is called with other arguments than its items")
    return {k: v for k, v in pairs}


_CALLS: Calls = {
    pn.NDARRAY: pn.new_ndarray,
    pn.Global("numpy", "dtype"): pn.new_dtype,
    **{pn.Global(f"numpy.{core}.multiarray", "_reconstruct"): pn.reconstruct for core in ("core", "_core")},
    **{pn.Global(f"numpy.{core}.multiarray", "scalar"): pn.scalar for core in ("core", "_core")},
    **{pn.Global(f"numpy.{core}.numeric", "_frombuffer"): pn.frombuffer for core in ("core", "_core")},
    pn.Global("_codecs", "encode"): _latin1,
    pn.Global("builtins", "bytes"): _empty_bytes,
    pn.Global("__builtin__", "bytes"): _empty_bytes,
    pn.Global("collections", "OrderedDict"): _ordered_dict,
}


def _check_tree(value: Any) -> None:
    """Refuse a result nested deeper than MAX_DEPTH (a cycle included) or holding more than
    MAX_TREE_VALUES values when shared references are counted each time they are reached."""
    todo: list[tuple[Any, int]] = [(value, 1)]
    count = 0
    while todo:
        item, depth = todo.pop()
        count += 1
        if isinstance(item, dict):
            children: Any = item.values()
            count += len(item)
        elif isinstance(item, (list, tuple)):
            children = item
        else:
            continue
        if depth > MAX_DEPTH:
            raise _PickleProblem(f"containers nested deeper than {MAX_DEPTH} levels")
        if count + len(todo) + len(children) > MAX_TREE_VALUES:
            raise _PickleProblem(f"the data holds more than {MAX_TREE_VALUES} values (a shared value counts each time)")
        todo.extend((child, depth + 1) for child in children)


@contextmanager
def refusals(source: str) -> Iterator[None]:
    """A refused or broken pickle as one `UnsafePickleError` line naming `source`."""
    try:
        yield
    except _PickleProblem as exc:
        if exc.broken:
            raise UnsafePickleError(f"{source}: not a readable pickle ({exc.reason})") from None
        raise UnsafePickleError(f"{source}: refused to load: {exc.reason}") from None
    except pn._ArrayPatternError as exc:
        raise UnsafePickleError(f"{source}: refused to load: {exc}") from None


def loads(data: bytes, source: str = "<bytes>") -> Any:
    """The data of a pickle: containers, strings, numbers and numeric numpy arrays.

    Anything else, a file over the limits of `datalimits` or a broken pickle raises
    `UnsafePickleError` with one line naming `source`; nothing the file names is imported or run.
    """
    with refusals(source):
        if len(data) > MAX_FILE_BYTES:
            raise _PickleProblem(f"the file is larger than {MAX_FILE_BYTES} bytes")
        result = run(data, _CALLS)
        _check_tree(result)
        return result


def load(path: str | Path) -> Any:
    """`loads` of a local file, read only up to the size limit."""
    p = Path(path)
    with open(p, "rb") as f:
        data = f.read(MAX_FILE_BYTES + 1)
    return loads(data, str(p))


__all__ = ["REFUSED_GLOBAL", "loads", "load"]
