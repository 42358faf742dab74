"""The user-facing error base, the shard errors both readers raise, and the one place a command reports them."""

from __future__ import annotations

import functools
import sys
from typing import Callable, Iterator, TypeVar

from .storage.redaction import redact

F = TypeVar("F", bound=Callable)


class Sen12msError(Exception):
    """An error of the user's input or environment (a bad file, a missing shard, a bad option,
    storage); its message is one line naming the file or URL, shown without a traceback."""


class DataError(Sen12msError):
    """A shard set that cannot be read as asked: one line naming the shard (and sample)."""


class ShardError(DataError):
    """A shard (or a sample in it) that is missing, damaged or not what the manifest says."""


def exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and the exceptions behind it (`__cause__`, else `__context__`), each once."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def one_line(exc: BaseException) -> str:
    """The whole message of `exc` on one line (its class name where it has none)."""
    text = " ".join(line.strip() for line in str(exc).strip().splitlines() if line.strip())
    return text or exc.__class__.__name__


def report_errors(command: F) -> F:
    """Wrap a command's function: a `Sen12msError` is printed as `Error: <message>` on one line
    to stderr (credentials in URLs redacted) and the process exits with status 1 (click's own usage errors keep status 2)."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except Sen12msError as exc:
            sys.stderr.write(f"Error: {redact(one_line(exc))}\n")
            sys.stderr.flush()
            raise SystemExit(1) from None

    return run  # type: ignore[return-value]
