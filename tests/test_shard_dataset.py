"""`train.data.ShardDataset`, the public front door: the batch contract (TorchGeo's keys, dtypes,
the stored values), every sample once per epoch across DataLoader workers and ranks, epochs,
resuming mid-epoch, and one-line errors for bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from sen12ms_common.errors import DataError
from sen12ms_common.format.manifest import load_manifest
from sen12ms_common.vocab.bands import resolve_bands
from sen12ms_common.vocab.igbp import LabelRule
from sen12ms_common.vocab.inputs import channel_transform, select_channels
from shardtools import decode_all, run_shards
from test_loader import write_shards
from train.data import ShardDataset

COUNTS = {"train": [5, 7, 3, 6], "val": [4, 1, 6], "test": [6, 5]}


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("front") / "shards"
    return root, write_shards(root, COUNTS)


def keys(batches) -> list[str]:
    return [k for b in batches for k in b["key"]]


def loader_keys(ds: ShardDataset, workers: int) -> list[str]:
    return keys(DataLoader(ds, batch_size=None, num_workers=workers))


def test_batch_contract_uint16_is_the_stored_sample(small):
    root, truth = small
    ds = ShardDataset(root, "test", input="s1s2", label_type="single_label", igbp="full", normalize=None,
                      batch_size=4)
    batches = list(DataLoader(ds, batch_size=None))
    assert [len(b["key"]) for b in batches] == [4, 4, 3] and len(ds) == 3 and ds.samples == 11
    bands = resolve_bands("s1s2")
    rule = LabelRule("single_label", "full")
    for b in batches:
        assert set(b) == {"image", "label", "key"}
        assert b["image"].dtype == torch.uint16 and b["image"].shape[1:] == (12, 32, 32)
        assert b["label"].dtype == torch.int64
        for i, key in enumerate(b["key"]):
            t = truth[key]
            assert np.array_equal(b["image"][i, :10].numpy(), t["s2"][[1, 2, 3, 4, 5, 6, 7, 8, 11, 12]])
            assert int(b["label"][i]) == int(rule.targets(t["prob"][None])[0])
    # S1 is stored quantised: the float input matches the numpy reference of the stored values.
    manifest = load_manifest(str(root))
    ref = channel_transform(bands, "official", manifest.stats)
    normed = ShardDataset(root, "test", input="s1s2", normalize="official", batch_size=4)
    for raw, b in zip(batches, normed):
        assert b["image"].dtype == torch.float32
        want = ref.apply(raw["image"].numpy().astype(np.float32))
        np.testing.assert_allclose(b["image"].numpy(), want, rtol=1e-6, atol=1e-5)
        assert b["label"].dtype == torch.int64 and b["label"].shape[1] == 10  # multi_label, simple
        assert set(b["label"].unique().tolist()) <= {0, 1}
        # The same conversion, done where the user moves uint16 batches (a GPU; here the CPU).
        assert torch.equal(ds.input_transform()(raw["image"]), b["image"])


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_every_sample_once_per_epoch_under_dataloader_workers(small, workers):
    root, truth = small
    want = sorted(k for k, t in truth.items() if t["split"] == "train")
    ds = ShardDataset(root, "train", batch_size=3, seed=4)
    got = loader_keys(ds, workers)
    assert sorted(got) == want  # once each, nothing left out
    # Blocks of whole batches per worker: the batch count does not depend on the workers.
    assert len(list(DataLoader(ds, batch_size=None, num_workers=workers))) == len(ds) == 7


def test_ranks_times_workers_split_and_the_remainder(small):
    root, truth = small
    train = sorted(k for k, t in truth.items() if t["split"] == "train")  # 21 samples
    for shuffle, world in ((False, 2), (True, 2), (True, 4)):
        per_rank = [loader_keys(ShardDataset(root, "train", batch_size=2, shuffle=shuffle, rank=r,
                                             world_size=world), 2) for r in range(world)]
        everything = [k for ks in per_rank for k in ks]
        assert len(everything) == len(set(everything))  # no duplicates across ranks and workers
        if shuffle:  # equal shares: total % world samples wait for another epoch
            assert {len(ks) for ks in per_rank} == {len(train) // world}
            assert len(set(train) - set(everything)) == len(train) % world
        else:
            assert sorted(everything) == train


def test_epochs_shuffle_and_repeat(small):
    root, _ = small
    ds = ShardDataset(root, "train", batch_size=3, seed=1)
    first = keys(ds)
    assert keys(ds) == first  # the same epoch again until set_epoch
    ds.set_epoch(1)
    second = keys(ds)
    assert sorted(second) == sorted(first) and second != first
    assert keys(ShardDataset(root, "train", batch_size=3, seed=1, shuffle=False)) == \
        keys(ShardDataset(root, "train", batch_size=3, seed=2, shuffle=False))


def test_resume_mid_epoch_in_process(small):
    root, _ = small
    ds = ShardDataset(root, "train", batch_size=3, seed=2, augment=True, normalize=None)
    ds.set_epoch(3)
    full = list(ds)
    it = iter(ds)  # a new pass starts at its first batch
    for _ in range(4):
        next(it)
    state = ds.state_dict()
    assert state == {"epoch": 3, "batch": 4}
    it.close()
    assert [b["key"] for b in ds][0] == full[0]["key"]
    again = ShardDataset(root, "train", batch_size=3, seed=2, augment=True, normalize=None)
    again.load_state_dict(state)
    rest = list(again)
    assert [b["key"] for b in rest] == [b["key"] for b in full[4:]]
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(rest, full[4:]))  # same augmentation


def test_resume_with_dataloader_workers(small):
    root, _ = small
    ds = ShardDataset(root, "train", batch_size=2, seed=2)
    ds.set_epoch(1)
    full = [b["key"] for b in DataLoader(ds, batch_size=None, num_workers=2)]
    for done in (1, 5, 10):
        ds.load_state_dict({"epoch": 1, "batch": done})
        rest = [b["key"] for b in DataLoader(ds, batch_size=None, num_workers=2)]
        assert rest == full[done:]


@pytest.mark.slow
def test_segmentation_masks_move_with_their_image(sample_tree, tmp_path):
    out = tmp_path / "seg"
    run_shards(sample_tree, out, "--modalities", "s1,s2,lc", "--workers", "1")
    truth = decode_all(out)
    plain = {k: (b["image"][i], b["mask"][i]) for b in ShardDataset(out, "train", input="rgb", task="segmentation",
                                                                      normalize=None, batch_size=4)
             for i, k in enumerate(b["key"])}
    b = next(iter(plain.values()))
    assert b[1].dtype == torch.int64 and b[0].dtype == torch.uint16
    key = next(iter(plain))
    assert np.array_equal(plain[key][0].numpy(), select_channels(truth[key], resolve_bands("rgb")))
    aug = ShardDataset(out, "train", input="rgb", task="segmentation", normalize=None, batch_size=4, augment=True)
    moved = 0
    for batch in aug:
        for i, k in enumerate(batch["key"]):
            image, mask = plain[k]
            for code in range(8):
                from train.data.symmetry import apply_symmetries

                c = torch.tensor([code], dtype=torch.uint8)
                if torch.equal(apply_symmetries(image[None], c)[0], batch["image"][i]):
                    assert torch.equal(apply_symmetries(mask[None], c)[0], batch["mask"][i])
                    moved += code != 0
                    break
            else:
                pytest.fail(f"{k}: the augmented image is no symmetry of the stored one")
    assert moved > 0


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and "Traceback" not in text, text
    return text


def test_bad_input_is_one_line_when_created(small, tmp_path):
    root, _ = small
    with pytest.raises(DataError) as e:
        ShardDataset(tmp_path, "train")
    assert "no manifest" in one_line(e.value) and str(tmp_path) in str(e.value)
    with pytest.raises(DataError) as e:
        ShardDataset(root, "holdout")
    assert one_line(e.value) == f"{root}: no 'holdout' split in this shard set (it has: test, train, val)"
    with pytest.raises(DataError) as e:
        ShardDataset(root, "train", normalize="nonsense")
    assert "nonsense" in one_line(e.value)
    with pytest.raises(DataError) as e:
        ShardDataset(root, "train", task="segmentation")
    assert "holds no masks" in one_line(e.value)


def test_input_the_shards_lack(sample_tree, tmp_path):
    out = tmp_path / "s2only"
    run_shards(sample_tree, out, "--modalities", "s2", "--workers", "1")
    ShardDataset(out, "train", input="s2")
    with pytest.raises(DataError) as e:
        ShardDataset(out, "train", input="s1s2")
    assert one_line(e.value).startswith(f"{out}: these shards hold no s1 (they hold s2)")


def test_more_dataloader_workers_than_shards_is_one_line_at_epoch_start(small):
    root, _ = small
    ds = ShardDataset(root, "test", batch_size=2)  # 2 shards
    with pytest.raises(DataError) as e:
        next(iter(DataLoader(ds, batch_size=None, num_workers=3)))
    assert one_line(e.value) == (f"{root}: 3 DataLoader workers for the 2 shard(s) of the test split: "
                                 "use num_workers=2 or fewer (in DataLoader worker process 0)")


def test_a_shard_damaged_after_creation_fails_in_one_line(small, tmp_path):
    import shutil

    root, _ = small
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    ds = ShardDataset(copy, "val", batch_size=2)
    shard = copy / load_manifest(str(copy)).shards("val")[0].name
    data = bytearray(shard.read_bytes())
    data[700] ^= 0xFF  # same size: only the checksum while streaming can see it
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError) as e:
        list(DataLoader(ds, batch_size=None, num_workers=2))
    assert str(shard) in one_line(e.value) and "does not match the manifest" in str(e.value)


def test_native_worker_processes_under_a_dataloader_without_workers(small):
    """`workers=2` (the loader's own processes, batches in a reused shared-memory ring) read the
    same epoch as reading in this process."""
    root, _ = small
    ds = ShardDataset(root, "train", batch_size=3, seed=4, workers=2, streams=3)
    try:
        with_procs = [b["key"] for b in DataLoader(ds, batch_size=None, num_workers=0)]
    finally:
        ds.close()
    assert with_procs == [b["key"] for b in ShardDataset(root, "train", batch_size=3, seed=4, streams=3)]


def test_part_range_blocks_of_whole_batches():
    import math

    from train.data.plan import part_range

    for n, b, parts in [(21, 3, 2), (21, 2, 3), (5, 4, 3), (0, 2, 2), (64, 32, 4)]:
        ranges = [part_range(10, 10 + n, b, p, parts) for p in range(parts)]
        assert ranges[0][0] == 10 and ranges[-1][1] == 10 + n
        assert all(a[1] == c[0] for a, c in zip(ranges, ranges[1:]))  # contiguous: each sample once
        assert all((hi - lo) % b == 0 for lo, hi in ranges[:-1])  # only the last block ends short
        batches = [math.ceil((hi - lo) / b) for lo, hi in ranges]
        assert max(batches) - min(batches) <= 1 and sum(batches) == math.ceil(n / b)
