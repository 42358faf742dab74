"""Waiting for processes to end on the event itself: a pidfd (Linux) becomes readable when its
process exits, so a test blocks until then instead of polling."""

from __future__ import annotations

import os
import select
import time
from pathlib import Path


def _stat(pid: int) -> list[str] | None:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def running(pids: list[int]) -> list[int]:
    """The processes of `pids` that exist and have not exited (a zombie has)."""
    return [p for p in pids if (s := _stat(p)) is not None and s[0] != "Z"]


def group(pgid: int) -> list[int]:
    """The running processes of a process group."""
    pids = [int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit()]
    return [p for p in running(pids) if (s := _stat(p)) is not None and int(s[2]) == pgid]


def wait_exited(pids: list[int], timeout: float) -> list[int]:
    """Block until every process of `pids` has exited or `timeout` seconds passed; returns those
    still running then."""
    deadline = time.monotonic() + timeout
    fds: dict[int, int] = {}
    try:
        for pid in running(pids):
            try:
                fds[os.pidfd_open(pid)] = pid
            except ProcessLookupError:
                pass
        while fds and (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select(list(fds), [], [], left)
            for fd in ready:
                os.close(fd)
                del fds[fd]
        return running(list(fds.values()))
    finally:
        for fd in fds:
            os.close(fd)


def wait_group_exited(pgid: int, timeout: float) -> bool:
    """Block until no process of the group runs (True) or `timeout` seconds passed (False)."""
    deadline = time.monotonic() + timeout
    while members := group(pgid):
        left = deadline - time.monotonic()
        if left <= 0 or wait_exited(members, left):
            return not group(pgid)
    return True
