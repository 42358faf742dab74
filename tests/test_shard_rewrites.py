"""Shards changed in place under a running epoch (issue 29, items 1 and 2), webdataset loader:
a shard cut short (to 0, or in its tail) while it is read is one line naming it, never a
SIGBUS; a shard rewritten in place after its checksum matched never gives a sample the bytes
written after the check."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from sen12ms_common.format.manifest import load_manifest
from shardcuts import cut_while_reading, plant_labels
from test_loader import spec, write_shards
from train.data import make_loader


@pytest.fixture(scope="module")
def long_shards(tmp_path_factory) -> Path:
    """Shards of 24 samples: an epoch with batches of 2 is still inside the first shard after a batch."""
    root = tmp_path_factory.mktemp("rewrites") / "shards"
    write_shards(root, {"train": [24, 24], "val": [24, 24], "test": [24, 24]})
    return root


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# The tail cut: by the last 3,000 bytes, inside the last member or the tar's end.
_BUILD = """
from test_loader import spec
from train.data import make_loader
from train.data.webdataset import ShardError
loader = make_loader("webdataset", spec(root, split, batch_size=2, workers=int(args[0]), threads=1, streams=1,
                                        verify=verify))
"""


@pytest.mark.slow  # a child process per case (a SIGBUS must not end the test run)
@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("verify", [True, False])
@pytest.mark.parametrize("mode", ["zero", "tail"])
def test_a_shard_cut_short_while_an_epoch_reads_it_is_one_line_naming_it(long_shards, tmp_path, mode, verify,
                                                                          workers):
    root = _copy(long_shards, tmp_path / "s")
    proc = cut_while_reading(_BUILD, "size - 3000", root, "val", mode, verify, str(workers), timeout=120)
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
    proc = cut_while_reading(_BUILD, "size - 3000", root, "val", "tail", True, "0", timeout=120)
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
    plant_labels(shard)
    for b in it:
        got.update(zip(b["key"], b["prob"].numpy()))
    loader.close()
    assert got.keys() == want.keys()
    changed = [k for k in want if not np.array_equal(got[k], want[k])]
    assert changed == [], f"{len(changed)} samples got a label written after the shard was checked"
