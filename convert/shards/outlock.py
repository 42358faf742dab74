"""One writer per OUT (per part, for `--part I/N`): the lock file `OUT/.lock[-<part>]-<token>.json`
that a running `convert shards` writes first, refreshes and removes at its end, and the rule for
when another run's lock may be taken over (docs/FORMAT.md, "The lock")."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from convert.shards.outfolder import LOCK_RE, Entry, OutState, lock_name, part_count_of
from convert.shards.plan import Part
from sen12ms_common.errors import ConvertError
from sen12ms_common.storage import files as storage

STALE_AFTER = 600.0  # seconds without a refresh before --break-lock may take a lock of another machine
REFRESH_EVERY = 60.0


def _read(path: str) -> str:
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return ""


def start_ticks(pid: int) -> int | None:
    """When a process started (clock ticks since boot; Linux), or None where this cannot be read."""
    stat = _read(f"/proc/{pid}/stat")
    fields = stat.rpartition(")")[2].split()
    return int(fields[19]) if len(fields) > 19 else None


def this_machine() -> dict[str, str]:
    """What tells this machine from others sharing OUT: host name, boot id and pid namespace."""
    try:
        pid_ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        pid_ns = ""
    return {"host": socket.gethostname(), "boot_id": _read("/proc/sys/kernel/random/boot_id"), "pid_ns": pid_ns}


@dataclass(frozen=True)
class Holder:
    """What a lock says about the run that holds it."""

    host: str
    boot_id: str
    pid_ns: str
    pid: int
    pid_start: int | None
    started: float  # seconds since the epoch
    refreshed: float
    part: str | None  # "3/16", or None without --part

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.started))
        return f"host {self.host}, pid {self.pid}, started {when}"

    def command(self) -> str:
        return "`convert shards" + (f" --part {self.part}`" if self.part else "`")

    def gone(self) -> bool | None:
        """True: provably not running any more; False: running; None: cannot tell (another machine)."""
        here = this_machine()
        if not here["boot_id"] or [self.host, self.boot_id, self.pid_ns] != list(here.values()):
            return None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass  # alive, another user's
        return self.pid_start is not None and start_ticks(self.pid) not in (None, self.pid_start)


def conflicts(a: str | None, b: str | None) -> bool:
    """Whether runs of these part tags cannot write into one OUT at once: only different parts of
    one conversion in parts can."""
    if a is None or b is None:
        return True
    return a == b or part_count_of(a) != part_count_of(b)


def _age(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} minutes"


class OutLock:
    """The lock of one run; `with OutLock(out, part) as lock:` holds it, refreshed, until the end."""

    def __init__(self, out: str, part: Part | None, break_lock: bool = False) -> None:
        self.out, self.part, self.break_lock = out, part, break_lock
        self.token = uuid.uuid4().hex[:12]
        self.path = lock_name(part, self.token)
        self.url = storage.join(out, self.path)
        self.keep = False  # leave the lock behind: a cleanup failed, the next run must know it crashed
        now = time.time()
        self._holder = Holder(**this_machine(), pid=os.getpid(), pid_start=start_ticks(os.getpid()), started=now,
                              refreshed=now, part=None if part is None else str(part))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _write(self, first: bool = False) -> None:
        text = json.dumps(asdict(self._holder), sort_keys=True) + "\n"
        # The first write leaves no temporary where it can (a kill then leaves nothing); a refresh
        # replaces the lock, and its temporary beside the lock goes with the lock once its run is gone.
        (storage.create_text if first else storage.write_text)(self.url, text, owner=self.token)

    def __enter__(self) -> OutLock:
        try:
            self._write(first=True)
        except storage.StorageError as exc:  # name the folder the user gave, not the lock in it
            raise type(exc)(exc.message.replace(self.url, self.out), self.out) from exc
        except OSError as exc:
            raise ConvertError(f"{self.out}: cannot write into the output folder ({exc.strerror or exc})") from exc
        self._thread = threading.Thread(target=self._refresh, name="out-lock", daemon=True)
        self._thread.start()
        return self

    def _refresh(self) -> None:
        while not self._stop.wait(REFRESH_EVERY):
            self._holder = Holder(**dict(asdict(self._holder), refreshed=time.time()))
            try:
                self._write()
            except Exception:  # noqa: BLE001 - the conversion's own writes report a failing store
                pass

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if not self.keep:
            try:
                storage.remove(self.url)
            except OSError:
                pass  # left behind: the next run on this machine sees that its holder is gone

    def check(self, state: OutState) -> list[Entry]:
        """Refuse if another run may be writing this conversion (or part) in OUT; returns the
        locks of this conversion whose holders are gone (their temporaries and lock are removed
        once this run has cleaned up after them)."""
        gone: list[Entry] = []
        me = None if self.part is None else self.part.tag
        for e in state.entries:
            if e.kind != "lock" or e.owner == self.token or not conflicts(e.tag, me):
                continue
            holder = self._holder_of(state, e)
            if holder is None:  # its run ended since the listing
                continue
            status, age = self._status(holder)
            if status and e.tag == me:
                gone.append(e)
            elif not status:
                raise ConvertError(self._refusal(holder, status, age))
        return gone

    def _status(self, holder: Holder) -> tuple[bool | None, float]:
        """Whether a holder is gone for this run (a stale one of another machine with --break-lock), and its age."""
        status = holder.gone()
        age = time.time() - holder.refreshed
        if status is None and self.break_lock and age > STALE_AFTER:
            status = True
        return status, age

    def orphans(self, state: OutState) -> list[Entry]:
        """Temporaries of this conversion's locks without their lock (a run killed while it wrote
        its lock) whose holder, read from the temporary, is gone by the rules of `check`. One that
        cannot be read as a lock, or whose name is not that of its lock's own write, stays."""
        locks = {e.owner for e in state.entries if e.kind == "lock"}
        orphans = []
        for e in state.of(self.part, "temp"):
            m = LOCK_RE.match(e.target)
            if m is None or e.owner != m["token"] or e.owner in locks or e.owner == self.token:
                continue
            try:
                doc: Any = json.loads(storage.read_text(state.url(e.path)))
                gone = self._status(Holder(**{k: doc[k] for k in Holder.__dataclass_fields__}))[0]
            except FileNotFoundError:  # renamed into place since the listing: a lock this run did not see
                continue
            except (ValueError, TypeError, KeyError):  # empty or half-written: whose it is cannot be told
                continue
            if gone:
                orphans.append(e)
        return orphans

    def _holder_of(self, state: OutState, e: Entry) -> Holder | None:
        url = state.url(e.path)
        try:
            doc: Any = json.loads(storage.read_text(url))
            return Holder(**{k: doc[k] for k in Holder.__dataclass_fields__})
        except FileNotFoundError:
            return None
        except (ValueError, TypeError, KeyError) as exc:
            raise ConvertError(f"{url}: damaged lock file ({exc}); remove it if no `convert shards` is writing into "
                               f"{self.out}") from exc

    def _refusal(self, h: Holder, status: bool | None, age: float) -> str:
        if status is False:
            return (f"{self.out}: another {h.command()} is writing into it ({h.describe()}); wait for it to end, "
                    "or choose another folder")
        if self.break_lock:
            return (f"{self.out}: the lock of another {h.command()} ({h.describe()}) was refreshed {_age(age)} ago: "
                    f"it is still running; --break-lock takes only a lock not refreshed for {_age(STALE_AFTER)}")
        return (f"{self.out}: another {h.command()} holds its lock ({h.describe()}, refreshed {_age(age)} ago); if "
                f"it is no longer running, run again with --break-lock (once the lock is {_age(STALE_AFTER)} old)")
