"""The scripts of examples/ run as a user runs them (a few steps on the sample shards): the
plain PyTorch loop, the Lightning script and the TorchGeo script."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize("script", ["pytorch_loop.py", "lightning_train.py", "torchgeo_train.py"])
def test_example_trains_a_few_steps(sample_shards, script, tmp_path):
    # Run from elsewhere, as a user who copied it: it needs only the installed package.
    proc = subprocess.run([sys.executable, str(REPO / "examples" / script), str(sample_shards), "3", "2"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("3 steps"), last
    losses = [float(v) for v in re.findall(r"loss'?:? (-?[0-9.]+|nan|inf)", last)]
    assert losses and all(math.isfinite(v) for v in losses), last
