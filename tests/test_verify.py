"""`convert verify`: good shards pass; damaged or truncated shards are named with their sample.

Hostile shards (members or manifest entries named like paths) are in test_hostile_inputs.py."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from convert.cli import cli
from sen12ms_common.format.manifest import load_manifest


def _convert(tmp_path_factory, *args: str) -> Path:
    from convert.sample.sen12ms import synthesize

    root = tmp_path_factory.mktemp("verify")
    synthesize(root / "data", scenes=3, patches_per_scene=4, seed=11, progress=False)
    out = root / "out"
    r = CliRunner().invoke(cli, ["shards", "--data", str(root / "data"), "--out", str(out), "--workers", "1",
                                 "--shard-size", "3MB", "--no-progress", "--val-fraction", "0", *args])
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    return _convert(tmp_path_factory)


@pytest.fixture
def shards(good, tmp_path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(good, out)
    return out


def verify(out: Path):
    return CliRunner().invoke(cli, ["verify", str(out), "--no-progress"])


def index_entries(out: Path, shard: str) -> list[dict[str, tuple[int, int]]]:
    """Per sample of a shard: ext -> (offset, size), from its index file; plus the key."""
    lines = (out / shard.replace(".tar", ".idx")).read_text().splitlines()[1:]
    samples = []
    for line in lines:
        f = line.split()
        entry = {f[i]: (int(f[i + 1]), int(f[i + 2])) for i in range(0, len(f), 4)}
        entry["key"] = f[3].split(".", 1)[0]  # type: ignore[assignment]
        samples.append(entry)
    return samples


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x5A
    path.write_bytes(bytes(data))


def test_good_shards_verify(good):
    manifest = load_manifest(str(good))
    r = verify(good)
    n_shards = sum(len(v) for v in manifest.splits.values())
    n_samples = sum(manifest.samples(s) for s in manifest.splits)
    assert r.exit_code == 0, r.output
    assert r.output.startswith(f"OK: {n_shards} shards, {n_samples} samples, ")
    assert n_shards >= 4 and n_samples == 12


def test_a_flipped_byte_in_a_member_names_the_shard_and_the_sample(shards):
    second = index_entries(shards, "train-000001.tar")[1]
    off, size = second["s2.zst"]
    flip(shards / "train-000001.tar", off + size // 2)
    r = verify(shards)
    assert r.exit_code == 1
    last = r.output.strip().splitlines()[-1]
    assert last.startswith(f"Error: verification failed: train-000001.tar: sample {second['key']}: "
                           "member .s2.zst does not decompress")


@pytest.mark.parametrize("where", ["header", "padding", "label"])
def test_a_flipped_byte_anywhere_fails_and_names_the_shard(shards, where):
    first = index_entries(shards, "train-000000.tar")[0]
    off, size = first["label.f32"]
    offset = {"header": off - 512 + 20, "padding": off + size + 3, "label": off + 5}[where]
    flip(shards / "train-000000.tar", offset)
    r = verify(shards)
    assert r.exit_code == 1
    assert r.output.strip().splitlines()[-1].startswith("Error: verification failed: train-000000.tar: ")


def test_raw_codec_damage_is_caught_by_the_checksum(tmp_path_factory):
    out = _convert(tmp_path_factory, "--codec", "none")
    first = index_entries(out, "test-000000.tar")[0]
    off, size = first["s2.raw"]
    flip(out / "test-000000.tar", off + 1000)
    r = verify(out)
    assert r.exit_code == 1
    assert "verification failed: test-000000.tar: sha256 " in r.output and "does not match the manifest" in r.output


def test_a_truncated_shard_is_named(shards):
    path = shards / "train-000001.tar"
    first = index_entries(shards, "train-000001.tar")[0]
    path.write_bytes(path.read_bytes()[: first["s2.zst"][0] + 1000])
    r = verify(shards)
    assert r.exit_code == 1
    assert f"Error: verification failed: train-000001.tar: sample {first['key']}: damaged or truncated tar" in r.output


def test_a_shard_cut_between_samples_is_named_with_the_last_good_sample(shards):
    path = shards / "train-000001.tar"
    entries = index_entries(shards, "train-000001.tar")
    assert len(entries) >= 2
    cut = entries[1]["json"][0] - 512  # the header of the second sample's first member
    path.write_bytes(path.read_bytes()[:cut])
    r = verify(shards)
    assert r.exit_code == 1
    n = load_manifest(str(shards)).splits["train"][1].samples
    assert (f"train-000001.tar: holds 1 samples, the manifest says {n} (tar ends after sample "
            f"{entries[0]['key']}: truncated or damaged)") in r.output


def test_every_bad_shard_is_listed_and_the_first_is_named_last(shards):
    os.remove(shards / "val-000000.tar") if (shards / "val-000000.tar").exists() else None
    os.remove(shards / "test-000000.tar")
    (shards / "train-000000.idx").write_text("v1.2 1\n")
    r = verify(shards)
    assert r.exit_code == 1
    lines = r.output.strip().splitlines()
    assert "train-000000.idx: indexes 1 samples, train-000000.tar holds" in lines[0]
    assert "test-000000.tar: missing" in lines
    assert lines[-1].startswith("Error: verification failed: train-000000.idx: indexes 1 samples")
    assert "more bad shard(s), listed above" in lines[-1]


def test_an_index_with_wrong_offsets_is_bad(shards):
    idx = shards / "train-000000.idx"
    lines = idx.read_text().splitlines()
    f = lines[1].split()
    f[1] = str(int(f[1]) + 512)
    idx.write_text("\n".join([lines[0], " ".join(f)] + lines[2:]) + "\n")
    r = verify(shards)
    assert r.exit_code == 1
    assert "train-000000.idx: member offsets or sizes do not match train-000000.tar" in r.output


def test_no_manifest_is_a_one_line_error(tmp_path):
    r = verify(tmp_path)
    assert r.exit_code == 1
    assert r.output.strip() == (f"Error: {tmp_path / 'manifest.json'}: no manifest "
                                "(is this the output folder of `convert shards`?)")


