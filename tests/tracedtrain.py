"""`python tests/tracedtrain.py TRACE_DIR ARGS...`: `python -m train ARGS...` that appends
`split epoch key` lines of every sample each rank used to `TRACE_DIR/keys-rank<R>.txt`, from the
run's key log (`train.run.keylog`). The tests check with it that ranks read disjoint parts; the fault
tests make the file a FIFO (runstops.GatedTrace): the run then waits after each step until the
test has read it, so a signal reaches it mid-way however late the test is scheduled."""

from __future__ import annotations

import logging
import runpy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train.run.keylog import KEYS_LOG  # noqa: E402

class KeyTrace(logging.Handler):
    """Writes each key record to its rank's file, opened and closed per batch (a FIFO holds the
    run right there)."""

    def __init__(self, folder: Path) -> None:
        super().__init__(logging.DEBUG)
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def emit(self, record: logging.LogRecord) -> None:
        with open(self.folder / f"keys-rank{record.rank}.txt", "a", encoding="utf-8") as f:
            f.writelines(f"{record.split} {record.epoch} {k}\n" for k in record.keys)


if __name__ == "__main__":
    KEYS_LOG.addHandler(KeyTrace(Path(sys.argv[1])))
    KEYS_LOG.setLevel(logging.DEBUG)
    KEYS_LOG.propagate = False
    sys.argv = [sys.argv[0]] + sys.argv[2:]
    runpy.run_module("train", run_name="__main__", alter_sys=True)
