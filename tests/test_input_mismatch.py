"""A checkpoint and an input that do not go together say so in one line (issue 15, item 7):
"trained on s2 (10 channels), asked for s1s2 (12)" instead of tensor shapes, for `--resume` and
`train.evaluate`; shards without the checkpoint's modality name an option the command has."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow  # training runs and checkpoints through the CLI

REPO = Path(__file__).resolve().parents[1]
S2_S1_BANDS = "B2,B3,B4,B5,B6,B7,B8,B8A,B11,B12,VH,VV"  # 12 channels like s1s2, VV and VH swapped


def cli(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    return proc.stderr.strip()


def options_of(module: str, *sub: str) -> set[str]:
    return set(re.findall(r"--[a-z][a-z-]+", cli(module, *sub, "--help").stdout))


@pytest.fixture(scope="module")
def s1s2_checkpoint(sample_shards: Path, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("mismatch") / "run"
    proc = cli("train", "--shards", str(sample_shards), "--model", "SmallCNN", "--input", "s1s2", "--epochs", "1",
               "--max-steps", "1", "--batch-size", "4", "--stats", "manifest", "--no-progress", "--run-dir", str(run))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (ckpt,) = (run / "checkpoints").glob("*_checkpoint.pth")
    return ckpt


@pytest.fixture(scope="module")
def s2_shards(sample_tree: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("s2only") / "shards"
    proc = cli("convert", "shards", "--data", str(sample_tree), "--out", str(out), "--modalities", "s2",
               "--workers", "2", "--no-progress")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def test_evaluate_on_shards_without_the_input_suggests_its_own_options(s1s2_checkpoint: Path, s2_shards: Path,
                                                                       tmp_path: Path):
    msg = one_line_error(cli("train.evaluate", "--shards", str(s2_shards), "--checkpoint", str(s1s2_checkpoint),
                             "--out", str(tmp_path / "eval")))
    assert msg == (f"Error: {s2_shards}: these shards hold no s1 (they hold s2); {s1s2_checkpoint} was trained on "
                   "s1s2 (12 channels): score it on shards converted with --modalities s1,s2")
    named = set(re.findall(r"--[a-z][a-z-]+", msg))
    assert named and named <= options_of("convert", "shards") and "--input" not in options_of("train.evaluate")
    assert not (tmp_path / "eval").exists()


def test_train_on_shards_without_the_input_points_at_input(s2_shards: Path, tmp_path: Path):
    msg = one_line_error(cli("train", "--shards", str(s2_shards), "--model", "SmallCNN", "--input", "s1s2",
                             "--stats", "manifest", "--run-dir", str(tmp_path / "run")))
    assert msg == f"Error: {s2_shards}: these shards hold no s1 (they hold s2); choose another --input"
    assert "--input" in options_of("train")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("asked, shown", [("s2", "s2 (10)"), (S2_S1_BANDS, f"{S2_S1_BANDS} (12)")])
def test_resume_with_another_input_says_what_it_was_trained_on(s1s2_checkpoint: Path, asked: str, shown: str):
    logs = sorted(p.name for p in (s1s2_checkpoint.parent.parent / "logs").iterdir())
    msg = one_line_error(cli("train", "--resume", str(s1s2_checkpoint), "--input", asked, "--no-progress"))
    assert msg == f"Error: {s1s2_checkpoint}: trained on s1s2 (12 channels), asked for {shown}"
    assert sorted(p.name for p in (s1s2_checkpoint.parent.parent / "logs").iterdir()) == logs  # nothing written


def test_evaluate_with_an_arguments_file_of_another_input(s1s2_checkpoint: Path, sample_shards: Path,
                                                          tmp_path: Path):
    (args,) = (s1s2_checkpoint.parent.parent / "logs").glob("*_arguments.txt")
    other = tmp_path / "s2_arguments.txt"
    other.write_text(re.sub(r"(?m)^input: s1s2$", "input: s2", re.sub(r"(?m)^use_s1: True$", "use_s1: False",
                                                                      args.read_text())))
    msg = one_line_error(cli("train.evaluate", "--shards", str(sample_shards), "--checkpoint", str(s1s2_checkpoint),
                             "--config", str(other), "--out", str(tmp_path / "eval")))
    assert msg == f"Error: {s1s2_checkpoint}: trained on s1s2 (12 channels), asked for s2 (10)"


def test_a_checkpoint_without_configuration_is_judged_by_its_first_convolution(s1s2_checkpoint: Path,
                                                                              sample_shards: Path, tmp_path: Path):
    state = torch.load(s1s2_checkpoint, weights_only=True)
    original = tmp_path / "original.pth"  # as the original toolbox saves: no configuration, no input
    torch.save({k: state[k] for k in ("epoch", "arch", "model_state_dict", "optimizer_state_dict", "best_prec")},
               original)
    (args,) = (s1s2_checkpoint.parent.parent / "logs").glob("*_arguments.txt")
    other = tmp_path / "rgb_arguments.txt"
    other.write_text(re.sub(r"(?m)^input: s1s2$", "input: rgb", args.read_text()))
    msg = one_line_error(cli("train.evaluate", "--shards", str(sample_shards), "--checkpoint", str(original),
                             "--config", str(other), "--out", str(tmp_path / "eval")))
    assert msg == f"Error: {original}: trained on 12 input channels, asked for rgb (3)"
    msg = one_line_error(cli("train", "--shards", str(sample_shards), "--resume", str(original), "--input", "s2",
                             "--run-dir", str(tmp_path / "run"), "--no-progress"))
    assert msg == f"Error: {original}: trained on 12 input channels, asked for s2 (10)"
