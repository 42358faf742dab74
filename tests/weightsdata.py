"""The fixture of the starting-weights, preset and baseline-file tests: a SEN12MS sample (4 scenes
x 2 patches) and a DFC2020 sample (2 regions x 2 patches) converted into one shard set with masks,
as a user does it. Import `seg_sample` into a test module to use it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def seg_sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from convert.sample.sen12ms import synthesize
    from convert.sample.dfc2020 import synthesize_dfc2020

    root = tmp_path_factory.mktemp("weights")
    synthesize(root / "sen12ms", scenes=4, patches_per_scene=2, seed=5, progress=False)
    synthesize_dfc2020(root / "dfc", regions=2, patches_per_region=2, seed=5, progress=False)
    proc = subprocess.run([sys.executable, "-m", "convert", "shards", "--data", str(root / "sen12ms"), "--data",
                           str(root / "dfc"), "--out", str(root / "shards"), "--modalities", "s1,s2,lc",
                           "--workers", "1", "--no-progress"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return root / "shards"
