"""ShardDataset batches under DataLoader workers, handed over in reused shared slots
(`train.data.handover`): the batches are the ones read in process (uint16, float, masks,
augmented), a batch the main process holds is never written again however many it holds, and
the slots come back once the main process frees them. On generated shards and real patches."""

from __future__ import annotations

import gc
import pickle
from multiprocessing.reduction import ForkingPickler
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from bench.inputs.dataset import add_real_patches
from segdata import run_convert
from shardtools import run_shards
from test_loader import write_shards
from train.data import ShardDataset
from train.data.handover import SLOTS, Handover
from train.data.receiver import Receiver

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
            most = max(most, int(ds._receiver.flags.count_nonzero()))
            n += 1
            del batch
        gc.collect()
        assert n == 11 and 1 <= most <= 8 and int(ds._receiver.flags.count_nonzero()) == 0
    del loader


def test_real_patches_under_a_worker(real):
    for kw in (dict(input="s1s2", normalize="official", label_type="single_label"),
               dict(input="s2hr+s2mr+s1", task="segmentation", normalize=None, augment=True, shuffle=True)):
        want = held(real, 0, split="train", batch_size=3, **kw)
        assert_same(held(real, 1, split="train", batch_size=3, **kw), want)
        assert any("ROIs1158_spring" in k for b in want for k in b["key"])



def test_a_slot_crosses_once_then_its_batches_are_small():
    # Both ends in this process: the worker's Handover and the main process's Receiver, the
    # DataLoader's pickler between them.
    receiver = Receiver()
    hand = Handover(receiver, 0, rows=4)
    sizes = []
    for step in range(3):
        image = hand.place((4, 3, 8, 8), torch.uint16)
        image.copy_((torch.arange(4 * 3 * 64, dtype=torch.int32).reshape(4, 3, 8, 8) + step).to(torch.uint16))
        label = torch.full((4, 17), step, dtype=torch.int64)
        data = ForkingPickler.dumps(hand.hand({"image": image, "label": label, "key": ["a", "b", "c", "d"]}))
        sizes.append(len(data))
        out = pickle.loads(data)
        assert list(out) == ["image", "label", "key"] and out["key"] == ["a", "b", "c", "d"]
        assert out["image"].dtype == torch.uint16 and torch.equal(out["image"], image)
        assert out["label"].dtype == torch.int64 and torch.equal(out["label"], label)
        assert int(receiver.mapped[0, 0]) == hand.nonce  # this side has slot 0 mapped
        assert int(receiver.flags[0, 0]) != 0  # held here: the worker may not write it
        del out
        gc.collect()
        assert int(receiver.flags[0, 0]) == 0  # freed here: slot 0 again for the next batch
    # The first batch carried the slot (a file descriptor to share); the next ones only its number.
    assert sizes[1] == sizes[2] < sizes[0]


def torch_shm(pid: int | str = "self") -> set[str]:
    """The torch shared-memory files a process maps."""
    lines = Path(f"/proc/{pid}/maps").read_text().splitlines()
    return {line.split(None, 5)[5] for line in lines if "/torch_" in line}


def torch_shm_mappings() -> int:
    return sum("/torch_" in line for line in Path("/proc/self/maps").read_text().splitlines())


def test_slots_of_ended_workers_are_not_kept_mapped(small):
    ds = ShardDataset(small, "train", input="s1s2", normalize=None, batch_size=2, threads=1)
    loader = DataLoader(ds, batch_size=None, num_workers=1)  # a new worker every epoch
    before = torch_shm_mappings()
    for _ in range(3):
        n = 0
        for batch in loader:
            n += 1
            assert torch_shm_mappings() > before  # the worker's slots, mapped here while it runs
        del batch  # the epoch's last one, freed after its worker ended
        gc.collect()
        assert n == 11 and torch_shm_mappings() == before


def test_a_new_worker_drops_the_slots_it_inherits(small):
    # Forked while this process maps another worker's slots: keeping them mapped would hold
    # that worker's memory for the new worker's life.
    kw = dict(split="train", input="s1s2", normalize=None, batch_size=2, threads=1)
    first = iter(DataLoader(ShardDataset(small, **kw), batch_size=None, num_workers=1))
    next(first)  # freed at once: the slot stays mapped here, for the worker's next batches over it
    gc.collect()
    theirs = {f for f in torch_shm() if f"/torch_{first._workers[0].pid}_" in f}  # torch names files by pid
    assert theirs
    second = iter(DataLoader(ShardDataset(small, **kw), batch_size=None, num_workers=1))
    next(second)
    assert not theirs & torch_shm(second._workers[0].pid)
    del first, second


def test_workers_started_by_spawn(small):
    # Spawned workers get the dataset pickled (its tables as file descriptors), not inherited.
    kw = dict(split="train", input="s1s2", normalize=None, batch_size=2, shuffle=True, seed=2)
    got = list(DataLoader(ShardDataset(small, **kw), batch_size=None, num_workers=1, multiprocessing_context="spawn"))
    assert_same(got, held(small, 0, **kw))
