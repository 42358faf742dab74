"""Shared fixtures: the real reference files and a small generated SEN12MS tree per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from s3server import s3_env, s3_prefix, s3_server  # noqa: F401  (fixtures: a real S3 server)

REPO = Path(__file__).resolve().parents[1]


def _reference_root() -> Path:
    env = os.environ.get("SEN12MS_REFERENCE")
    return Path(env) if env else REPO.parent / "shared" / "reference"


@pytest.fixture(scope="session")
def reference() -> Path:
    """../shared/reference: real SEN12MS patches and the original toolbox's split files."""
    root = _reference_root()
    if not root.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"reference data missing at {root} (CI must have shared/ beside the clone)")
        pytest.skip(f"reference data not found at {root}; set SEN12MS_REFERENCE")
    return root


@pytest.fixture(scope="session")
def real_dir(reference: Path) -> Path:
    return reference / "real"


@pytest.fixture(scope="session")
def toolbox_dir(reference: Path) -> Path:
    return reference / "sen12ms-toolbox"


@pytest.fixture(scope="session")
def sample_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small sample tree (8 scenes x 6 patches, with the known broken triplet). Read-only."""
    from convert.sample.sen12ms import synthesize

    root = tmp_path_factory.mktemp("sample") / "sen12ms"
    synthesize(root, scenes=8, patches_per_scene=6, seed=7, broken=True, progress=False)
    return root


@pytest.fixture(scope="session")
def sample_shards(sample_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`python -m convert shards` of the sample tree, small shards (several per split). Read-only."""
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("shards") / "shards"
    proc = subprocess.run([sys.executable, "-m", "convert", "shards", "--data", str(sample_tree), "--out", str(out),
                           "--shard-size", "5MB", "--workers", "2", "--no-progress"],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out
