"""Hostile and careless inputs to `python -m train` / `python -m train.evaluate` (issue 13, items
7-9): a checkpoint's stored options pass the command line's checks and never choose where the run
writes; manifests are checked before anything is sized by them; labels are checked where a batch
arrives; full disks, read-only folders, huge stream counts and credentials in URLs end in one line.
"""

from __future__ import annotations

import io
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from sen12ms_common.errors import InputError
from sen12ms_common.format.manifest import checksums_of, load_manifest
from sen12ms_common.format.sample import LABEL_EXT, SampleLayout

pytestmark = pytest.mark.slow  # training and evaluation runs in subprocesses

REPO = Path(__file__).resolve().parents[1]
TRAIN = ("--model", "SmallCNN", "--input", "rgb", "--batch-size", "8", "--workers", "0", "--streams", "1",
         "--stats", "manifest", "--seed", "5", "--device", "cpu")
AFTERWORD = (" (a damaged shard? `convert verify` names every bad sample; --skip-bad-shards leaves such samples "
             "out)")


def start(*args: str, limit: dict[int, int] | None = None, prefix: tuple[str, ...] = ()) -> subprocess.Popen:
    """`python -m ARGS` started (several run at once: each pays the torch import)."""
    def limits() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past RLIMIT_FSIZE fails (EFBIG) instead
        for what, value in (limit or {}).items():
            resource.setrlimit(what, (value, value))

    return subprocess.Popen([*prefix, sys.executable, "-m", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=limits)


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


def files_under(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def base(sample_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The checkpoint of a finished one-epoch run."""
    run = tmp_path_factory.mktemp("hostile-train") / "run"
    code, out, err = finish(start("train", "--shards", str(sample_shards), *TRAIN, "--epochs", "1",
                                  "--run-dir", str(run)))
    assert code == 0, out + err
    return next((run / "checkpoints").glob("*_checkpoint.pth"))


def tampered(base: Path, folder: Path, change) -> Path:
    """A copy of the checkpoint in FOLDER/checkpoints/ with `change(ckpt)` applied."""
    ckpt = torch.load(base, weights_only=True)
    change(ckpt)
    path = folder / "checkpoints" / base.name
    path.parent.mkdir(parents=True)
    torch.save(ckpt, path)
    return path


# --- item 7: a checkpoint's stored options -----------------------------------------------------------

def _set_config(key, value):
    return lambda ckpt: ckpt["config"].__setitem__(key, value)


STORED = {
    "streams": (_set_config("streams", 100_000_000), "stored option 'streams': 100000000 is not an integer in 1..1024"),
    "batch": (_set_config("batch_size", -3), "stored option 'batch_size': -3 is not an integer in 1..2147483647"),
    "epochs": (_set_config("epochs", "3"), "stored option 'epochs': '3' is not an integer in 1..2147483647"),
    "lr": (_set_config("lr", float("nan")), "stored option 'lr': nan is not a finite number > 0.0"),
    "model": (_set_config("model", "os.system"), "stored option 'model': unknown model 'os.system'; choose one of: "),
    "timestamp": (lambda c: c.__setitem__("timestamp", "../../../elsewhere"),
                  "stored timestamp '../../../elsewhere' is not a YYYYmmdd_HHMMSS timestamp"),
    "position": (lambda c: c.__setitem__("resume_batch", -5), "stored resume_batch -5 is not an integer >= 0"),
}


def test_stored_options_pass_the_command_lines_checks(base: Path, tmp_path: Path):
    cases = {name: tampered(base, tmp_path / name, change) for name, (change, _) in STORED.items()}
    procs = {name: start("train", "--resume", str(path)) for name, path in cases.items()}
    for name, proc in procs.items():
        code, out, err = finish(proc)
        message = STORED[name][1]
        assert code == 1 and out == "", (name, out, err)
        assert err.startswith(f"Error: {cases[name]}: {message}") and err.count("\n") == 1, (name, err)
        # Nothing written: the run folder holds the checkpoint alone, as before.
        assert [p.name for p in (tmp_path / name).rglob("*") if p.is_file()] == [base.name], name
    assert not (tmp_path / "elsewhere").exists() and not (REPO / "runs" / "os.system").exists()


def test_a_checkpoint_never_chooses_where_the_run_writes(base: Path, sample_shards: Path, tmp_path: Path):
    elsewhere = tmp_path / "elsewhere"

    def change(ckpt):
        ckpt["config"]["run_dir"] = str(elsewhere)
        ckpt["config"]["streams"] = 100_000_000  # overridden by the command line: not applied, not refused

    path = tampered(base, tmp_path / "run", change)
    before = path.read_bytes()
    code, out, err = finish(start("train", "--resume", str(path), "--epochs", "2", "--streams", "1"))
    assert code == 0, out + err
    assert not elsewhere.exists()
    assert out.startswith(f"run {tmp_path / 'run'} (") and "epoch 2/2: train loss" in out
    written = files_under(tmp_path / "run")
    assert written[f"checkpoints/{base.name}"] != before and "test_scores.json" in written
    assert sum(1 for name in written if name.endswith("_arguments.txt")) == 1


def test_streams_are_bounded_on_the_command_line():
    from train.cli.train import main

    for args, message in (
            (["--streams", "100000000"], "Error: Invalid value for '--streams': 100000000 is not in the range "
                                         "1<=x<=1024."),
            (["--workers", "100000"], "Error: Invalid value for '--workers': 100000 is not in the range 0<=x<=1024."),
            (["--seed", "-1"], "Error: Invalid value for '--seed': -1 is not in the range 0<=x<=9223372036854775807.")):
        res = CliRunner().invoke(main, ["--shards", "x", *args])
        assert res.exit_code == 2 and res.output.strip().splitlines()[-1] == message, res.output


def test_options_check_is_one_function():
    from train.cli.options import check_options, cli_name
    from sen12ms_common.errors import InputError

    check_options({"streams": 1024, "lr": 1e-3, "threshold": 0.0, "max_steps": None, "input": "B8,B4"}, cli_name)
    for values, message in (({"streams": 1025}, "--streams: 1025 is not an integer in 1..1024"),
                            ({"threshold": float("inf")}, "--threshold: inf is not a finite number >= 0.0 and <= 1.0"),
                            ({"amp": "yes"}, "--amp: 'yes' is not True or False"),
                            ({"verify": 1}, "--no-verify: 1 is not True or False"),
                            ({"input": "B2,B99"}, "--input: unknown band 'B99'")):
        with pytest.raises(InputError) as err:
            check_options(values, cli_name)
        assert str(err.value).startswith(message), str(err.value)


# --- item 7 / 8: manifests ---------------------------------------------------------------------------

def _mutate(doc: dict, case: str) -> None:
    train, test = doc["splits"]["train"]["shards"], doc["splits"]["test"]["shards"]
    if case == "zero":
        train[0]["samples"] = 0
    elif case == "negative":
        train[0]["samples"] = -5
    elif case == "twice":
        train.append(dict(train[0]))
    elif case == "test-in-train":
        train.append(dict(test[0]))
    elif case == "huge":
        train[0]["samples"] = 10**12
    elif case == "huge-bytes":
        train[0]["samples"], train[0]["bytes"] = 10**7, 10**18
    elif case == "string":
        train[0]["samples"] = "3"
    elif case == "declared":
        doc["splits"]["train"]["samples"] += 1
    else:
        doc["layout"]["size"] = {"size-0": 0, "size-negative": -256, "size-huge": 1 << 20, "size-text": "abc"}[case]


def manifest_message(doc: dict, case: str) -> str:
    e = doc["splits"]["train"]["shards"][0]
    per = 1024 * len(SampleLayout.from_dict(doc["layout"]).member_exts())  # a header and a block per member
    return {
        "zero": f"train shard {e['name']}: 0 samples (a shard holds at least one)",
        "negative": f"train shard {e['name']}: -5 samples (a shard holds at least one)",
        "twice": f"train shard {e['name']}: named twice (also under train)",
        "test-in-train": f"train shard {doc['splits']['test']['shards'][0]['name']}: not named train-NNNNNN.tar "
                         "(a shard of another split, or not ours)",
        "huge": f"train shard {e['name']}: 1000000000000 samples cannot fit in {e['bytes']} bytes "
                f"(at least {per} bytes a sample)",
        "huge-bytes": f"train shard {e['name']}: more than 2000000 samples in the manifest (SEN12MS has 180,662)",
        "string": f"train shard {e['name']}: samples is '3', not an integer",
        "declared": f"split train: says {doc['splits']['train']['samples'] + 1} samples, its shards hold "
                    f"{doc['splits']['train']['samples']}",
        "size-0": "layout size 0 is not a patch size (1..256 pixels)",
        "size-negative": "layout size -256 is not a patch size (1..256 pixels)",
        "size-huge": "layout size 1048576 is not a patch size (1..256 pixels)",
        "size-text": "malformed manifest (ValueError: invalid literal for int() with base 10: 'abc')",
    }[case]


MANIFEST_CASES = ("zero", "negative", "twice", "test-in-train", "huge", "huge-bytes", "string", "declared",
                  "size-0", "size-negative", "size-huge", "size-text")


def test_manifests_are_checked_when_loaded(sample_shards: Path, tmp_path: Path):
    clean = json.loads((sample_shards / "manifest.json").read_text())
    for case in MANIFEST_CASES:
        doc = json.loads(json.dumps(clean))
        _mutate(doc, case)
        folder = tmp_path / case
        folder.mkdir()
        (folder / "manifest.json").write_text(json.dumps(doc))
        with pytest.raises(InputError) as err:
            load_manifest(str(folder))
        assert str(err.value) == f"{folder / 'manifest.json'}: {manifest_message(clean, case)}", case


@pytest.mark.parametrize("case", ["huge-bytes", "test-in-train", "size-huge"])
def test_every_reader_refuses_a_bad_manifest_in_one_line(case: str, sample_shards: Path, base: Path, tmp_path: Path):
    shards = tmp_path / "shards"
    shutil.copytree(sample_shards, shards)
    doc = json.loads((shards / "manifest.json").read_text())
    clean = json.loads(json.dumps(doc))
    _mutate(doc, case)
    (shards / "manifest.json").write_text(json.dumps(doc))
    expected = f"Error: {shards / 'manifest.json'}: {manifest_message(clean, case)}\n"
    # Under an address-space limit: a count that is believed would fail the test, not the machine.
    memory = {resource.RLIMIT_AS: 8 << 30}
    procs = [start("train", "--shards", str(shards), *TRAIN, "--no-verify", "--run-dir", str(tmp_path / "run"),
                   limit=memory),
             start("train.evaluate", "--shards", str(shards), "--checkpoint", str(base), "--out",
                   str(tmp_path / "eval"), "--no-verify", "--workers", "0", limit=memory),
             start("convert", "verify", str(shards), "--no-progress", limit=memory)]
    for proc in procs:
        code, out, err = finish(proc)
        assert (code, err) == (1, expected), (proc.args, out, err)
    assert not (tmp_path / "eval").exists() and not (tmp_path / "run" / "checkpoints").exists()


# --- item 7: labels in shards ------------------------------------------------------------------------

def test_bad_labels_of_a_batch():
    from train.run.labelcheck import bad_labels, checked_batch
    from sen12ms_common.errors import DataError

    good = np.zeros(17, np.float32)
    good[3] = 1.0
    rows = [good, np.full(17, np.nan, np.float32), good * 2, -good, good * 0.5, np.where(good > 0, np.inf, 0)]
    prob = torch.from_numpy(np.stack(rows).astype(np.float32))
    keys = [f"k{i}" for i in range(len(rows))]
    assert bad_labels(prob, keys) == [(1, "label holds a non-finite value (nan)"), (2, "label value 2 is outside 0..1"),
                                      (3, "label value -1 is outside 0..1"), (4, "label sums to 0.5000, not 1"),
                                      (5, "label holds a non-finite value (inf)")]
    batch = {"image": torch.arange(len(rows)).view(-1, 1), "prob": prob, "key": keys, "target": prob.clone()}
    with pytest.raises(DataError) as err:
        checked_batch(batch, "S (train split)", skip=False, skipped=[])
    assert str(err.value) == "S (train split): sample k1: label holds a non-finite value (nan)" + AFTERWORD
    skipped: list[str] = []
    kept = checked_batch(batch, "S (train split)", skip=True, skipped=skipped)
    assert kept["key"] == ["k0"] and kept["image"].tolist() == [[0]] and kept["prob"].shape == (1, 17)
    assert len(skipped) == 5 and skipped[0] == "S (train split): sample k1: label holds a non-finite value (nan)"
    assert checked_batch({**batch, "prob": prob[1:], "key": keys[1:], "image": batch["image"][1:],
                          "target": prob[1:]}, "S", skip=True, skipped=[]) is None


def _set_label(shards: Path, split: str, label: np.ndarray) -> str:
    """Give the first sample of the split's first shard another label; the manifest follows."""
    manifest = json.loads((shards / "manifest.json").read_text())
    entry = manifest["splits"][split]["shards"][0]
    path = shards / entry["name"]
    with tarfile.open(path) as tar:
        members = [(info, tar.extractfile(info).read()) for info in tar]
    key = members[0][0].name.split(".", 1)[0]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for info, data in members:
            if info.name == f"{key}.{LABEL_EXT}":
                data = label.astype("<f4").tobytes()
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(buf.getvalue())
    entry["bytes"] = path.stat().st_size
    entry.update(checksums_of(str(path)))
    (shards / "manifest.json").write_text(json.dumps(manifest))
    return key


@pytest.fixture(scope="module")
def bad_label_shards(sample_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    shards = tmp_path_factory.mktemp("bad-labels") / "shards"
    shutil.copytree(sample_shards, shards)
    nan = np.full(17, np.nan)
    two = np.zeros(17)
    two[0] = 2.0
    return shards, _set_label(shards, "train", nan), _set_label(shards, "test", two)


def test_a_nan_label_stops_training_in_one_line_or_is_skipped(bad_label_shards, base: Path, tmp_path: Path):
    shards, train_key, test_key = bad_label_shards
    manifest = load_manifest(str(shards))
    n_test = manifest.samples("test")
    train_shard, test_shard = (shards / manifest.splits[s][0].name for s in ("train", "test"))
    procs = [start("train", "--shards", str(shards), *TRAIN, "--epochs", "1", "--run-dir", str(tmp_path / "stop")),
             start("train", "--shards", str(shards), *TRAIN, "--epochs", "1", "--run-dir", str(tmp_path / "skip"),
                   "--skip-bad-shards"),
             start("train.evaluate", "--shards", str(shards), "--checkpoint", str(base), "--out",
                   str(tmp_path / "eval"), "--workers", "0")]
    code, out, err = finish(procs[0])
    bad = f"{train_shard}: sample {train_key}: label holds a non-finite value (nan)"
    assert code == 1, out + err
    ckpt = tmp_path / "stop" / "checkpoints"
    m = re.fullmatch(re.escape(f"Error: {bad}{AFTERWORD}") + r"( \(checkpoint of step (\d+) written to (\S+); "
                     r"continue with --resume \3\))?\n", err)
    assert m, err
    assert not (tmp_path / "stop" / "test_scores.json").exists()
    if m[1]:  # the steps before the bad batch are kept
        assert Path(m[3]).parent == ckpt and torch.load(m[3], weights_only=True)["step"] == int(m[2])
    else:
        assert not ckpt.exists() or not any(ckpt.iterdir())

    code, out, err = finish(procs[1])
    assert code == 0, out + err
    assert f"train: skipped 1 bad shard(s)/sample(s): {bad}" in out
    assert (f"test: skipped 1 bad shard(s)/sample(s): {test_shard}: sample {test_key}: label value 2 is "
            "outside 0..1") in out
    scores = json.loads((tmp_path / "skip" / "test_scores.json").read_text())
    assert scores["numSamples"] == n_test - 1

    code, out, err = finish(procs[2])
    assert (code, err) == (1, f"Error: {test_shard}: sample {test_key}: label value 2 is outside 0..1"
                               f"{AFTERWORD}\n"), out + err
    assert not (tmp_path / "eval").exists()


# --- item 8: full disk, read-only folders --------------------------------------------------------------

def test_a_full_disk_at_the_checkpoint_keeps_the_last_one(base: Path, tmp_path: Path):
    """RLIMIT_FSIZE below the checkpoint's size: its write fails (EFBIG) as on a full disk (ENOSPC),
    through the same code path; the checkpoint of the epoch before stays whole and resumable."""
    run = tmp_path / "run"
    shutil.copytree(base.parent.parent, run)
    ckpt = run / "checkpoints" / base.name
    kept = {k: v for k, v in files_under(run).items() if not k.startswith("logs/")}  # the log goes on
    code, out, err = finish(start("train", "--resume", str(ckpt), "--epochs", "2",
                                  limit={resource.RLIMIT_FSIZE: ckpt.stat().st_size // 2}))
    assert code == 1, out + err
    assert err == (f"Error: {ckpt}: cannot write the checkpoint (File too large); the last checkpoint written is "
                   f"kept: make room and continue with --resume {ckpt}\n")
    after = files_under(run)
    assert {k: v for k, v in after.items() if k in kept} == kept  # nothing written over
    assert all(not Path(k).name.startswith(".") for k in after)  # no temporary left
    code, out, err = finish(start("train", "--resume", str(ckpt), "--epochs", "2"))
    assert code == 0 and "epoch 2/2: train loss" in out, out + err
    assert torch.load(ckpt, weights_only=True)["resume_epoch"] == 2


def read_only(folder: Path) -> tuple[tuple[str, ...], str]:
    """A command prefix under which `folder` is read-only, and the error it gives. As root (who
    writes anywhere despite chmod) a read-only bind mount in a private mount namespace."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return (), "Permission denied"
    if shutil.which("unshare") is None:
        pytest.skip("running as root without unshare(1): no way to make a folder read-only")
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(folder), "true"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot bind-mount read-only here: {probe.stderr.strip()}")
    return ("unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(folder)), "Read-only file system"


def test_read_only_output_folders_give_one_line(base: Path, sample_shards: Path, sample_tree: Path, tmp_path: Path):
    ro = tmp_path / "ro"
    (ro / "labels").mkdir(parents=True)
    (ro / "labels" / "notes.txt").write_text("the user's")
    prefix, reason = read_only(ro)
    procs = {
        "train": start("train", "--shards", str(sample_shards), *TRAIN, "--epochs", "1", "--run-dir", str(ro / "run"),
                       prefix=prefix),
        "evaluate": start("train.evaluate", "--shards", str(sample_shards), "--checkpoint", str(base), "--out",
                          str(ro / "eval"), "--workers", "0", prefix=prefix),
        "labels": start("convert", "labels", "--data", str(sample_tree), "--out", str(ro / "labels"), "--workers", "1",
                        "--no-progress", prefix=prefix),
        "splits": start("convert", "splits", "--data", str(sample_tree), "--out", str(ro / "splits"), prefix=prefix),
    }
    expected = {
        "train": f"Error: {ro / 'run'}: cannot write ({reason})\n",
        "evaluate": f"Error: {ro / 'eval'}: cannot write ({reason})\n",
        "labels": f"Error: {ro / 'labels'}: cannot write ({reason}); no label file was written or replaced there\n",
        "splits": f"Error: {ro / 'splits'}: cannot write ({reason}); no list was written or replaced there\n",
    }
    for name, proc in procs.items():
        code, out, err = finish(proc)
        assert code == 1, (name, out, err)
        assert err.splitlines()[-1] + "\n" == expected[name] and "Traceback" not in err, (name, err)
    ro.chmod(0o755)
    assert files_under(ro) == {"labels/notes.txt": b"the user's"}


# --- item 9: credentials in URLs -----------------------------------------------------------------------

def test_credentials_in_urls_are_refused_and_never_printed(base: Path, sample_shards: Path, sample_tree: Path,
                                                           tmp_path: Path):
    url = "s3://AKIAEXAMPLE:wJalr/XUtnFEMI+K7MDENG@bucket/x"
    shown = "s3://***@bucket/x"
    hint = ": credentials in a URL are refused; set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) instead"
    procs = {
        f"{shown}/manifest.json": start("train", "--shards", url, *TRAIN, "--run-dir", str(tmp_path / "a")),
        shown: start("train", "--shards", str(sample_shards), *TRAIN, "--run-dir", url),
        f"{shown}/eval": start("train.evaluate", "--shards", str(sample_shards), "--checkpoint", str(base), "--out",
                               url + "/eval"),
        f"{shown}/labels": start("convert", "labels", "--data", str(sample_tree), "--out", url + "/labels",
                                 "--no-progress"),
        f"{shown}/tree/manifest.json": start("convert", "verify", url + "/tree", "--no-progress"),
    }
    for where, proc in procs.items():
        code, out, err = finish(proc)
        assert (code, out, err) == (1, "", f"Error: {where}{hint}\n"), (proc.args, out, err)
    assert not (tmp_path / "a").exists() and not (REPO / "s3:").exists()


def test_redact_removes_user_info_from_every_url():
    from sen12ms_common.storage.files import redact
    from sen12ms_common.errors import StorageError

    assert redact("s3://K:S@b/x and http://u@h/p, s3://b/key@2x.png, /data/a@b") == \
        "s3://***@b/x and http://***@h/p, s3://b/key@2x.png, /data/a@b"
    assert redact("s3://AKIA:abc/def+ghi@bucket/x") == "s3://***@bucket/x"  # secrets may hold '/'
    err = StorageError("s3://K:S@b/x: broke", "s3://K:S@b/x")
    assert (str(err), err.url) == ("s3://***@b/x: broke", "s3://***@b/x")
