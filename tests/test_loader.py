"""The webdataset loader: channels, uint16 until the device, normalisation, labels, epoch policy,
rank splitting and integrity checks, on small shard sets written with the shard format itself."""

from __future__ import annotations

import io
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from sen12ms_common.errors import DataError, ShardError
from sen12ms_common.format import sample as sf
from sen12ms_common.format.manifest import Manifest, ShardEntry, load_manifest, official_stats, shard_name
from sen12ms_common.vocab.bands import OFFICIAL_MEAN, OFFICIAL_STD, resolve_bands
from sen12ms_common.vocab.igbp import LabelRule
from sen12ms_common.vocab.inputs import channel_transform
from train.data import LoaderSpec, get_factory, loader_names, make_loader
from train.data.plan import epoch_plan
from train.run.device import InputTransform

REPO = Path(__file__).resolve().parents[1]
SIZE = 32  # small patches keep the tests fast; the format stores the size in the layout


def write_shards(root: Path, counts: dict[str, list[int]], *, codec: str = "zstd", seed: int = 0,
                 probs: list[np.ndarray] | None = None) -> dict[str, dict]:
    """Shards + manifest; returns key -> {s2, s1 (dB), prob, split} of every sample."""
    layout = sf.SampleLayout(codec=codec, level=sf.DEFAULT_LEVEL[codec], size=SIZE)
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    truth: dict[str, dict] = {}
    splits, n = {}, 0
    for split, shard_counts in counts.items():
        entries = []
        for i, count in enumerate(shard_counts):
            buf = io.BytesIO()
            w = sf.TarShardWriter(buf)
            for _ in range(count):
                key = f"ROIs1158_spring_s2_{n // 7 + 1}_p{n + 1}"
                s2 = rng.integers(0, 12500, (13, SIZE, SIZE)).astype(np.uint16)  # some above 10000
                s1 = rng.uniform(-32, 3, (2, SIZE, SIZE)).astype(np.float32)
                s1[0, 0, :4] = np.nan
                prob = probs[n % len(probs)] if probs else rng.dirichlet(np.ones(17) * 0.3)
                w.add_sample(key, sf.encode_sample({"s2": s2, "s1": s1}, prob, {"key": key}, layout))
                truth[key] = {"s2": s2, "s1": s1, "prob": np.asarray(prob, np.float32), "split": split}
                n += 1
            st = w.close()
            (root / shard_name(split, i)).write_bytes(buf.getvalue())
            entries.append(ShardEntry(shard_name(split, i), st.samples, st.bytes, st.sha256, st.xxh3_128))
        splits[split] = entries
    stats = {b: {"mean": 100.0 + 10 * k, "std": 50.0 + k} for k, b in enumerate(sf.MODALITY_BANDS["s2"])}
    stats.update({"VV": {"mean": -12.0, "std": 4.0}, "VH": {"mean": -19.0, "std": 4.5}})
    (root / "manifest.json").write_text(Manifest(layout, splits, stats).dumps())
    return truth


def spec(root: Path, split: str, *, input_spec: str = "s1s2", rule: LabelRule | None = None, batch_size: int = 4,
         stats: str = "official", **kw) -> LoaderSpec:
    manifest = load_manifest(str(root))
    bands = resolve_bands(input_spec)
    return LoaderSpec(str(root), manifest, split, bands, rule or LabelRule("multi_label"), batch_size,
                      channel_transform(bands, stats, manifest.stats), **kw)


def keys_of(loader, epoch: int = 0, start_batch: int = 0) -> list[str]:
    return [k for b in loader.epoch(epoch, start_batch) for k in b["key"]]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("loader") / "shards"
    truth = write_shards(root, {"train": [5, 7, 3, 6], "val": [4, 1, 6], "test": [6, 5]})
    return root, truth


@pytest.mark.parametrize("codec", sf.CODECS)
@pytest.mark.parametrize("input_spec,stats", [("s1s2", "official"), ("rgbs1", "manifest"), ("B8,VH,B2", "none")])
def test_channels_are_uint16_in_the_original_band_order_and_normalise_like_numpy(tmp_path, codec, input_spec, stats):
    truth = write_shards(tmp_path / codec, {"train": [3, 2]}, codec=codec, seed=1)
    # Batches of 3: the CPU conversion's chunks of 2 samples, and a part chunk, in every batch.
    s = spec(tmp_path / codec, "train", input_spec=input_spec, stats=stats, batch_size=3)
    bands = s.bands
    transform = InputTransform(s.transform, torch.device("cpu"))
    seen = 0
    for batch in make_loader("webdataset", s).epoch(0):
        image = batch["image"]
        assert image.dtype == torch.uint16 and image.shape[1:] == (len(bands), SIZE, SIZE)
        x = transform(image)
        assert x.dtype == torch.float32
        for i, key in enumerate(batch["key"]):
            t = truth[key]
            stored = {"s2": t["s2"], "s1": sf.quantize_s1(t["s1"])}
            expect = np.stack([stored[b.modality][b.index] for b in bands])
            assert np.array_equal(image[i].numpy(), expect)
            # The device transform equals the numpy reference bit for bit ...
            assert np.array_equal(x[i].numpy(), s.transform.apply(expect))
            # ... and means the original's preprocessing of the physical values.
            for c, b in enumerate(bands):
                phys = (t["s2"][b.index].astype(np.float64) if b.modality == "s2"
                        else sf.clean_s1(t["s1"])[b.index].astype(np.float64))
                if stats == "official":
                    ref, tol = (phys - OFFICIAL_MEAN[b.name]) / OFFICIAL_STD[b.name], 1e-4
                elif stats == "manifest":
                    m = s.manifest.stats[b.name]
                    ref, tol = (phys - m["mean"]) / m["std"], 1e-4
                else:  # the original without normalisation: clip(0, 10000) / 10000, dB / 25 + 1
                    ref, tol = ((np.clip(phys, 0, 10000) / 10000, 1e-6) if b.modality == "s2"
                                else (phys / 25 + 1, 1e-5))
                if b.modality == "s1" and stats != "none":
                    tol = sf.S1_STEP / 2 / min(OFFICIAL_STD[b.name], s.manifest.stats[b.name]["std"]) + 1e-5
                assert np.abs(x[i, c].numpy() - ref).max() <= tol, (b.name, stats)
            seen += 1
    assert seen == 5


def test_targets_follow_the_label_rule_from_the_stored_probabilities(tmp_path):
    p_forest = np.zeros(17); p_forest[[0, 1]] = 0.3; p_forest[9] = 0.4        # noqa: E702
    p_tie = np.zeros(17); p_tie[[11, 13]] = 0.5                               # noqa: E702
    p_edge = np.zeros(17); p_edge[16] = 1 - 6554 / 65536; p_edge[12] = 6554 / 65536  # just above 0.1  # noqa: E702
    probs = [p_forest, p_tie, p_edge]
    truth = write_shards(tmp_path / "s", {"test": [3]}, probs=probs)
    expected = {  # (single full, single simple, multi full, multi simple) as 0-based classes
        0: (9, 0, {0, 1, 9}, {0, 3}),
        1: (11, 5, {11, 13}, {5}),   # tie: the first class wins; croplands = 12 + 14
        2: (16, 9, {12, 16}, {6, 9}),
    }
    order = {k: i for i, k in enumerate(sorted(truth, key=lambda k: int(k.rsplit("p", 1)[1])))}
    for label_type in ("single_label", "multi_label"):
        for scheme in ("full", "simple"):
            rule = LabelRule(label_type, scheme, 0.1)
            batch = next(iter(make_loader("webdataset", spec(tmp_path / "s", "test", rule=rule)).epoch(0)))
            for i, key in enumerate(batch["key"]):
                single_full, single_simple, multi_full, multi_simple = expected[order[key]]
                assert np.array_equal(batch["prob"][i].numpy(), truth[key]["prob"])
                if label_type == "single_label":
                    assert batch["target"].dtype == torch.int64
                    assert int(batch["target"][i]) == (single_full if scheme == "full" else single_simple)
                else:
                    assert batch["target"].dtype == torch.float32
                    on = set(np.flatnonzero(batch["target"][i].numpy()).tolist())
                    assert on == (multi_full if scheme == "full" else multi_simple)


@pytest.mark.parametrize("split", ["val", "test"])
def test_evaluation_sees_every_sample_exactly_once_with_any_worker_count(shards, split):
    root, truth = shards
    want = sorted(k for k, t in truth.items() if t["split"] == split)
    orders = []
    for workers in (0, 1, 2):
        loader = make_loader("webdataset", spec(root, split, workers=workers, streams=3))
        batches = list(loader.epoch(0))
        keys = [k for b in batches for k in b["key"]]
        assert sorted(keys) == want and len(keys) == len(set(keys)) == loader.samples
        assert len(batches) == len(loader) == math.ceil(len(want) / 4)
        assert [len(b["key"]) for b in batches[:-1]] == [4] * (len(batches) - 1)
        orders.append(keys)
    assert orders[0] == orders[1] == orders[2]


def test_training_epoch_reads_every_sample_once_in_a_seed_and_epoch_order(shards):
    root, truth = shards
    want = sorted(k for k, t in truth.items() if t["split"] == "train")
    runs = {w: make_loader("webdataset", spec(root, "train", train=True, seed=5, workers=w, streams=3,
                                              shuffle_buffer=6)) for w in (0, 2)}
    e0, e1 = keys_of(runs[0], 0), keys_of(runs[0], 1)
    assert sorted(e0) == sorted(e1) == want
    assert len(runs[0]) == math.ceil(len(want) / 4)
    assert e0 != e1 and e0 != sorted(e0)               # shuffled, differently per epoch
    assert keys_of(runs[2], 1) == e1                   # the worker count does not matter
    assert keys_of(runs[0], 1) == e1                   # a function of (seed, epoch)
    other_seed = make_loader("webdataset", spec(root, "train", train=True, seed=6, streams=3, shuffle_buffer=6))
    assert keys_of(other_seed, 1) != e1
    # Resuming at batch 3 yields exactly the rest of the epoch.
    assert keys_of(runs[2], 1, start_batch=3) == e1[3 * 4:]


def test_ranks_get_disjoint_parts_and_the_same_number_of_batches(shards):
    root, truth = shards
    counts = [5, 7, 3, 6]
    n = sum(counts)
    for world in (2, 3, 4):
        # Training: equal shares (N // world each), the same batch count on every rank.
        plans = [epoch_plan(counts, batch_size=2, seed=1, epoch=3, shuffle=True, streams=2, rank=r, world_size=world)
                 for r in range(world)]
        assert len({p.batches for p in plans}) == 1 and {p.samples for p in plans} == {n // world}
        got = [(sl.shard, i) for p in plans for s in p.streams for sl in s.slices for i in range(sl.start, sl.stop)]
        assert len(got) == len(set(got)) == world * (n // world)
    # Evaluation: every sample on exactly one rank, checked on the loader itself.
    keys = []
    for r in range(3):
        keys += keys_of(make_loader("webdataset", spec(root, "val", rank=r, world_size=3, workers=1)))
    assert sorted(keys) == sorted(k for k, t in truth.items() if t["split"] == "val")


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("workers", [0, 1])
def test_manifest_checksum_mismatch_refuses_unless_no_verify(shards, tmp_path, workers):
    root = _copy(shards[0], tmp_path / "s")
    m = json.loads((root / "manifest.json").read_text())
    m["splits"]["val"]["shards"][1]["xxh3_128"] = "0" * 32  # the loaders check the fast checksum
    (root / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ShardError, match=r"val-000001\.tar: content does not match the manifest \(xxh3-128"):
        keys_of(make_loader("webdataset", spec(root, "val", workers=workers)))
    assert len(keys_of(make_loader("webdataset", spec(root, "val", workers=workers, verify=False)))) == 11


def test_missing_shard_is_named_and_skipped_only_when_asked(shards, tmp_path):
    root = _copy(shards[0], tmp_path / "s")
    (root / "train-000001.tar").unlink()
    with pytest.raises(ShardError, match=r"train-000001\.tar: shard is missing"):
        make_loader("webdataset", spec(root, "train", train=True))
    loader = make_loader("webdataset", spec(root, "train", train=True, skip_bad_shards=True, workers=2, streams=2))
    keys = keys_of(loader)
    assert len(keys) == 21 - 7 and len(set(keys)) == len(keys)
    assert len(loader.skipped) == 1 and "train-000001.tar" in loader.skipped[0]


@pytest.mark.parametrize("verify", [True, False])
def test_local_shards_are_read_into_private_memory_with_the_bytes_of_a_stream(shards, verify):
    """Members are copies in the loader's own buffers, never views of a mapped file (issue 29)."""
    import mmap

    from sen12ms_common.format.tarstream import iter_samples
    from train.data.plan import ShardSlice
    from train.data.shardread import read_slice

    root, _ = shards
    src = make_loader("webdataset", spec(root, "train", verify=verify)).src
    for i, entry in enumerate(src.entries):
        got = list(read_slice(src, ShardSlice(i, 1, entry.samples)))
        with open(root / entry.name, "rb") as f:
            want = [(k, m) for k, m in iter_samples(f, src.wanted)][1:]
        assert [(k, {e: bytes(v) for e, v in m.items()}) for k, m, _ in got] == \
            [(k, {e: bytes(v) for e, v in m.items()}) for k, m in want]
        assert not any(isinstance(v.obj, mmap.mmap) for _, m, _ in got for v in m.values())


def test_a_shard_cut_short_in_place_after_it_was_read_still_decodes_the_bytes_read(shards, tmp_path):
    """Samples wait in the shuffle buffer; a shard cut short in place meanwhile (`cp` over it)
    changes nothing they hold: they are private copies of the bytes read (and checked)."""
    from train.data.batches import BatchDecoder
    from train.data.plan import ShardSlice
    from train.data.shardread import read_slice

    root = _copy(shards[0], tmp_path / "s")
    src = make_loader("webdataset", spec(root, "train", workers=0)).src
    entry = src.entries[0]
    raw = list(read_slice(src, ShardSlice(0, 0, entry.samples)))
    want = BatchDecoder(src).decode(raw, len(raw), [])
    os.truncate(root / entry.name, 0)
    events: list[str] = []
    got = BatchDecoder(src).decode(raw, len(raw), events)
    assert events == [] and torch.equal(got["image"], want["image"]) and torch.equal(got["prob"], want["prob"])


def test_no_sample_of_a_verified_shard_comes_out_before_the_whole_shard_has_matched(shards, tmp_path):
    from train.data.plan import ShardSlice
    from train.data.shardread import read_slice

    root = _copy(shards[0], tmp_path / "s")
    entry = load_manifest(str(root)).shards("train")[0]
    data = bytearray((root / entry.name).read_bytes())
    data[-1] ^= 0xFF  # the tar's end padding: every sample reads well, the shard does not match
    (root / entry.name).write_bytes(bytes(data))
    for verify in (False, True):
        src = make_loader("webdataset", spec(root, "train", verify=verify)).src
        got = []
        if verify:
            with pytest.raises(ShardError, match=rf"{entry.name}: content does not match the manifest \(xxh3-128 "):
                got.extend(read_slice(src, ShardSlice(0, 0, entry.samples)))
            assert got == []
        else:
            got.extend(read_slice(src, ShardSlice(0, 0, entry.samples)))
            assert len(got) == entry.samples


def test_shard_deleted_under_a_running_epoch_is_reported_by_name(shards, tmp_path):
    root = _copy(shards[0], tmp_path / "s")
    # Batches of one: the reading thread holds at most 3 batches past the one taken, all from
    # val-000000 (4 samples), so it cannot have opened val-000002 before it is deleted.
    loader = make_loader("webdataset", spec(root, "val", workers=0, streams=1, batch_size=1))
    it = loader.epoch(0)
    next(it)  # reading val-000000 now
    (root / "val-000002.tar").unlink()
    with pytest.raises(ShardError, match=r"val-000002\.tar: shard is missing"):
        list(it)
    loader = make_loader("webdataset", spec(root, "val", workers=0, streams=1, batch_size=2,
                                            skip_bad_shards=True))
    assert len(keys_of(loader)) == 5 and len(loader.skipped) == 1


def test_damaged_sample_is_named_with_its_shard(shards, tmp_path):
    root = _copy(shards[0], tmp_path / "s")
    path = root / "test-000001.tar"
    data = bytearray(path.read_bytes())
    # Damage the compressed S2 member of the third sample (same size, so only content checks see it).
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(bytes(data))) as t:
        members = [m for m in t.getmembers() if m.name.endswith(".s2.zst")]
    victim = members[2]
    mid = victim.offset_data + victim.size // 2
    data[mid:mid + 8] = bytes(8)
    path.write_bytes(bytes(data))
    key = victim.name.split(".")[0]
    with pytest.raises(ShardError, match=rf"test-000001\.tar: sample {key}: member \.s2\.zst does not decompress"):
        keys_of(make_loader("webdataset", spec(root, "test", verify=False)))
    with pytest.raises(ShardError, match=r"test-000001\.tar"):
        keys_of(make_loader("webdataset", spec(root, "test", verify=True)))
    loader = make_loader("webdataset", spec(root, "test", verify=False, skip_bad_shards=True))
    keys = keys_of(loader)
    assert key not in keys and len(keys) == 10 and key in loader.skipped[0]
    # Batches of one over two reading threads: the batch left empty is skipped in its place,
    # and every other batch still comes in the order of one thread.
    one = {n: make_loader("webdataset", spec(root, "test", verify=False, skip_bad_shards=True, batch_size=1,
                                             streams=4, threads=n)) for n in (1, 2)}
    assert keys_of(one[2]) == keys_of(one[1]) and sorted(keys_of(one[1])) == sorted(keys)
    assert len(one[2]) == 11 and key in one[2].skipped[0]


def test_truncated_shard_is_refused_before_training(shards, tmp_path):
    root = _copy(shards[0], tmp_path / "s")
    path = root / "train-000002.tar"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ShardError, match=r"train-000002\.tar: \d+ bytes; the manifest says \d+"):
        make_loader("webdataset", spec(root, "train", train=True))
    # Without verification the cut is still found: the tar ends early.
    with pytest.raises(ShardError, match=r"train-000002\.tar"):
        keys_of(make_loader("webdataset", spec(root, "train", train=True, verify=False)))


def test_input_needing_a_modality_the_shards_lack_is_refused(tmp_path):
    layout = sf.SampleLayout(modalities=("s2",), size=SIZE)
    root = tmp_path / "s2only"
    root.mkdir()
    buf = io.BytesIO()
    w = sf.TarShardWriter(buf)
    w.add_sample("ROIs1158_spring_s2_1_p1", sf.encode_sample(
        {"s2": np.zeros((13, SIZE, SIZE), np.uint16)}, np.full(17, 1 / 17), {}, layout))
    st = w.close()
    (root / "test-000000.tar").write_bytes(buf.getvalue())
    (root / "manifest.json").write_text(Manifest(layout, {"test": [ShardEntry("test-000000.tar", 1, st.bytes, st.sha256, st.xxh3_128)]},
                                                 official_stats()).dumps())
    with pytest.raises(DataError, match="these shards hold no s1"):
        make_loader("webdataset", spec(root, "test", input_spec="s1s2"))
    assert len(keys_of(make_loader("webdataset", spec(root, "test", input_spec="rgb")))) == 1


def test_loader_registry():
    assert loader_names()[:2] == ["shards", "dali"]
    with pytest.raises(DataError, match="unknown loader 'nope'.*shards, dali"):
        get_factory("nope")
    # The old name reaches the same loader.
    assert get_factory("webdataset") is get_factory("shards")


def test_uint16_conversion_fallback_is_exact():
    from train.run.device import _uint16_via_int32, uint16_to_float32

    x = torch.from_numpy(np.arange(0, 65536, 7, dtype=np.uint16).reshape(1, 1, -1, 1))
    want = torch.from_numpy(np.arange(0, 65536, 7).astype(np.float32).reshape(1, 1, -1, 1))
    assert torch.equal(uint16_to_float32(x), want) and torch.equal(_uint16_via_int32(x), want)


GROUP_SIGTERM_SCRIPT = r"""
import os, signal, subprocess, sys
from sen12ms_common.vocab.bands import resolve_bands
from sen12ms_common.vocab.igbp import LabelRule
from sen12ms_common.vocab.inputs import channel_transform
from sen12ms_common.format.manifest import load_manifest
from train.data import LoaderSpec, make_loader

root, epochs = sys.argv[1], int(sys.argv[2])
manifest = load_manifest(root)
bands = resolve_bands("s1s2")
spec = LoaderSpec(root, manifest, "val", bands, LabelRule("multi_label"), 4,
                  channel_transform(bands, "official", manifest.stats), workers=1)
received = []
signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
# As torchrun or a scheduler stopping a job: SIGTERM to the whole process group, again and again.
killer = subprocess.Popen([sys.executable, "-c", "import os, signal, sys, time\n"
                           "while True:\n    time.sleep(0.001)\n    os.killpg(int(sys.argv[1]), signal.SIGTERM)",
                           str(os.getpgrp())], start_new_session=True)
try:
    for e in range(epochs):  # a loader's worker starts at its first epoch: a new loader each time
        loader = make_loader("webdataset", spec)
        print(e, sorted(k for b in loader.epoch(e) for k in b["key"]), flush=True)
        loader.close()
finally:
    killer.kill()
print("received", len(received))
"""


@pytest.mark.slow
def test_loader_workers_survive_a_process_group_sigterm_while_they_start(shards):
    """torchrun (`killpg`), a batch scheduler and a terminal signal the whole process group. A
    worker hit while it starts must not die of it and take the run down before the trainer has
    written its checkpoint: workers ignore SIGTERM from their first instruction, and the main
    process still receives it."""
    import subprocess
    import sys

    root, truth = shards
    want = sorted(k for k, t in truth.items() if t["split"] == "val")
    epochs = 30
    proc = subprocess.run([sys.executable, "-c", GROUP_SIGTERM_SCRIPT, str(root), str(epochs)], cwd=REPO,
                          capture_output=True, text=True, timeout=240, start_new_session=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    lines = proc.stdout.splitlines()
    assert lines[:-1] == [f"{e} {want}" for e in range(epochs)]
    assert int(lines[-1].split()[1]) > 0
