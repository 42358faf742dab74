"""One process at a time in a local folder: an advisory lock (`flock`) on the folder itself,
held while the process runs. No file is created, and the kernel releases the lock when the
process ends however it ends (kill -9 included), so a lock is never stale. Object-store
prefixes have no such lock."""

from __future__ import annotations

import fcntl
import os

from ..errors import UnavailableError


class FolderLock:
    """A held lock on a folder; `release()` (or the process's end) lets another process take it."""

    def __init__(self, folder: str, what: str) -> None:
        self.fd: int | None = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.release()
            raise UnavailableError(f"{folder}: {what} is already running in this folder; wait for it to end or "
                                   "choose another folder") from None

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
