"""Hostile inputs: pickles that would run code, tar members and manifest entries named like paths,
checkpoints that would run code, and shards that do not match their manifest. Each is refused
with a one-line message naming the file; a payload never runs (a marker file proves it), and no
file is ever written where a hostile name points."""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from convert.cli import cli
from sen12ms_common.format.manifest import checksums_of, load_manifest

REPO = Path(__file__).resolve().parents[1]
REFUSED = "which is not a container, string, number or numpy array"


class _Payload:
    """Unpickling this runs `touch <marker>`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def prove_dangerous(data: bytes, marker: Path) -> None:
    """The file really runs its payload when unpickled without restrictions."""
    assert not marker.exists()
    pickle.loads(data)
    assert marker.exists()
    marker.unlink()


def run_cli(*args: str):
    return CliRunner().invoke(cli, list(args))


def nothing_written(out: Path) -> None:
    assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()], sorted(out.rglob("*"))


# --- pickles ------------------------------------------------------------------------------------------

def test_a_label_pickle_that_would_run_code_is_refused_and_never_runs(sample_tree, tmp_path):
    marker = tmp_path / "owned"
    evil = tmp_path / "IGBP_probability_labels.pkl"
    evil.write_bytes(pickle.dumps({"ROIs1158_spring_s2_1_p30.tif": _Payload(marker)}))
    r = run_cli("shards", "--data", str(sample_tree), "--out", str(tmp_path / "o"), "--labels", str(evil),
                "--no-progress")
    assert r.exit_code == 1
    assert r.output == f"Error: {evil}: refused to load: the pickle asks for posix.system, {REFUSED}\n"
    assert not marker.exists()
    nothing_written(tmp_path / "o")
    prove_dangerous(evil.read_bytes(), marker)


def test_a_split_pickle_that_would_run_code_is_refused_and_never_runs(sample_tree, tmp_path):
    marker = tmp_path / "owned"
    splits = tmp_path / "splits"
    splits.mkdir()
    evil = splits / "train_list.pkl"  # the original's format: a pickled list of S2 file names
    evil.write_bytes(pickle.dumps(["ROIs1158_spring_s2_1_p30.tif", _Payload(marker)], protocol=3))
    (splits / "test_list.txt").write_text("ROIs1158_spring_s2_1_p31.tif\n")
    r = run_cli("shards", "--data", str(sample_tree), "--out", str(tmp_path / "o"), "--splits", str(splits),
                "--no-progress", "--workers", "1")
    assert r.exit_code == 1
    assert r.output == f"Error: {evil}: refused to load: the pickle asks for posix.system, {REFUSED}\n"
    assert not marker.exists()
    nothing_written(tmp_path / "o")
    prove_dangerous(evil.read_bytes(), marker)


# --- tar members and manifest entries named like paths -----------------------------------------------

@pytest.fixture(scope="module")
def clean_set(tmp_path_factory) -> Path:
    from convert.sample.sen12ms import synthesize

    root = tmp_path_factory.mktemp("hostile")
    synthesize(root / "data", scenes=2, patches_per_scene=3, seed=11, progress=False)
    out = root / "out"
    r = run_cli("shards", "--data", str(root / "data"), "--out", str(out), "--workers", "1", "--shard-size", "3MB",
                "--no-progress", "--val-fraction", "0")
    assert r.exit_code == 0, r.output
    return out


def inject(out: Path, name: str) -> tuple[str, str, str]:
    """Add a member `name` after the first sample of the first shard and make the manifest match
    the new bytes (so that only the member check can catch it). Returns (split, shard, first key)."""
    manifest = json.loads((out / "manifest.json").read_text())
    split = next(s for s, v in manifest["splits"].items() if v["shards"] and v["shards"][0]["samples"] >= 2)
    entry = manifest["splits"][split]["shards"][0]
    shard = out / entry["name"]
    buf = io.BytesIO()
    with tarfile.open(shard) as src, tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as dst:
        members = src.getmembers()
        first = members[0].name.split(".", 1)[0]
        last_of_first = [m for m in members if m.name.startswith(first + ".")][-1]
        for info in members:
            dst.addfile(info, src.extractfile(info))
            if info is last_of_first:
                evil = tarfile.TarInfo(name)
                payload = b"owned\n"
                evil.size = len(payload)
                dst.addfile(evil, io.BytesIO(payload))
    shard.write_bytes(buf.getvalue())
    entry.update(bytes=shard.stat().st_size, **checksums_of(str(shard)))
    (out / "manifest.json").write_text(json.dumps(manifest))
    return split, entry["name"], first


def no_evil_file(tmp_path: Path, *targets: Path) -> None:
    for t in targets:
        assert not t.exists(), t
    assert [p for p in tmp_path.rglob("*") if "evil" in p.name] == []


@pytest.mark.slow
@pytest.mark.parametrize("hostile", ["../../evil.txt", "ABSOLUTE", "dir/../evil.txt"])
def test_a_member_named_like_a_path_is_refused_by_every_reader_and_nothing_is_written(clean_set, tmp_path,
                                                                                     monkeypatch, hostile):
    from sen12ms_common.vocab.bands import resolve_bands
    from sen12ms_common.vocab.igbp import LabelRule
    from sen12ms_common.vocab.inputs import channel_transform
    from train.data import LoaderSpec, make_loader
    from sen12ms_common.errors import ShardError

    target = tmp_path / "abs_evil.txt"
    name = str(target) if hostile == "ABSOLUTE" else hostile
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)  # a relative name, were it followed, would land in tmp_path
    out = tmp_path / "set"
    shutil.copytree(clean_set, out)
    split, shard, first = inject(out, name)
    problem = f"member name {name!r} is a path (shards hold flat <key>.<ext> members)"

    # convert verify: names the shard and the sample before the member.
    r = run_cli("verify", str(out), "--no-progress")
    assert r.exit_code == 1
    assert r.output.strip().splitlines()[-1] == f"Error: verification failed: {shard}: {problem} (after sample {first})"
    no_evil_file(tmp_path, target, tmp_path / "evil.txt")

    # The training loader (the manifest's hashes match: only the member check can refuse it).
    manifest = load_manifest(str(out))
    bands = resolve_bands("s1s2")
    spec = LoaderSpec(str(out), manifest, split, bands, LabelRule("multi_label"), 2,
                      channel_transform(bands, "official", manifest.stats), workers=0, streams=1)
    with pytest.raises(ShardError) as err:
        for _ in make_loader("webdataset", spec).epoch(0):
            pass
    assert str(err.value) == f"{out / shard}: unreadable after 0 samples (ShardError: {problem})"
    no_evil_file(tmp_path, target, tmp_path / "evil.txt")

    # The overview from shards: the shard is listed as a problem, the other shards are counted.
    report = tmp_path / "overview"
    r = CliRunner().invoke(cli, ["overview", "--shards", str(out), "--out", str(report), "--no-progress"])
    assert r.exit_code == 1
    assert f"  {out / shard}: {problem}\n" in r.output
    assert r.output.strip().splitlines()[-1] == (
        f"Error: 1 inputs could not be counted (listed above and in {report / 'problems.csv'}); the report covers "
        "the rest")
    no_evil_file(tmp_path, target, tmp_path / "evil.txt")


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd"])
def test_a_manifest_naming_a_path_as_shard_is_refused_by_every_reader(clean_set, tmp_path, name):
    from sen12ms_common.errors import InputError

    out = tmp_path / "set"
    shutil.copytree(clean_set, out)
    manifest = json.loads((out / "manifest.json").read_text())
    split = next(s for s, v in manifest["splits"].items() if v["shards"])
    manifest["splits"][split]["shards"][0]["name"] = name
    (out / "manifest.json").write_text(json.dumps(manifest))
    message = f"{out / 'manifest.json'}: shard name {name!r} is a path; a manifest names shards in its own folder"
    with pytest.raises(InputError) as err:  # what the loaders and `python -m train` read it with
        load_manifest(str(out))
    assert str(err.value) == message
    r = run_cli("verify", str(out), "--no-progress")
    assert r.exit_code == 1 and r.output == f"Error: {message}\n"
    r = run_cli("overview", "--shards", str(out), "--out", str(tmp_path / "overview"), "--no-progress")
    assert r.exit_code == 1 and r.output == f"Error: {message}\n"


# --- checkpoints -----------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_checkpoint_that_would_run_code_is_refused_by_train_and_evaluate(sample_shards, tmp_path):
    import torch

    marker = tmp_path / "owned"
    evil = tmp_path / "evil_checkpoint.pth"
    torch.save({"epoch": 1, "arch": "SmallCNN", "model_state_dict": {"w": torch.zeros(1)}, "x": _Payload(marker)},
               evil)
    # Both commands at once (each pays the torch import).
    procs = [subprocess.Popen([sys.executable, "-m", *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
             for args in (["train", "--shards", str(sample_shards), "--resume", str(evil), "--run-dir",
                           str(tmp_path / "run")],
                          ["train.evaluate", "--shards", str(sample_shards), "--checkpoint", str(evil),
                           "--out", str(tmp_path / "eval")])]
    message = (f"Error: {evil}: refused to load: it asks for posix.system, which is not tensor data (only tensors, "
               "numbers, strings, containers and numpy float scalars are accepted)\n")
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 1, (out, err)
        assert err == message and out == ""
    assert not marker.exists()
    assert not (tmp_path / "run").exists() and not (tmp_path / "eval").exists()
    torch.load(evil, weights_only=False)  # the file really runs its payload when loaded unrestricted
    assert marker.exists()


# --- shards that do not match the manifest: `python -m train` refuses unless --no-verify ------------

TRAIN = ("--model", "SmallCNN", "--input", "rgb", "--batch-size", "1", "--epochs", "1", "--workers", "0",
         "--streams", "1", "--shuffle-buffer", "1", "--stats", "manifest", "--seed", "4")


def start_training(shards: Path, run_dir: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "train", "--shards", str(shards), "--run-dir", str(run_dir),
                             *TRAIN, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def first_train_shard(shards: Path) -> tuple[int, object]:
    """The train shard read first in epoch 0 (with TRAIN's seed and one stream)."""
    from train.data.plan import epoch_plan

    entries = load_manifest(str(shards)).shards("train")
    plan = epoch_plan([e.samples for e in entries], batch_size=1, seed=4, epoch=0, shuffle=True, streams=1)
    i = plan.streams[0].slices[0].shard
    return i, entries[i]


@pytest.mark.slow
def test_shards_that_do_not_match_the_manifest_refuse_to_train_unless_no_verify(sample_shards, tmp_path):
    wrong_hash, wrong_size = tmp_path / "wrong_hash", tmp_path / "wrong_size"
    for shards in (wrong_hash, wrong_size):
        shutil.copytree(sample_shards, shards)
    i, victim = first_train_shard(wrong_hash)
    manifest = json.loads((wrong_hash / "manifest.json").read_text())
    manifest["splits"]["train"]["shards"][i]["xxh3_128"] = "0" * 32  # same bytes, another checksum
    (wrong_hash / "manifest.json").write_text(json.dumps(manifest))
    with open(wrong_size / victim.name, "ab") as f:
        f.write(b"\0" * 512)  # a shard rewritten since the manifest
    # Three runs at once (each pays the torch import).
    runs = {name: start_training(shards, tmp_path / name, *args) for name, shards, args in (
        ("strict", wrong_hash, ()), ("trusted", wrong_hash, ("--no-verify", "--max-steps", "3")),
        ("size", wrong_size, ()))}
    done = {name: (proc.communicate(timeout=300), proc.returncode) for name, proc in runs.items()}

    (out, err), rc = done["strict"]
    assert rc == 1, out + err
    # The checksum is compared as the shard streams in, and none of its samples is used before it
    # matches: training stops at the end of the first shard read, before its first step.
    assert err.splitlines()[-1] == (
        f"Error: {wrong_hash / victim.name}: content does not match the manifest (xxh3-128 {victim.xxh3_128[:16]}..., "
        f"{victim.bytes} bytes; expected 0000000000000000..., {victim.bytes} bytes); rebuild it or pass --no-verify")
    assert not list((tmp_path / "strict").rglob("*.pth"))
    assert "epoch 1/1" not in out and not (tmp_path / "strict" / "test_scores.json").exists()

    (out, err), rc = done["size"]  # a size mismatch is found before the first step
    assert rc == 1, out + err
    assert err == (f"Error: 1 train shard(s) cannot be used: {wrong_size / victim.name}: {victim.bytes + 512} "
                   f"bytes; the manifest says {victim.bytes}\n")
    assert not list((tmp_path / "size").rglob("*.pth"))

    (out, err), rc = done["trusted"]  # the user says the shards are fine
    assert rc == 0, out + err
    assert "epoch 1/1: train loss" in out and "reached --max-steps 3" in out
    assert (tmp_path / "trusted" / "test_scores.json").exists()
