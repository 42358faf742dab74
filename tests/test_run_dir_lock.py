"""One training at a time per run folder (issue 29, item 6): a second `python -m train` on a
`--run-dir` that a running training uses is refused in one line and writes nothing there; the
first finishes with its own files intact; the lock never outlives its process (kill -9)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # training runs in subprocesses

REPO = Path(__file__).resolve().parents[1]
TRAIN = ("--model", "SmallCNN", "--input", "rgb", "--batch-size", "8", "--workers", "0", "--streams", "1",
         "--stats", "manifest", "--seed", "5", "--device", "cpu")


def start(shards: Path, run: Path, epochs: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "train", "--shards", str(shards), *TRAIN, "--epochs", str(epochs),
                             "--run-dir", str(run)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def wait_for_lock(proc: subprocess.Popen, run: Path) -> None:
    """Until `proc` holds the run folder's lock (it writes its arguments file once it does)."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if list(run.glob("logs/*_arguments.txt")):
            return
        time.sleep(0.05)
    raise AssertionError(f"the first training never started: {proc.communicate()}")


def test_a_second_training_on_a_busy_run_dir_is_refused(sample_shards: Path, tmp_path: Path) -> None:
    run, run2 = tmp_path / "run", tmp_path / "run2"
    # Far more epochs than the test waits for: the first is still running whatever the machine's load
    # when the second starts (SIGTERM ends it below, with a checkpoint). The run that is killed -9
    # (in another folder) starts beside it, and the one after it beside the second: their start-ups
    # (torch's import) overlap.
    first, killed = start(sample_shards, run, epochs=10_000), start(sample_shards, run2, epochs=50)
    wait_for_lock(first, run)
    wait_for_lock(killed, run2)
    killed.send_signal(signal.SIGKILL)
    killed.communicate(timeout=60)
    second, after = start(sample_shards, run, epochs=1), start(sample_shards, run2, epochs=1)
    out, err = second.communicate(timeout=300)
    assert second.returncode == 1, err
    assert err.splitlines() == [f"Error: {run}: another training is already running in this folder; wait for it "
                                "to end or choose another folder"], err
    assert first.poll() is None  # it was still running when refused
    first.send_signal(signal.SIGTERM)
    out, err = first.communicate(timeout=600)
    assert first.returncode == 128 + signal.SIGTERM, err  # stopped with its checkpoint, as SIGTERM does
    assert len(list((run / "logs").glob("*_arguments.txt"))) == 1
    metrics = run / "metrics.csv"
    if metrics.exists():  # one run's epochs only (one timestamp), counted from 1
        rows = [row.split(",")[:2] for row in metrics.read_text().splitlines()[1:]]
        assert len({ts for ts, _ in rows}) <= 1 and [e for _, e in rows] == [str(i) for i in range(1, len(rows) + 1)]
    out, err = after.communicate(timeout=600)
    assert after.returncode == 0, err  # the lock died with its process
