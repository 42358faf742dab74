"""Exact resume: a run interrupted (after an epoch, in the middle of one, or by SIGTERM) and
resumed ends with the same weights, bit for bit, as an uninterrupted run (CPU, fixed seed)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from runstops import GatedTrace, stop_points
from sen12ms_common.format.manifest import load_manifest

pytestmark = pytest.mark.slow  # training runs stopped and resumed

REPO = Path(__file__).resolve().parents[1]
TRACED = REPO / "tests" / "tracedtrain.py"  # python -m train that writes the keys it used


def train(shards: Path, run_dir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "train", "--shards", str(shards), "--run-dir", str(run_dir), *args]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def resume(ckpt: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "train", "--resume", str(ckpt), *args]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    return proc


def last_checkpoint(run_dir: Path) -> Path:
    (path,) = (run_dir / "checkpoints").glob("*_checkpoint.pth")
    return path


def assert_same_state(a: Path, b: Path) -> None:
    x, y = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    assert (x["epoch"], x["step"], x["resume_epoch"], x["resume_batch"]) == \
        (y["epoch"], y["step"], y["resume_epoch"], y["resume_batch"])
    assert x["best_prec"] == y["best_prec"]
    sa, sb = x["model_state_dict"], y["model_state_dict"]
    assert list(sa) == list(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    oa, ob = x["optimizer_state_dict"]["state"], y["optimizer_state_dict"]["state"]
    assert list(oa) == list(ob)
    for k in oa:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(oa[k][name], ob[k][name]), (k, name)
    assert torch.equal(x["rng_state"]["torch"], y["rng_state"]["torch"])


COMMON = ("--model", "SmallCNN", "--input", "s1s2", "--label-type", "single_label", "--batch-size", "8",
          "--stats", "manifest", "--seed", "11")


@pytest.fixture(scope="module")
def uninterrupted(sample_shards: Path, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("resume") / "full"
    train(sample_shards, run_dir, *COMMON, "--epochs", "2", "--workers", "0")
    return last_checkpoint(run_dir)


def test_resume_after_an_epoch_matches_an_uninterrupted_run(sample_shards, uninterrupted, tmp_path):
    # Different worker counts on purpose: the data order does not depend on them.
    train(sample_shards, tmp_path / "r", *COMMON, "--epochs", "1", "--workers", "2")
    ckpt = last_checkpoint(tmp_path / "r")
    assert torch.load(ckpt, weights_only=True)["resume_epoch"] == 1
    out = resume(ckpt, "--epochs", "2", "--workers", "1")
    assert "resumed from" in out.stdout and "epoch 2, batch 0" in out.stdout
    assert_same_state(ckpt, uninterrupted)


def test_resume_in_the_middle_of_an_epoch_matches(sample_shards, uninterrupted, tmp_path):
    train(sample_shards, tmp_path / "r", *COMMON, "--epochs", "2", "--workers", "1", "--max-steps", "2")
    ckpt = last_checkpoint(tmp_path / "r")
    state = torch.load(ckpt, weights_only=True)
    assert (state["step"], state["resume_epoch"], state["resume_batch"]) == (2, 0, 2)
    resume(ckpt, "--max-steps", "0")  # every other option from the checkpoint
    assert_same_state(ckpt, uninterrupted)


def test_sigterm_writes_a_checkpoint_and_the_resumed_run_matches(sample_shards, tmp_path):
    args = ("--model", "SmallCNN", "--input", "rgb", "--batch-size", "1", "--stats", "manifest", "--seed", "5",
            "--epochs", "2", "--workers", "1")
    train(sample_shards, tmp_path / "full", *args)
    run_dir = tmp_path / "killed"
    cmd = [sys.executable, str(TRACED), str(tmp_path / "trace"), "--shards", str(sample_shards), "--run-dir",
           str(run_dir), *args]
    # Signal the run once it has trained its first batch of epoch 1 (it waits for the trace to be read).
    gate = GatedTrace(tmp_path / "trace" / "keys-rank0.txt", when=lambda text: "train 1 " in text,
                      act=lambda: os.kill(proc.pid, signal.SIGTERM))
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
        gate.close()
    assert gate.acted.is_set(), (out, err)
    assert proc.returncode == 128 + signal.SIGTERM, (out, err)
    ckpt = last_checkpoint(run_dir)
    assert "--resume" in err
    steps_per_epoch = load_manifest(str(sample_shards)).samples("train")
    # Inside epoch 1: after its first step, or a step later where the signal and the step race.
    (where,) = stop_points(err, steps_per_epoch, 2)
    assert where.rest.startswith(f"checkpoint written to {ckpt}"), err
    state = torch.load(ckpt, weights_only=True)
    assert (state["step"], state["resume_epoch"], state["resume_batch"]) == (where.step, where.epoch, where.batch)
    assert where.epoch == 1 and where.batch >= 1
    assert not (run_dir / "test_scores.json").exists()
    resume(ckpt)
    assert_same_state(ckpt, last_checkpoint(tmp_path / "full"))
