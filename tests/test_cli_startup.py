"""`--help` answers without loading the heavy libraries: every command's options are declared in
modules that import none of them (train.cli.schema), and a command imports what it runs on when it
runs. Measured by the imports `python -X importtime` reports, not by the clock."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HEAVY = {"torch", "torchvision", "numba", "rasterio", "sklearn", "matplotlib", "nvidia", "tqdm", "PIL", "scipy"}
_IMPORTED = re.compile(r"^import time:\s+\d+\s+\|\s+\d+\s+\|\s+(?P<name>\S+)\s*$")


def imports_of(*args: str) -> tuple[set[str], str]:
    """The top-level packages a command imports, and what it printed."""
    proc = subprocess.run([sys.executable, "-X", "importtime", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    names = {m["name"].split(".")[0] for line in proc.stderr.splitlines() if (m := _IMPORTED.match(line))}
    assert "click" in names  # the report was read (click builds every --help)
    return names, proc.stdout


@pytest.mark.parametrize("command", [["train"], ["train.evaluate"], ["train.predict"], ["convert"],
                                     ["convert", "shards"]])
def test_help_imports_no_heavy_library(command: list[str]):
    names, out = imports_of("-m", *command, "--help")
    assert out.startswith("Usage:") and "--help" in out
    assert not names & HEAVY, sorted(names & HEAVY)


def test_the_training_command_still_loads_torch_when_it_runs(tmp_path: Path):
    # The other side: the same measurement sees torch once the command does work (here it fails
    # on a missing shard set after its imports), so an empty answer above is not the probe's blindness.
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "train", "--shards", str(tmp_path / "none"),
                           "--run-dir", str(tmp_path / "run")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    names = {m["name"].split(".")[0] for line in proc.stderr.splitlines() if (m := _IMPORTED.match(line))}
    assert "torch" in names
