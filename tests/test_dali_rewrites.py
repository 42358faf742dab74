"""Shards and index files the DALI loader (CPU-only) must not trust (issue 29, items 1-3): a shard
cut short while an epoch reads it is one line naming a shard, never a SIGBUS; a shard rewritten
in place after its checksum matched gives no sample its new bytes; an index file whose entries
disagree with its tar is refused with verification on."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nvidia.dali", reason="the dali extra is not installed")

from sen12ms_common.errors import ShardError  # noqa: E402
from sen12ms_common.format.manifest import index_name, load_manifest  # noqa: E402
from sen12ms_common.format.sample import LABEL_EXT  # noqa: E402
from shardcuts import cut_while_reading, plant_labels  # noqa: E402
from test_dali import dali, make_spec  # noqa: E402

pytestmark = pytest.mark.slow  # compiles DALI pipelines, child processes

# DALI reads only the members its index lists: the tail cut goes into the members of the last samples.
_BUILD = """
from test_dali import dali, make_spec
from train.data.dali import ShardError
loader = dali(make_spec(root, split, batch_size=2, verify=verify))
"""


@pytest.mark.parametrize("verify", [True, False])
@pytest.mark.parametrize("mode", ["zero", "tail"])
def test_a_shard_cut_short_while_dali_reads_it_is_one_line_naming_it(sample_shards, tmp_path, mode, verify):
    root = tmp_path / "s"
    shutil.copytree(sample_shards, root)
    proc = cut_while_reading(_BUILD, "size * 3 // 5", root, "train", mode, verify, timeout=300)
    assert proc.returncode == 0, f"rc {proc.returncode}: {proc.stderr[-2000:]}"
    out = proc.stdout.strip()
    assert len(out.splitlines()) == 1 and out.startswith("ERROR ") and str(root) in out, out + proc.stderr[-2000:]


def test_a_shard_rewritten_in_place_after_its_check_gives_no_sample_its_new_bytes(sample_shards, tmp_path):
    """Every label of the split is overwritten in place (same size) after the first batch: the
    epoch either gives the labels that were checked or stops with one line naming a shard."""
    root = tmp_path / "s"
    shutil.copytree(sample_shards, root)
    spec = make_spec(root, "train", batch_size=2)
    want = {k: p for b in dali(spec).epoch(0) for k, p in zip(b["key"], b["prob"].numpy())}
    it = dali(spec).epoch(0)
    got = {}
    first = next(it)
    got.update(zip(first["key"], first["prob"].numpy()))
    for e in load_manifest(str(root)).shards("train"):
        plant_labels(root / e.name)
    try:
        for b in it:
            got.update(zip(b["key"], b["prob"].numpy()))
    except ShardError as exc:
        assert "\n" not in str(exc) and str(root) in str(exc) and "changed" in str(exc), str(exc)
    changed = [k for k in got if not np.array_equal(got[k], want[k])]
    assert changed == [], f"{len(changed)} samples got a label written after their shard was checked"


def _swap_first_two_samples(idx: Path) -> None:
    header, *lines = idx.read_text().splitlines()
    lines[0], lines[1] = lines[1], lines[0]
    idx.write_text("\n".join([header] + lines) + "\n")


def _swap_labels_of_first_two(idx: Path) -> None:
    """The label entries (offset, size) of the first two samples swapped, names kept."""
    header, *lines = idx.read_text().splitlines()
    a, b = lines[0].split(), lines[1].split()
    ia, ib = a.index(LABEL_EXT), b.index(LABEL_EXT)
    a[ia + 1:ia + 3], b[ib + 1:ib + 3] = b[ib + 1:ib + 3], a[ia + 1:ia + 3]
    idx.write_text("\n".join([header, " ".join(a), " ".join(b)] + lines[2:]) + "\n")


@pytest.mark.parametrize("tamper", [_swap_first_two_samples, _swap_labels_of_first_two])
def test_an_index_file_that_disagrees_with_its_tar_is_refused_when_verifying(sample_shards, tmp_path, tamper):
    root = tmp_path / "s"
    shutil.copytree(sample_shards, root)
    entry = load_manifest(str(root)).shards("test")[0]
    tamper(root / index_name(entry.name))
    spec = make_spec(root, "test", batch_size=2)
    with pytest.raises(ShardError, match="index") as err:
        list(dali(spec).epoch(0))
    assert index_name(entry.name) in str(err.value) and "\n" not in str(err.value)
