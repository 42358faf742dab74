"""Shared fixtures: the real reference files and a small generated SEN12MS tree per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
    from convert.synth import synthesize

    root = tmp_path_factory.mktemp("sample") / "sen12ms"
    synthesize(root, scenes=8, patches_per_scene=6, seed=7, broken=True, progress=False)
    return root
