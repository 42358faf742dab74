"""Every option that takes an output folder writes through `sen12ms_common.storage.files`, so that an
s3:// URL lands in the bucket (issue 15, item 1), against a real S3 server (tests/s3server.py):
`python -m train --run-dir`, `python -m train.evaluate --out`, `convert labels --out`, `convert
splits --out`. Other URL schemes are refused in one line; botocore's whole reason is given."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from s3server import WeedServer

from sen12ms_common.storage import files as storage

pytestmark = pytest.mark.slow  # a real S3 server, training and conversion outputs in it

REPO = Path(__file__).resolve().parents[1]
TRAIN = ("--model", "SmallCNN", "--input", "rgb", "--batch-size", "8", "--workers", "0", "--streams", "1",
         "--stats", "manifest", "--seed", "5", "--device", "cpu")


def tool(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`python -m ARGS` from `cwd` (where a URL taken for a path would leave an `s3:` folder)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def no_local_copy(cwd: Path) -> None:
    assert not (cwd / "s3:").exists() and not (cwd / "s3a:").exists() and not (cwd / "runs").exists()


@pytest.fixture(scope="module")
def local_run(sample_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The checkpoint of a one-epoch run on local disk."""
    run = tmp_path_factory.mktemp("s3-outputs") / "run"
    proc = tool("train", "--shards", str(sample_shards), *TRAIN, "--epochs", "1", "--run-dir", str(run), cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return next((run / "checkpoints").glob("*_checkpoint.pth"))


def test_train_run_dir_in_a_bucket(sample_shards: Path, s3_prefix: str, s3_env: WeedServer, tmp_path: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from train.run.checkpoint import load_checkpoint

    run = storage.join(s3_prefix, "runs", "x")
    proc = tool("train", "--shards", str(sample_shards), *TRAIN, "--epochs", "1", "--run-dir", run, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    no_local_copy(tmp_path)
    files = storage.find(run)
    ts = next(Path(f).name for f in files if f.endswith("_arguments.txt"))[: -len("_arguments.txt")]
    ckpt = storage.join(run, "checkpoints", f"{ts}_checkpoint.pth")
    assert [f for f in files if not f.startswith("logs/runs/")] == sorted([
        f"logs/{ts}_arguments.txt", f"logs/{ts}_train.log", f"checkpoints/{ts}_checkpoint.pth",
        f"checkpoints/{ts}_model_best.pth", "metrics.csv", "test_confusion.png", "test_predictions.npz",
        "test_scores.json", "training_curves.png"])
    assert {f.split("/")[3] for f in files if f.startswith("logs/runs/")} == {"training", "val", "test"}
    # What the run printed is its log; the checkpoint and the scores are whole.
    assert storage.read_text(storage.join(run, "logs", f"{ts}_train.log")) == proc.stdout
    assert proc.stdout.startswith(f"run {run} ({ts}):")
    assert f"-> {run}/test_scores.json, {run}/test_predictions.npz" in proc.stdout
    assert load_checkpoint(ckpt)["resume_epoch"] == 1
    assert json.loads(storage.read_text(storage.join(run, "test_scores.json")))["numSamples"] > 0
    events = tmp_path / "events"
    for f in files:
        if f.startswith("logs/runs/") and "/training/" in f:
            (events / Path(f).name).parent.mkdir(parents=True, exist_ok=True)
            (events / Path(f).name).write_bytes(storage.read_bytes(storage.join(run, f)))
    acc = EventAccumulator(str(events))
    acc.Reload()
    assert [e.step for e in acc.Scalars("loss")] == [0]

    # Resumed from the bucket: the run goes on in the checkpoint's run folder there.
    again = tool("train", "--resume", ckpt, "--epochs", "2", cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    no_local_copy(tmp_path)
    assert again.stdout.startswith(f"run {run} ({ts}):") and "epoch 2/2: train loss" in again.stdout
    assert storage.read_text(storage.join(run, "logs", f"{ts}_train.log")) == proc.stdout + again.stdout
    assert load_checkpoint(ckpt)["resume_epoch"] == 2
    rows = storage.read_text(storage.join(run, "metrics.csv")).splitlines()
    assert [r.split(",")[:2] for r in rows[1:]] == [[ts, "1"], [ts, "2"]]  # the first launch's row carried over
    assert storage.read_bytes(storage.join(run, "training_curves.png")).startswith(b"\x89PNG")
    assert sum(1 for f in storage.find(run) if f.endswith("_arguments.txt")) == 2

    # Scored from the bucket: the results go to the checkpoint's run folder there.
    scored = tool("train.evaluate", "--shards", str(sample_shards), "--checkpoint", ckpt, "--split", "val",
                  "--workers", "0", cwd=tmp_path)
    assert scored.returncode == 0, scored.stdout + scored.stderr
    no_local_copy(tmp_path)
    assert f"-> {run}/val_scores.json, {run}/val_predictions.npz" in scored.stdout
    assert json.loads(storage.read_text(storage.join(run, "val_scores.json")))["numSamples"] > 0


def test_evaluate_out_in_a_bucket(local_run: Path, sample_shards: Path, s3_prefix: str, s3_env: WeedServer,
                                  tmp_path: Path):
    out = storage.join(s3_prefix, "eval")
    args = ("train.evaluate", "--shards", str(sample_shards), "--checkpoint", str(local_run), "--split", "val",
            "--workers", "0")
    remote, local = tool(*args, "--out", out, cwd=tmp_path), tool(*args, "--out", str(tmp_path / "local"), cwd=REPO)
    assert remote.returncode == 0 and local.returncode == 0, remote.stderr + local.stderr
    no_local_copy(tmp_path)
    assert f"-> {out}/val_scores.json, {out}/val_predictions.npz" in remote.stdout
    assert storage.listdir(out) == ["val_confusion.png", "val_predictions.npz", "val_scores.json"]
    for name in storage.listdir(out):
        assert storage.read_bytes(storage.join(out, name)) == (tmp_path / "local" / name).read_bytes()


@pytest.mark.parametrize("command", ["labels", "splits"])
def test_convert_out_in_a_bucket(command: str, sample_tree: Path, s3_prefix: str, s3_env: WeedServer, tmp_path: Path):
    out = storage.join(s3_prefix, command)
    extra = ("--no-progress", "--workers", "1") if command == "labels" else ()
    remote = tool("convert", command, "--data", str(sample_tree), "--out", out, *extra, cwd=tmp_path)
    local = tool("convert", command, "--data", str(sample_tree), "--out", str(tmp_path / "local"), *extra, cwd=REPO)
    assert remote.returncode == local.returncode, remote.stderr + local.stderr
    no_local_copy(tmp_path)
    names = sorted(p.name for p in (tmp_path / "local").iterdir())
    assert len(names) >= 7 and storage.listdir(out) == names
    for name in names:
        assert storage.read_bytes(storage.join(out, name)) == (tmp_path / "local" / name).read_bytes(), name
    assert f"wrote {len(names)} files to {out}: " in remote.stdout


def test_other_schemes_are_refused_in_one_line(local_run: Path, sample_shards: Path, sample_tree: Path,
                                               tmp_path: Path):
    cases = {
        "--run-dir": ("train", "--shards", str(sample_shards), *TRAIN, "--run-dir", "gs://b/run"),
        "--out": ("train.evaluate", "--shards", str(sample_shards), "--checkpoint", str(local_run), "--out",
                  "gs://b/run"),
    }
    for option, args in cases.items():
        proc = tool(*args, cwd=tmp_path)
        assert (proc.returncode, proc.stderr) == (
            1, f"Error: {option} gs://b/run: only local folders and s3:// URLs can be written\n"), proc.stderr
    for command in ("labels", "splits"):
        proc = tool("convert", command, "--data", str(sample_tree), "--out", "gs://b/run", cwd=tmp_path)
        assert (proc.returncode, proc.stderr) == (
            1, "Error: --out gs://b/run: only local folders and s3:// URLs can be written\n"), proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_botocores_whole_reason_is_given(s3_env: WeedServer, tmp_path: Path):
    proc = tool("convert", "verify", "s3://not!a-bucket/x", "--no-progress", cwd=tmp_path)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith('Error: s3://not!a-bucket/x/manifest.json: ParamValidationError: Parameter '
                                  'validation failed: Invalid bucket name "not!a-bucket": Bucket name must match '
                                  'the regex "'), proc.stderr
