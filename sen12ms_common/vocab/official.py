"""The original toolbox's official lists (hold-out scenes, test split), shipped as package data in sen12ms_common/data/."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

HOLDOUT_NAME = "SEN12MS_holdOutScenes.txt"
TEST_LIST_NAME = "test_list.txt"


def shipped(name: str) -> Path:
    """The path of a file of sen12ms_common/data/, wherever the package is installed."""
    return Path(str(files("sen12ms_common").joinpath("data", name)))


OFFICIAL_HOLDOUT = shipped(HOLDOUT_NAME)
OFFICIAL_TEST_LIST = shipped(TEST_LIST_NAME)
