"""`python tests/heldlockwrite.py MARK shards ...`: `python -m convert shards ...` that stops in
its first fsync, the one of its lock file (the first file a run writes): it creates the file MARK
and sleeps, so that a test can kill it while the lock is being written. With
SEN12MS_TEST_NO_O_TMPFILE=1 the run writes as on a file system without unnamed files (O_TMPFILE)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from convert.cli import main  # noqa: E402


def held_fsync(mark: str):
    fsync = os.fsync

    def first_fsync(fd: int) -> None:
        fsync(fd)
        os.fsync = fsync
        Path(mark).touch()
        time.sleep(3600)

    return first_fsync


if __name__ == "__main__":
    if os.environ.get("SEN12MS_TEST_NO_O_TMPFILE") == "1" and hasattr(os, "O_TMPFILE"):
        del os.O_TMPFILE
    os.fsync = held_fsync(sys.argv[1])
    sys.argv = [sys.argv[0]] + sys.argv[2:]
    main()
