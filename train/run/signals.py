"""Stopping a run cleanly: SIGTERM / Ctrl-C set a flag that the run checks after every step."""

from __future__ import annotations

from sen12ms_common.errors import Interrupted

import signal
import threading
from contextlib import contextmanager
from typing import Any, Iterator


class StopFlag:
    """SIGTERM / Ctrl-C set a flag that the loop checks after every step; a second Ctrl-C
    interrupts at once. When the run ends with `Interrupted` the flag's handlers stay installed:
    the process is expected to exit, and a further SIGTERM must not kill it on the way."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def signal(self) -> int:
        """The signal that asked to stop (SIGTERM when none did: another rank was stopped)."""
        return self.signum or signal.SIGTERM

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    @contextmanager
    def installed(self) -> Iterator["StopFlag"]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old[sig] = signal.signal(sig, self._handle)
        interrupted = False
        try:
            yield self
        except Interrupted:
            # On the way out after a checkpoint: a further SIGTERM (torchrun stopping the other
            # ranks once one has exited) must not kill the process halfway through its exit.
            interrupted = True
            raise
        finally:
            if not interrupted:
                for sig, old in self._old.items():
                    signal.signal(sig, old)


__all__ = ["StopFlag"]
