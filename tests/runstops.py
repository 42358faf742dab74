"""Helpers of the tests that interrupt a running job: where the trainer says a signal stopped
it, and a key trace that holds the run right after a chosen step.

A test that polls a file and then signals (or damages a shard) can be scheduled late on a busy
machine; the job has then gone further, or finished. `GatedTrace` makes the trainer wait for the
test instead, and `stop_points` reads where the run really stopped from its own message."""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

_STOP = re.compile(r"stopped by signal (\d+) (?:in epoch (\d+) after step (\d+)|after epoch (\d+)"
                   r"|during the test evaluation); (.*)")


@dataclass(frozen=True)
class StopPoint:
    epoch: int  # the epoch to resume (0-based)
    batch: int  # batches of it already trained
    step: int   # optimizer steps so far
    rest: str   # what follows the semicolon: where the checkpoint is


def stop_points(stderr: str, steps_per_epoch: int, epochs: int) -> list[StopPoint]:
    """Every stop message in `stderr` (one per rank), in order."""
    found = []
    for line in stderr.splitlines():
        m = _STOP.search(line)
        if m is None:
            continue
        signum, epoch, step, after, rest = m.groups()
        assert int(signum) == 15, line
        # The message counts epochs from 1; a StopPoint from 0, as the checkpoint does.
        if epoch is not None:
            e, s = int(epoch) - 1, int(step)
            found.append(StopPoint(e, s - e * steps_per_epoch, s, rest))
        else:
            e = int(after) if after is not None else epochs  # during the test: all epochs done
            found.append(StopPoint(e, 0, e * steps_per_epoch, rest))
    return found


class GatedTrace:
    """Makes a rank's key trace (tests/tracedtrain.py) a FIFO read by a thread, so that the run
    cannot move past the trace line a test waits for: the rank writes its keys after every
    step and waits there until they are read. When a chunk matches `when`, `act` (send a
    signal, damage a shard) runs before the next chunk is read, so it always reaches a running
    job a step or two after that line, however late the test is scheduled. `close()` puts the
    lines back as a plain file."""

    def __init__(self, path: Path, when: Callable[[str], bool], act: Callable[[], None]) -> None:
        self.path, self.when, self.act = path, when, act
        self.lines: list[str] = []
        self.acted = threading.Event()
        self.error: BaseException | None = None
        self._done = False
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mkfifo(path)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            while not self._done:
                with open(self.path, encoding="utf-8") as f:  # waits for the rank's next write
                    text = f.read()
                self.lines.extend(text.splitlines())
                if not self.acted.is_set() and self.when(text):
                    self.act()
                    self.acted.set()
        except BaseException as exc:  # reported by close()
            self.error = exc
            self.acted.set()

    def close(self) -> None:
        """After the run has exited."""
        self._done = True
        for _ in range(200):
            try:
                os.close(os.open(self.path, os.O_WRONLY | os.O_NONBLOCK))  # wakes a reader waiting in open()
            except OSError:
                pass  # ENXIO: it is not waiting there (yet)
            self._thread.join(timeout=0.05)
            if not self._thread.is_alive():
                break
        self.path.unlink()
        self.path.write_text("".join(line + "\n" for line in self.lines), encoding="utf-8")
        if self.error is not None:
            raise self.error
