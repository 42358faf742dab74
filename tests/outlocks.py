"""Helpers of the tests of OUT's lock: a lock file as another run of `convert shards` leaves it
(alive, dead, on another machine), written in the format of convert/shards/outlock.py."""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import asdict
from pathlib import Path

from convert.shards.outfolder import lock_name
from convert.shards.outlock import Holder, start_ticks, this_machine
from convert.shards.plan import Part


def dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def lock_text(part: Part | None, pid: int, *, started: float | None = None, refreshed: float | None = None,
              pid_start: int | None = -1, **machine: str) -> str:
    """A lock of process `pid` on this machine (or the machine given by host, boot_id, pid_ns);
    pid_start -1: the real start time of `pid`."""
    now = time.time()
    holder = Holder(**dict(this_machine(), **machine), pid=pid,
                    pid_start=start_ticks(pid) if pid_start == -1 else pid_start,
                    started=now if started is None else started, refreshed=now if refreshed is None else refreshed,
                    part=None if part is None else str(part))
    return json.dumps(asdict(holder), sort_keys=True) + "\n"


def plant_lock(out: Path, part: Part | None, token: str, pid: int, **kw) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / lock_name(part, token)
    path.write_text(lock_text(part, pid, **kw))
    return path
