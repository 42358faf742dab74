"""One process at a time in a local folder: an advisory lock (`flock`) on a lock file in it,
held while the process runs. The kernel releases it when the process ends however it ends
(kill -9 included), so a lock is never stale. Object-store prefixes have no such lock."""

from __future__ import annotations

import fcntl
import os
import time
from typing import IO

from .errors import Sen12msError


class FolderBusyError(Sen12msError):
    """Another process holds the folder's lock."""


def hold_folder_lock(folder: str, name: str, what: str) -> IO[str]:
    """Take the lock `folder/name` or raise `FolderBusyError` naming the holder; keep the returned
    file open as long as the lock must be held (closing it, or exiting, releases it)."""
    path = os.path.join(folder, name)
    f = open(path, "a+", encoding="utf-8")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip()[:200] or "another process"
        f.close()
        raise FolderBusyError(f"{folder}: {what} is already running in this folder ({holder}); wait for it "
                              "to end or choose another folder") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    f.flush()
    return f
