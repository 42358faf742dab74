"""ShardDataset batches under DataLoader workers, handed over in reused shared slots
(`train.data.handover`): the batches are the ones read in process (uint16, float, masks,
augmented), a batch the main process holds is never written again however many it holds, and
the slots come back once the main process frees them. On generated shards and real patches."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from bench.inputs.dataset import add_real_patches
from segdata import run_convert
from shardtools import run_shards
from test_loader import write_shards
from train.data import ShardDataset
from train.data.handover import SLOTS

COUNTS = {"train": [5, 7, 3, 6], "val": [4, 6], "test": [6, 5]}  # 21 train samples: more than SLOTS


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("handover") / "shards"
    write_shards(root, COUNTS)
    return root


@pytest.fixture(scope="module")
def seg(sample_tree, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("handover-seg") / "shards"
    run_shards(sample_tree, out, "--modalities", "s1,s2,lc", "--workers", "1")
    return out


@pytest.fixture(scope="module")
def real(real_dir, tmp_path_factory) -> Path:
    tree = tmp_path_factory.mktemp("handover-real") / "sen12ms"
    add_real_patches(tree, real_dir, seed=1)
    out = tree.parent / "shards"
    proc = run_convert("shards", "--data", str(tree), "--out", str(out), "--modalities", "s1,s2,lc",
                       "--workers", "1", "--no-progress", "--val-fraction", "0")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def held(root: Path, workers: int, **kw) -> list[dict]:
    """Every batch of an epoch, all held at once."""
    return list(DataLoader(ShardDataset(root, **kw), batch_size=None, num_workers=workers))


def assert_same(got: list[dict], want: list[dict]) -> None:
    assert [b["key"] for b in got] == [b["key"] for b in want]
    for g, w in zip(got, want):
        assert set(g) == set(w)
        for name, value in w.items():
            if isinstance(value, torch.Tensor):
                assert g[name].dtype == value.dtype and torch.equal(g[name], value), name


@pytest.mark.parametrize("normalize", [None, "official"])
def test_held_batches_are_the_in_process_ones(small, normalize):
    kw = dict(split="train", input="s1s2", normalize=normalize, batch_size=1, shuffle=True, seed=3)
    got = held(small, 1, **kw)
    assert len(got) > SLOTS  # the worker runs out of free slots: the rest are fresh
    assert_same(got, held(small, 0, **kw))


def test_segmentation_and_augmentation_under_a_worker(seg):
    kw = dict(split="train", input="s1s2", task="segmentation", normalize=None, batch_size=2, shuffle=True,
              seed=5, augment=True)
    got = held(seg, 1, **kw)
    assert got[0]["mask"].dtype == torch.int64
    assert_same(got, held(seg, 0, **kw))


def test_slots_come_back_once_freed(small):
    ds = ShardDataset(small, "train", input="s1s2", normalize=None, batch_size=2, threads=1)
    loader = DataLoader(ds, batch_size=None, num_workers=1, persistent_workers=True)
    for _ in range(3):
        most = n = 0
        for batch in loader:
            # In flight: the worker's reading thread's queue and the batch it decodes, the
            # DataLoader's prefetched batches and this one; a slot never given back adds up.
            most = max(most, int(ds._flags.count_nonzero()))
            n += 1
            del batch
        gc.collect()
        assert n == 11 and 1 <= most <= 8 and int(ds._flags.count_nonzero()) == 0
    del loader


def test_real_patches_under_a_worker(real):
    for kw in (dict(input="s1s2", normalize="official", label_type="single_label"),
               dict(input="s2hr+s2mr+s1", task="segmentation", normalize=None, augment=True, shuffle=True)):
        want = held(real, 0, split="train", batch_size=3, **kw)
        assert_same(held(real, 1, split="train", batch_size=3, **kw), want)
        assert any("ROIs1158_spring" in k for b in want for k in b["key"])
