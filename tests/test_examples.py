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
SCRIPTS = ("pytorch_loop.py", "lightning_train.py", "torchgeo_train.py")


@pytest.mark.slow
def test_each_example_trains_a_few_steps(sample_shards, tmp_path):
    # The three start together (their imports overlap), each with its output in files (a full
    # pipe must not stall one while another is waited for). Each runs from a folder of its own, as
    # a user who copied it: it needs only the installed package.
    procs = {}
    for script in SCRIPTS:
        where = tmp_path / script.removesuffix(".py")
        where.mkdir()
        with open(where / "stdout", "w") as out, open(where / "stderr", "w") as err:
            procs[script] = (where, subprocess.Popen(
                [sys.executable, str(REPO / "examples" / script), str(sample_shards), "3", "2"],
                cwd=where, stdout=out, stderr=err, text=True))
    try:
        for script, (where, proc) in procs.items():
            code = proc.wait(timeout=600)
            stdout, stderr = (where / "stdout").read_text(), (where / "stderr").read_text()
            assert code == 0, (script, stdout[-2000:] + stderr[-4000:])
            last = stdout.strip().splitlines()[-1]
            assert last.startswith("3 steps"), (script, last)
            losses = [float(v) for v in re.findall(r"loss'?:? (-?[0-9.]+|nan|inf)", last)]
            assert losses and all(math.isfinite(v) for v in losses), (script, last)
    finally:
        for _, proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
