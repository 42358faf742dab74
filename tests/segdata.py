"""Helpers of the segmentation data tests: sample SEN12MS and DFC2020 trees converted together, as a
user does it (`convert synth`, then one `convert shards` with --data given twice)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import rasterio

REPO = Path(__file__).resolve().parents[1]


def run_convert(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "convert", *args], cwd=REPO, capture_output=True, text=True, env=env)


def make_trees(root: Path) -> tuple[Path, Path]:
    """A SEN12MS sample tree (4 scenes x 4) and a DFC2020 one (4 regions x 3: 6 validation, 6 test)."""
    sen, dfc = root / "sen12ms", root / "dfc2020"
    for args in (["--out", str(sen), "--scenes", "4", "--patches-per-scene", "4", "--seed", "3"],
                 ["--layout", "dfc2020", "--out", str(dfc), "--scenes", "4", "--patches-per-scene", "3", "--seed", "3"]):
        proc = run_convert("synth", *args)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return sen, dfc


def convert_both(sen: Path, dfc: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    """The documented sequence: both trees into one OUT, lc stored for the SEN12MS masks."""
    proc = run_convert("shards", "--data", str(sen), "--data", str(dfc), "--out", str(out), "--modalities", "s1,s2,lc",
                       "--shard-size", "1MB", "--workers", "2", "--no-progress", *extra)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def band1(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(1)


def read_all(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read()
