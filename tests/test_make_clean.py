"""`make clean` removes what the Makefile made (the demo, the bench's data and scratch, the GPU
check's scratch) and never `out/` (the README's shard folder) or `runs/` (the trainer's default
run folder): run in a copy of the repository's Makefile with every folder present."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MADE = ("demo", "bench/data", "bench/out", "gpucheck", ".pytest_cache")
KEPT = ("out", "runs", "bench/kept", "shards", "labels_out")


@pytest.mark.skipif(shutil.which("make") is None, reason="no make here")
def test_make_clean_keeps_out_and_runs(tmp_path: Path):
    shutil.copy(REPO / "Makefile", tmp_path / "Makefile")
    for folder in MADE + KEPT:
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "file.txt").write_text(folder)
    proc = subprocess.run(["make", "clean"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert [f for f in MADE if (tmp_path / f).exists()] == []
    assert [f for f in KEPT if (tmp_path / f / "file.txt").read_text() != f] == []
    # `make clean DEMO=...` removes the demo it was told about, and still nothing else.
    (tmp_path / "mydemo").mkdir()
    subprocess.run(["make", "clean", "DEMO=mydemo"], cwd=tmp_path, check=True, capture_output=True, timeout=60)
    assert not (tmp_path / "mydemo").exists() and (tmp_path / "out" / "file.txt").exists()


def test_make_help_says_what_clean_keeps():
    proc = subprocess.run(["make", "-s", "help"], cwd=REPO, capture_output=True, text=True, timeout=60)
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("make clean"))
    assert "never out/ or runs/" in line
