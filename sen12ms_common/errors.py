"""The errors a caller of this toolbox catches, one type for each way of handling it, and the one
place a command reports them.

    Sen12msError                      anything of ours; a CLI prints its one line and exits 1
      InputError(ValueError)          a bad option, name, band, label, statistics, manifest,
                                      label/split/arguments file: fix the input and run again
        UnsafePickleError(UnpicklingError)  a pickle refused (it asks for more than data)
        CheckpointError               a checkpoint or weights file that cannot be used
      DataError                       the shard set cannot give what was asked
        ShardError(ValueError)        one shard or sample that cannot be used (format, codec,
                                      size, damaged tar); `skip_bad_shards` skips these
      StorageError(OSError)           a read or write that failed, naming the URL
        StorageAccessError(PermissionError), StorageNotFoundError(FileNotFoundError),
        StorageUnavailableError       (transient: outlasted the retries; try again later)
      UnavailableError(RuntimeError)  not available here or now: a device, a library, a port, a
                                      torchrun environment, a folder another process holds
      ConvertError                    the conversion stopped (its output folder, a worker died)
      TrainingDiverged                the loss or weights are no longer finite
    Interrupted                       (not a Sen12msError) a run stopped on a signal after its checkpoint
"""

from __future__ import annotations

import functools
import pickle
import sys
from typing import Callable, Iterator, TypeVar

from .storage.redaction import redact

F = TypeVar("F", bound=Callable)


class Sen12msError(Exception):
    """An error of the user's input or environment (a bad file, a missing shard, a bad option,
    storage); its message is one line naming the file or URL, shown without a traceback."""


class InputError(ValueError, Sen12msError):
    """Input that cannot be used: an option, a patch or band name, a label, statistics, a manifest,
    a label, split or arguments file, a patch file. The message names the file or option."""


class UnsafePickleError(pickle.UnpicklingError, InputError):
    """A pickle that is not loaded: it asks for more than data, is over a limit or is broken."""


class CheckpointError(InputError):
    """A checkpoint or weights file that cannot be read, is unsafe, or does not fit the model."""


class DataError(Sen12msError):
    """A shard set that cannot be read as asked: one line naming the shard (and sample)."""


class ShardError(ValueError, DataError):
    """A shard (or a sample in it) that is missing, damaged, cut, of another size or format than
    the manifest says, or a member that does not decode."""


class StorageError(OSError, Sen12msError):
    """A read or write that failed; `str()` is one line naming the URL (user info redacted)."""

    def __init__(self, message: str, url: str = "") -> None:
        message, url = redact(message), redact(url)
        super().__init__(message)
        self.message, self.url = message, url

    def __str__(self) -> str:
        # webdataset appends the stream and URL to an exception's args; keep the one line.
        return self.message

    def __reduce__(self):  # loader workers pickle exceptions to the main process
        return (self.__class__, (self.message, self.url))


class StorageAccessError(StorageError, PermissionError):
    """403, a wrong key or secret, no credentials."""


class StorageNotFoundError(StorageError, FileNotFoundError):
    """No such object, file or bucket."""


class StorageUnavailableError(StorageError):
    """Transient errors (unreachable server, 5xx, broken transfers) that outlasted the retries."""


class UnavailableError(RuntimeError, Sen12msError):
    """Something the command needs is not available here or now: a device or device feature, an
    optional library, a port or server, a usable torchrun environment, a folder another process
    holds. The message says what to install or wait for."""


class ConvertError(Sen12msError):
    """A problem that stops the conversion (its output folder, its parts, a worker that died); the
    finished shards stay."""


class TrainingDiverged(Sen12msError):
    """The weights or the loss are no longer finite."""


class Interrupted(Exception):
    """The run stopped on a signal after writing a checkpoint (not a `Sen12msError`: the train
    command reports it itself, with the line to resume)."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum


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
