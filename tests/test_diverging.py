"""A run that diverges and checkpoints that hold what no good run writes end in one line (issue
29, items 10 and 11): `--lr 1e20` (NaN at validation) and `--lr 1e38` (the optimizer's step
overflows) say the run diverged and write no checkpoint of the diverged state; `train.evaluate`
refuses NaN weights and a stored normalisation scale of 1e30."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow  # training runs in subprocesses

REPO = Path(__file__).resolve().parents[1]
TRAIN = ("--model", "SmallCNN", "--input", "rgb", "--batch-size", "8", "--workers", "0", "--streams", "1",
         "--stats", "manifest", "--seed", "5", "--device", "cpu")


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=600)
    return proc.returncode, out, err


def test_diverging_runs_and_bad_checkpoints_are_one_line(sample_shards: Path, tmp_path: Path) -> None:
    # The good run whose checkpoint is spoilt below trains beside the two diverging ones.
    procs = {
        "1e20": start("train", "--shards", str(sample_shards), *TRAIN, "--epochs", "2", "--lr", "1e20",
                      "--run-dir", str(tmp_path / "r20")),
        "1e38": start("train", "--shards", str(sample_shards), *TRAIN, "--epochs", "2", "--lr", "1e38",
                      "--run-dir", str(tmp_path / "r38")),
    }
    code, out, err = finish(start("train", "--shards", str(sample_shards), *TRAIN, "--epochs", "1",
                                  "--run-dir", str(tmp_path / "good")))
    assert code == 0, err
    good = next((tmp_path / "good" / "checkpoints").glob("*_model_best.pth"))
    nan = torch.load(good, weights_only=True)
    first = next(iter(nan["model_state_dict"]))
    nan["model_state_dict"][first] = nan["model_state_dict"][first] * float("nan")
    torch.save(nan, tmp_path / "nan.pth")
    huge = torch.load(good, weights_only=True)
    huge["input_transform"]["scale"] = [1e30] * len(huge["input_transform"]["scale"])
    torch.save(huge, tmp_path / "scale.pth")
    procs.update({
        "nan": start("train.evaluate", "--shards", str(sample_shards), "--checkpoint", str(tmp_path / "nan.pth"),
                     "--out", str(tmp_path / "e1"), "--device", "cpu"),
        "scale": start("train.evaluate", "--shards", str(sample_shards), "--checkpoint", str(tmp_path / "scale.pth"),
                       "--out", str(tmp_path / "e2"), "--device", "cpu"),
    })
    expected = {
        "1e20": "Error: training diverged in epoch 0 by step 4 (train loss nan, weights or outputs no longer "
                "finite; --lr 1e+20 is likely too large); no checkpoint was written",
        "1e38": "Error: training diverged in epoch 0 by step 0 (train loss inf, weights or outputs no longer "
                "finite; --lr 1e+38 is likely too large); no checkpoint was written",
        "nan": f"Error: {tmp_path / 'nan.pth'}: weight {first} holds NaN or infinity (the checkpoint of a "
               "diverged run?)",
        "scale": f"Error: {tmp_path / 'scale.pth'}: stored input_transform has a scale or offset beyond +-1e+06 "
                 "(largest 1e+30); a normalisation of stored values never needs one",
    }
    for name, proc in procs.items():
        code, out, err = finish(proc)
        assert code == 1 and "Traceback" not in err, (name, err)
        assert err.splitlines()[-1] == expected[name], (name, err)
    for run in ("r20", "r38"):
        assert not list((tmp_path / run / "checkpoints").glob("*.pth"))  # no diverged state was saved
