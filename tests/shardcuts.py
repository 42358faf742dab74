"""Helpers of the tests that change shards in place under a running epoch (test_shard_rewrites for
the webdataset loader, test_dali_rewrites for DALI's): cut a split's shards short in a child
process while it reads them, and overwrite every label of a shard in place."""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np

from sen12ms_common.format.sample import LABEL_EXT

REPO = Path(__file__).resolve().parents[1]

# The child builds its loader (the caller's code, with `root`, `split`, `verify` and `args` bound),
# reads one batch, cuts every shard of the split in place (to 0 bytes, or to `keep` of its `size`:
# inside its tail), and reads on. A child: a SIGBUS must not end the test run.
_CUT = """
import os, sys
sys.path.insert(0, "tests")
root, split, mode, verify, args = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1", sys.argv[5:]
{build}
it = loader.epoch(0)
n = len(next(it)["key"])
for name in sorted(os.listdir(root)):
    if name.startswith(split + "-") and name.endswith(".tar"):
        p = os.path.join(root, name)
        size = os.path.getsize(p)
        os.truncate(p, 0 if mode == "zero" else {keep})
try:
    for b in it:
        n += len(b["key"])
    print("READ", n)
except ShardError as exc:
    print("ERROR", exc)
finally:
    loader.close()
"""


def cut_while_reading(build: str, keep: str, root: Path, split: str, mode: str, verify: bool, *args: str,
                      timeout: int) -> subprocess.CompletedProcess:
    """Run the child: `build` (Python lines) binds `loader` and imports `ShardError`; `keep` is
    the tail cut's new length, an expression of `size`. Its stdout is one line: "READ n" (samples
    read in all) or "ERROR <the ShardError's text>"."""
    code = _CUT.format(build=build, keep=keep)
    return subprocess.run([sys.executable, "-c", code, str(root), split, mode, "1" if verify else "0", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=timeout)


def label_offsets(shard: Path) -> list[tuple[int, int]]:
    """(data offset, size) of every label member of `shard`, in order."""
    with tarfile.open(shard) as tar:
        return [(m.offset_data, m.size) for m in tar.getmembers() if m.name.endswith("." + LABEL_EXT)]


def plant_labels(shard: Path) -> None:
    """Overwrite every label of `shard` in place (same size) with a one-hot label of class 3."""
    planted = np.zeros(17, np.float32)
    planted[3] = 1.0
    with open(shard, "r+b") as f:
        for offset, size in label_offsets(shard):
            f.seek(offset)
            f.write(planted.tobytes()[:size])
