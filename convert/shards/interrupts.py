"""Ctrl-C at a safe point: a SIGINT that arrives while a step commits (a shard renamed into
place, its index and commit record) is held until the step is done, then raised."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def deferred_interrupt() -> Iterator[None]:
    """Run the block to its end before a Ctrl-C takes effect; a second Ctrl-C within it raises
    at once (the user insists; `--resume` cleans up what is left)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.getsignal(signal.SIGINT)
    if not callable(old):  # ignored (a background job) or default: nothing to hold
        yield
        return
    held: list[int] = []

    def hold(signum: int, frame) -> None:
        if held:
            raise KeyboardInterrupt
        held.append(signum)

    signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
    if held:
        old(held[0], None)
