"""Worker processes for the converter's parallel steps: an ordered map that survives a dying worker."""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import traceback
from multiprocessing.connection import Connection
from typing import Any, Callable, Iterable, Iterator

from sen12ms_common.errors import ConvertError


class _WorkerDied(ConvertError):
    """A worker process ended while it still had work (killed by the system, out of memory?); the
    conversion names it in its own words."""


def die_with_parent(parent: int | None = None) -> None:
    """End this process when the process `parent` that forked it dies."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass
    # A parent killed between the fork and the prctl above sends no signal: the worker would wait
    # for work forever (seen with kill -9 during start-up).
    if parent is not None and os.getppid() != parent:
        os._exit(1)


def _serve(fn: Callable[[Any], Any], conn: Connection, inherited: list[Connection], parent: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(parent)
    # The other pipes' ends came with the fork: holding them would hide the end of a sibling's pipe.
    for other in inherited:
        other.close()
    while True:
        try:
            item = conn.recv()
        except (EOFError, OSError):
            return  # the parent closed the pipe: no more work
        try:
            reply = (True, fn(item))
        except Exception as exc:  # noqa: BLE001 - sent to the parent, which raises it
            reply = (False, f"{exc.__class__.__name__}: {exc}\n{traceback.format_exc()}")
        try:
            conn.send(reply)
        except OSError:
            return  # the parent stopped reading (an error or Ctrl-C ended the map)


class WorkerPool:
    """`workers` processes running `fn`; with one worker or fewer, `fn` runs in this process."""

    def __init__(self, fn: Callable[[Any], Any], workers: int) -> None:
        self.fn, self.workers = fn, workers
        self._conns: list[Connection] = []
        self._procs: list[Any] = []
        self._busy = False  # a map is running, or was left before its end: its results come next

    def __enter__(self) -> WorkerPool:
        if self.workers > 1:
            fork = "fork" in multiprocessing.get_all_start_methods()
            ctx = multiprocessing.get_context("fork" if fork else "spawn")
            pipes = [ctx.Pipe() for _ in range(self.workers)]
            try:
                for parent, child in pipes:
                    inherited = [c for pair in pipes for c in pair if c is not child] if fork else []
                    proc = ctx.Process(target=_serve, args=(self.fn, child, inherited, os.getpid()), daemon=True)
                    proc.start()
                    self._procs.append(proc)
                    self._conns.append(parent)
            except BaseException:
                self._stop()
                raise
            finally:
                for _, child in pipes:
                    child.close()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop()

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs]

    def map(self, items: Iterable[Any], window: int | None = None) -> Iterator[Any]:
        """fn(item) for each item, in order; at most `window` (default 4 per worker) in flight."""
        if not self._procs:
            yield from map(self.fn, items)
            return
        if self._busy:
            raise RuntimeError("a previous map of this pool was not read to its end")
        n = len(self._conns)
        window = max(1, window or 4 * n)
        sent = received = 0
        self._busy = True
        for item in items:
            self._send(sent % n, item)
            sent += 1
            if sent - received >= window:
                yield self._receive(received % n)
                received += 1
        while received < sent:
            yield self._receive(received % n)
            received += 1
        self._busy = False

    def _send(self, i: int, item: Any) -> None:
        try:
            self._conns[i].send(item)
        except OSError as exc:  # BrokenPipeError: the worker is gone
            raise _WorkerDied(self._died(i)) from exc

    def _receive(self, i: int) -> Any:
        try:
            ok, value = self._conns[i].recv()
        except (EOFError, OSError) as exc:  # OSError: "got end of file during message"
            raise _WorkerDied(self._died(i)) from exc
        if not ok:
            raise RuntimeError(f"in worker process {self._procs[i].pid}: {value}")
        return value

    def _died(self, i: int) -> str:
        proc = self._procs[i]
        proc.join(timeout=5)
        how = f"killed by signal {-proc.exitcode}" if proc.exitcode and proc.exitcode < 0 else f"exit code {proc.exitcode}"
        return f"worker process {proc.pid} died ({how})"

    def _stop(self) -> None:
        """Closing a pipe ends its worker after its current item. Busy workers (an error or
        Ctrl-C stopped the map) are terminated first: their work is of no use any more."""
        if self._busy:
            for proc in self._procs:
                proc.terminate()
        for conn in self._conns:
            conn.close()
        for proc in self._procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join()
        self._conns, self._procs, self._busy = [], [], False
