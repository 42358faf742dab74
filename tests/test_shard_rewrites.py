"""Shards changed in place under a running epoch (issue 29, items 1 and 2), webdataset loader:
a shard cut short (to 0, or in its tail) while it is read is one line naming it, never a
SIGBUS; a shard rewritten in place after its checksum matched never gives a sample the bytes
written after the check."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from sen12ms_common.format.manifest import load_manifest
from sen12ms_common.format.sample import LABEL_EXT
from test_loader import spec, write_shards
from train.data import make_loader

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def long_shards(tmp_path_factory) -> Path:
    """Shards of 24 samples: an epoch with batches of 2 is still inside the first shard after a batch."""
    root = tmp_path_factory.mktemp("rewrites") / "shards"
    write_shards(root, {"train": [24, 24], "val": [24, 24], "test": [24, 24]})
    return root


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def label_offsets(shard: Path) -> list[tuple[int, int]]:
    """(data offset, size) of every label member of `shard`, in order."""
    with tarfile.open(shard) as tar:
        return [(m.offset_data, m.size) for m in tar.getmembers() if m.name.endswith("." + LABEL_EXT)]


# The child reads a batch of the first shard, cuts every shard of the split in place (to 0 bytes,
# or by its last 3,000 bytes: inside the last member or the tar's end), and reads on.
_CUT = """
import os, sys
sys.path.insert(0, "tests")
from test_loader import spec
from train.data import make_loader
from train.data.webdataset import ShardError
root, mode, verify, workers = sys.argv[1], sys.argv[2], sys.argv[3] == "1", int(sys.argv[4])
loader = make_loader("webdataset", spec(root, "val", batch_size=2, workers=workers, threads=1, streams=1,
                                        verify=verify))
it = loader.epoch(0)
n = len(next(it)["key"])
for name in sorted(os.listdir(root)):
    if name.startswith("val-"):
        p = os.path.join(root, name)
        os.truncate(p, 0 if mode == "zero" else os.path.getsize(p) - 3000)
try:
    for b in it:
        n += len(b["key"])
    print("READ", n)
except ShardError as exc:
    print("ERROR", exc)
finally:
    loader.close()
"""


@pytest.mark.slow  # a child process per case (a SIGBUS must not end the test run)
@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("verify", [True, False])
@pytest.mark.parametrize("mode", ["zero", "tail"])
def test_a_shard_cut_short_while_an_epoch_reads_it_is_one_line_naming_it(long_shards, tmp_path, mode, verify,
                                                                          workers):
    root = _copy(long_shards, tmp_path / "s")
    proc = subprocess.run([sys.executable, "-c", _CUT, str(root), mode, "1" if verify else "0", str(workers)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"rc {proc.returncode}: {proc.stderr[-2000:]}"
    out = proc.stdout.strip()
    assert "Traceback" not in proc.stderr and len(out.splitlines()) == 1, out + proc.stderr
    if out.startswith("READ"):
        # Only where every shard had been read whole before the cut (verified shards are
        # hashed whole first): every sample, with the bytes that were hashed.
        assert verify and int(out.split()[1]) == 48
    else:
        assert out.startswith("ERROR ") and str(root / "val-00000") in out, out


@pytest.mark.slow
def test_the_second_shard_cut_short_before_it_is_read_is_named(long_shards, tmp_path):
    """The first shard is read whole (verified) into private memory, so only the second can fail."""
    root = _copy(long_shards, tmp_path / "s")
    proc = subprocess.run([sys.executable, "-c", _CUT, str(root), "tail", "1", "0"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("ERROR "), proc.stdout + proc.stderr[-2000:]
    assert f"{root / 'val-000001.tar'}" in proc.stdout


@pytest.mark.parametrize("workers", [0, 2])
def test_a_shard_rewritten_in_place_after_its_checksum_matched_gives_only_the_checked_bytes(long_shards, tmp_path,
                                                                                            workers):
    """Every label of the first shard is overwritten (same size, in place) once the loader has
    checked it and handed out its first batch: the epoch still gives the labels that were checked."""
    root = _copy(long_shards, tmp_path / "s")
    s = spec(root, "val", batch_size=2, workers=workers, threads=1, streams=1)
    want = {k: p for b in make_loader("webdataset", s).epoch(0) for k, p in zip(b["key"], b["prob"].numpy())}
    loader = make_loader("webdataset", s)
    it = loader.epoch(0)
    got = {}
    first = next(it)
    got.update(zip(first["key"], first["prob"].numpy()))
    shard = root / load_manifest(str(root)).shards("val")[0].name
    planted = np.zeros(17, np.float32)
    planted[3] = 1.0
    with open(shard, "r+b") as f:
        for offset, size in label_offsets(shard):
            f.seek(offset)
            f.write(planted.tobytes()[:size])
    for b in it:
        got.update(zip(b["key"], b["prob"].numpy()))
    loader.close()
    assert got.keys() == want.keys()
    changed = [k for k in want if not np.array_equal(got[k], want[k])]
    assert changed == [], f"{len(changed)} samples got a label written after the shard was checked"
