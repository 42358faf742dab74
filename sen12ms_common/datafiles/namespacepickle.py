"""A restricted reader for a pickled `argparse.Namespace` (the DFC2020 baseline's `args.pkl`,
written by `pickle.dump(args, ...)`): the safe pickle machine of `safepickle`, which builds only
data, plus exactly what a Namespace needs: the global `argparse.Namespace`, created by NEWOBJ
with no arguments, and one BUILD with a dict of its attributes. The result is that dict; nothing
the file names is imported or called."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from . import picklenumpy as pn
from .limits import MAX_FILE_BYTES
from .picklemachine import Machine, _PickleProblem, _broken
from .pickleops import _OPS, _build
from .safepickle import _CALLS, _check_tree, refusals

NAMESPACE = pn.Global("argparse", "Namespace")


class _Namespace(dict):
    """The attributes of the Namespace being built (a dict, so the machine takes it as data)."""

    built = False


def _no_reduce(args: tuple) -> Any:
    raise _PickleProblem("argparse.Namespace is called with REDUCE; only NEWOBJ with no arguments is read")


def _newobj(m: Machine) -> None:
    args, cls = m.pop(), m.pop()
    if cls != NAMESPACE:
        raise _PickleProblem(f"NEWOBJ builds {cls}; only argparse.Namespace is read")
    if args != ():
        raise _PickleProblem("argparse.Namespace is built with arguments")
    m.push(_Namespace())


def _build_namespace(m: Machine) -> None:
    if len(m.stack) < 2 or not isinstance(m.stack[-2], _Namespace):  # BUILD's target is below its state
        _build(m)
        return
    state, target = m.pop(), m.top()
    if type(state) is not dict or target.built:
        raise _broken("BUILD of argparse.Namespace without one dict of attributes")
    if not all(isinstance(k, str) for k in state):
        raise _PickleProblem("an argparse.Namespace attribute name that is not a string")
    target.update(state)
    target.built = True


_NS_OPS = {**_OPS, pickle.NEWOBJ[0]: _newobj, pickle.BUILD[0]: _build_namespace}
_NS_CALLS = {**_CALLS, NAMESPACE: _no_reduce}


def loads_namespace(data: bytes, source: str = "<bytes>") -> dict[str, Any]:
    """The attributes of a pickled argparse.Namespace as a dict; `UnsafePickleError` (one line
    naming `source`) for any other content, a broken pickle or one over the limits."""
    with refusals(source):
        if len(data) > MAX_FILE_BYTES:
            raise _PickleProblem(f"the file is larger than {MAX_FILE_BYTES} bytes")
        result = Machine(data, _NS_CALLS, _NS_OPS).run()
        if not isinstance(result, _Namespace) or not result.built:
            raise _PickleProblem(f"it holds a {type(result).__name__}, not an argparse.Namespace")
        _check_tree(dict(result))
        return dict(result)


def load_namespace(path: str | Path) -> dict[str, Any]:
    """`loads_namespace` of a local file, read only up to the size limit."""
    p = Path(path)
    with open(p, "rb") as f:
        data = f.read(MAX_FILE_BYTES + 1)
    return loads_namespace(data, str(p))


__all__ = ["NAMESPACE", "loads_namespace", "load_namespace"]
