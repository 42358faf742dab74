"""Progress of a run in a log: under a pipe (nohup, SLURM) a line on stderr at a steady interval
with step, samples/s, data-wait share, loss and ETAs; a bar on a terminal; nothing with
--no-progress."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import threading
from pathlib import Path

import pytest

from sen12ms_common.format.manifest import load_manifest
from train.run.progress import duration

pytestmark = pytest.mark.slow  # training runs under a pipe and a pty

REPO = Path(__file__).resolve().parents[1]
TRAIN_LINE = re.compile(r"^epoch (\d+)/(\d+): step (\d+)/(\d+) \((\d+)%\), ([\d.]+) samples/s, data wait (\d+)%, "
                        r"loss ([\d.]+), ETA epoch (\S+), run (\S+)$")
EVAL_LINE = re.compile(r"^test: batch (\d+)/(\d+) \((\d+)%\), ([\d.]+) samples/s, data wait (\d+)%, ETA (\S+)$")
DURATION = re.compile(r"^(\d+s|\d+m\d\ds|\d+h\d\dm)$")


def cli(module: str, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def piped_run(sample_shards: Path, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    run_dir = tmp_path_factory.mktemp("progress") / "run"
    proc = cli("train", "--shards", str(sample_shards), "--model", "SmallCNN", "--input", "rgb", "--epochs", "2",
               "--batch-size", "2", "--stats", "manifest", "--run-dir", str(run_dir), "--progress-interval", "0.05")
    return run_dir, proc


def test_a_piped_run_logs_progress_lines_at_the_interval(piped_run, sample_shards: Path):
    run_dir, proc = piped_run
    steps = -(-load_manifest(str(sample_shards)).samples("train") // 2)
    lines = [m for m in map(TRAIN_LINE.match, proc.stderr.splitlines()) if m]
    assert len(lines) >= 4, proc.stderr  # steps of a few tenths of a second: several lines per epoch
    seen = {int(m[1]) for m in lines}
    assert seen == {1, 2}, proc.stderr  # counted from 1: `epoch 1/2`
    for m in lines:
        epoch, last, step, total, pct = (int(m[i]) for i in range(1, 6))
        assert last == 2 and total == steps and 1 <= step <= steps and pct == round(100 * step / steps)
        assert float(m[6]) > 0 and 0 <= int(m[7]) <= 100 and 0 < float(m[8]) < 10
        assert DURATION.match(m[9]) and DURATION.match(m[10])
    # Within an epoch the step only grows; the lines are on stderr, not in the results on stdout or the log.
    for e in (1, 2):
        got = [int(m[3]) for m in lines if int(m[1]) == e]
        assert got == sorted(set(got)), proc.stderr
    assert "samples/s" not in proc.stdout
    (log,) = (run_dir / "logs").glob("*_train.log")
    assert "samples/s" not in log.read_text()


def test_evaluate_logs_progress_and_no_progress_silences_it(piped_run, sample_shards: Path, tmp_path: Path):
    run_dir, _ = piped_run
    (best,) = (run_dir / "checkpoints").glob("*_model_best.pth")
    n = load_manifest(str(sample_shards)).samples("test")
    common = ("--shards", str(sample_shards), "--checkpoint", str(best), "--batch-size", "1")
    shown = cli("train.evaluate", *common, "--out", str(tmp_path / "a"), "--progress-interval", "0.01")
    lines = [m for m in map(EVAL_LINE.match, shown.stderr.splitlines()) if m]
    assert lines and all(int(m[2]) == n and 1 <= int(m[1]) <= n for m in lines), shown.stderr
    quiet = cli("train.evaluate", *common, "--out", str(tmp_path / "b"), "--progress-interval", "0.01", "--no-progress")
    assert "samples/s" not in quiet.stderr and "ETA" not in quiet.stderr, quiet.stderr


def test_on_a_terminal_a_bar_instead_of_lines(piped_run, sample_shards: Path, tmp_path: Path):
    run_dir, _ = piped_run
    (best,) = (run_dir / "checkpoints").glob("*_model_best.pth")
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a bar needs a width
    chunks: list[bytes] = []

    def read() -> None:
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    proc = subprocess.run([sys.executable, "-m", "train.evaluate", "--shards", str(sample_shards), "--checkpoint",
                           str(best), "--batch-size", "1", "--out", str(tmp_path), "--progress-interval", "0.01"],
                          cwd=REPO, stdout=subprocess.PIPE, stderr=slave, timeout=300)
    os.close(slave)
    reader.join(timeout=10)
    os.close(master)
    terminal = b"".join(chunks).decode("utf-8", "replace")
    assert proc.returncode == 0, terminal
    assert "test:" in terminal and "batch/s]" in terminal, terminal
    assert "samples/s" not in terminal and "ETA" not in terminal, terminal


@pytest.mark.parametrize("seconds, text", [(0, "0s"), (44.6, "45s"), (60, "1m00s"), (1213, "20m13s"),
                                           (3600, "1h00m"), (118920, "33h02m"), (-3, "0s")])
def test_durations_read_at_a_glance(seconds, text):
    assert duration(seconds) == text
