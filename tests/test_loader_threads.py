"""The loader's decoding threads and reused buffers: the same batches for any number of threads or
worker processes, batches a consumer holds are never overwritten, an epoch left early leaves no
thread behind, only the bands an input uses are decoded; shard format 2: checksums in the
manifest, version-1 shards refused with one line."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import xxhash
from click.testing import CliRunner

from sen12ms_common.errors import InputError, ShardError
from sen12ms_common.format import sample as sf
from sen12ms_common.format.buffers import BufferPool
from sen12ms_common.format.manifest import checksums_of, load_manifest
from test_loader import keys_of, spec, write_shards
from train.data import make_loader
from train.data.leases import lent_tensor


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("threads") / "shards"
    truth = write_shards(root, {"train": [5, 7, 3, 6], "val": [4, 6], "test": [3]})
    return root, truth


def held_epoch(loader, epoch: int = 0) -> list[dict]:
    """Every batch of an epoch, all held at once (as a consumer that keeps them would)."""
    return list(loader.epoch(epoch))


def check_against_truth(batches: list[dict], truth: dict) -> None:
    for b in batches:
        img = b["image"].numpy()
        for i, key in enumerate(b["key"]):
            t = truth[key]
            s2 = t["s2"][[1, 2, 3, 4, 5, 6, 7, 8, 11, 12]]  # s1s2: B2..B8A, B11, B12, then VV, VH
            assert np.array_equal(img[i, :10], s2), key
            assert np.array_equal(img[i, 10:], sf.quantize_s1(t["s1"])), key
            assert np.array_equal(b["prob"][i].numpy(), t["prob"]), key


@pytest.mark.parametrize("codec", ["zstd", "lz4", "none"])
def test_threads_and_processes_give_the_same_batches_and_held_batches_stay_intact(tmp_path, codec):
    root = tmp_path / codec
    truth = write_shards(root, {"train": [5, 7, 3, 6], "val": [2]}, codec=codec, seed=3)
    runs = {}
    for name, kw in {"1 thread": dict(workers=0, threads=1), "3 threads": dict(workers=0, threads=3),
                     "2 processes": dict(workers=2, threads=1)}.items():
        loader = make_loader("webdataset", spec(root, "train", train=True, seed=2, streams=3, shuffle_buffer=4, **kw))
        batches = held_epoch(loader, 0) + held_epoch(loader, 1)  # the 2nd epoch reuses the 1st one's buffers
        check_against_truth(batches, truth)
        runs[name] = [k for b in batches for k in b["key"]]
        loader.close()
    assert runs["1 thread"] == runs["3 threads"] == runs["2 processes"]


def test_an_epoch_left_early_stops_its_threads(shards):
    root, truth = shards
    loader = make_loader("webdataset", spec(root, "train", train=True, threads=2, streams=2))
    before = {t.name for t in threading.enumerate()}
    it = loader.epoch(0)
    first = next(it)
    assert "reader-0" in {t.name for t in threading.enumerate()}  # a reading thread per stream group
    it.close()
    assert {t.name for t in threading.enumerate()} - before <= {t.name for t in threading.enumerate()
                                                                if t.name.startswith("decode")}
    assert not [t for t in threading.enumerate() if t.name.startswith(("reader", "loader"))]
    check_against_truth([first], truth)
    loader.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("decode")]


def test_a_buffer_is_handed_out_again_only_once_given_back():
    pool = BufferPool(smallest=16)
    a = pool.take_bytes(100)
    owner = a.obj
    assert pool.take_bytes(100).obj is not owner  # not given back: never handed out twice
    pool.give_bytes(a[10:20])  # a view of it returns the whole buffer
    pool.give_bytes(a)  # a second give keeps it once
    assert pool.take_bytes(100).obj is owner
    assert pool.take_bytes(100).obj is not owner
    assert len(a) == 100 and pool.take_bytes(1000).obj.size == 1024


def test_a_batch_buffer_goes_back_when_its_last_view_is_freed():
    pool = BufferPool(np.uint16, keep=2)
    batch = lent_tensor(pool, (4, 3))
    first = batch[:2]  # a view keeps the batch's storage
    owner = batch.untyped_storage().data_ptr()
    del batch
    assert lent_tensor(pool, (4, 3)).untyped_storage().data_ptr() != owner
    del first
    assert lent_tensor(pool, (4, 3)).untyped_storage().data_ptr() == owner


def damage_band(root: Path, band: int) -> None:
    """Make band `band` of the first sample's s2 member undecodable (same length, the manifest
    checksums updated: only decoding that band can find it)."""
    manifest = json.loads((root / "manifest.json").read_text())
    split = next(iter(manifest["splits"]))
    entry = manifest["splits"][split]["shards"][0]
    path = root / entry["name"]
    data = bytearray(path.read_bytes())
    with tarfile.open(fileobj=io.BytesIO(bytes(data))) as tar:
        members = {m.name: m for m in tar.getmembers()}
        key = next(iter(members)).split(".", 1)[0]
        sizes = np.frombuffer(tar.extractfile(members[f"{key}.s2.zstsizes"]).read(), "<i4")
        start = members[f"{key}.s2.zst"].offset_data + int(sizes[:band].sum())
    data[start:start + int(sizes[band])] = b"\xff" * int(sizes[band])
    path.write_bytes(bytes(data))
    entry.update(checksums_of(str(path)))
    (root / "manifest.json").write_text(json.dumps(manifest))


def test_only_the_bands_an_input_uses_are_decoded(tmp_path):
    root = tmp_path / "s"
    write_shards(root, {"test": [3]}, seed=5)
    damage_band(root, 12)  # B12: in s1s2, not in rgb
    assert len(keys_of(make_loader("webdataset", spec(root, "test", input_spec="rgb")))) == 3
    with pytest.raises(ShardError, match=r"test-000000\.tar: sample \S+: member \.s2\.zst does not decompress"):
        keys_of(make_loader("webdataset", spec(root, "test", input_spec="s1s2")))


def test_the_manifest_holds_both_checksums_of_every_shard(shards):
    root, _ = shards
    for split, entries in load_manifest(str(root)).splits.items():
        for e in entries:
            data = (root / e.name).read_bytes()
            assert e.sha256 == hashlib.sha256(data).hexdigest()
            assert e.xxh3_128 == xxhash.xxh3_128(data).hexdigest()


def test_version_1_shards_are_refused_with_one_line_saying_to_convert_again(shards, tmp_path):
    from convert.cli import cli

    root = tmp_path / "old"
    shutil.copytree(shards[0], root)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["format_version"] = manifest["layout"]["version"] = 1
    (root / "manifest.json").write_text(json.dumps(manifest))
    line = ("these shards are of format version 1, which stored each zstd array as one frame; this toolbox reads "
            "version 2 (a frame per band): re-convert them with `python -m convert shards`")
    with pytest.raises(InputError) as err:
        load_manifest(str(root))
    assert str(err.value) == f"{root / 'manifest.json'}: {line}"
    r = CliRunner().invoke(cli, ["verify", str(root), "--no-progress"])
    assert r.exit_code == 1 and r.output == f"Error: {root / 'manifest.json'}: {line}\n"


def test_augmentation_is_a_seeded_symmetry_per_sample_that_resume_draws_again(shards):
    from train.data.symmetry import apply_symmetries, symmetric_view

    root, truth = shards
    opts = dict(train=True, seed=4, streams=2, shuffle_buffer=5)
    plain = make_loader("webdataset", spec(root, "train", **opts))
    aug = {n: make_loader("webdataset", spec(root, "train", augment=True, threads=n, **opts)) for n in (1, 2)}
    base = held_epoch(plain, 1)
    got = {n: held_epoch(loader, 1) for n, loader in aug.items()}
    assert [b["key"] for b in got[1]] == [b["key"] for b in got[2]] == [b["key"] for b in base]
    codes = set()
    for b0, b1, b2 in zip(base, got[1], got[2]):
        # The loader hands the stored patches and a code per sample; the device applies them.
        assert torch.equal(b1["image"], b0["image"]) and torch.equal(b1["symmetry"], b2["symmetry"])
        moved = apply_symmetries(b1["image"], b1["symmetry"])
        for i in range(len(b0["key"])):
            code = int(b1["symmetry"][i])
            want = np.zeros_like(b0["image"][i].numpy())
            symmetric_view(want, code)[...] = b0["image"][i].numpy()
            assert np.array_equal(want, moved[i].numpy()), b0["key"][i]  # each code is that symmetry of the patch
            codes.add(code)
    assert len(codes) >= 4  # and they vary
    # A run resumed at batch 2 draws the same symmetries for the rest of the epoch.
    rest = list(aug[1].epoch(1, start_batch=2))
    assert all(torch.equal(a["symmetry"], b["symmetry"]) for a, b in zip(rest, got[1][2:]))
    # Evaluation never augments.
    test = make_loader("webdataset", spec(root, "test", augment=True))
    check_against_truth(held_epoch(test), truth)


def test_decoders_made_at_once_by_many_threads_in_a_fresh_process_all_find_the_native_codecs():
    # Seen in CI: a thread looking up lz4's extension while another imported it got ValueError.
    script = """
import threading
from sen12ms_common.format.codecs import BandDecoder
n = 32
start, made, failed = threading.Barrier(n), [], []
def make():
    start.wait()
    try:
        d = BandDecoder()
        made.append(d._zstd is not None and d._lz4 is not None)
    except Exception as e:
        failed.append(repr(e))
threads = [threading.Thread(target=make) for _ in range(n)]
[t.start() for t in threads]
[t.join() for t in threads]
print(len(made), all(made), failed[:1])
"""
    import subprocess
    import sys
    for _ in range(3):
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                             cwd=Path(__file__).resolve().parent.parent)
        assert out.stdout.split() == ["32", "True", "[]"], out.stdout + out.stderr
