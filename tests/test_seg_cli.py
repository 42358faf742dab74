"""`python -m train --task segmentation` end to end on tiny synthetic shards (SEN12MS lc masks for
training, DFC2020 dfc masks for validation and test), exact resume, then `train.evaluate` and
`train.predict` on its checkpoint; refusals in one line."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow  # training, evaluation and prediction runs in subprocesses

REPO = Path(__file__).resolve().parents[1]
TRAIN = ["--task", "segmentation", "--model", "SmallUNet", "--input", "s2hr+s2mr+s1", "--stats", "dfc2020",
         "--no-savanna", "--batch-size", "2", "--augment", "--device", "cpu", "--val-split", "dfc2020_val",
         "--test-split", "dfc2020_test", "--optimizer", "rmsprop", "--lr", "0.0005", "--decay", "5e-4"]


def _run(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True)


@pytest.fixture(scope="module")
def seg_shards(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A SEN12MS sample (4 scenes x 2 patches) and a DFC2020 sample (2 regions x 2 patches) in one
    shard set with lc masks: (DFC2020 tree, shards)."""
    from convert.sample.sen12ms import synthesize
    from convert.sample.dfc2020 import synthesize_dfc2020

    root = tmp_path_factory.mktemp("segcli")
    synthesize(root / "sen12ms", scenes=4, patches_per_scene=2, seed=5, progress=False)
    synthesize_dfc2020(root / "dfc", regions=2, patches_per_region=2, seed=5, progress=False)
    proc = _run("convert", "shards", "--data", str(root / "sen12ms"), "--data", str(root / "dfc"),
                "--out", str(root / "shards"), "--modalities", "s1,s2,lc", "--workers", "1", "--no-progress")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return root / "dfc", root / "shards"


def _weights(run: Path) -> dict:
    (ckpt,) = (run / "checkpoints").glob("*_checkpoint.pth")
    return torch.load(ckpt, map_location="cpu", weights_only=True)


def test_train_resume_evaluate_predict(seg_shards: tuple[Path, Path], tmp_path: Path) -> None:
    rasterio = pytest.importorskip("rasterio")
    dfc_tree, shards = seg_shards
    whole = _run("train", *TRAIN, "--shards", str(shards), "--epochs", "2", "--run-dir", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr
    assert "segmentation without savanna (9 classes)" in whole.stdout and "dfc2020_val 2" in whole.stdout
    assert "val loss" in whole.stdout and "mIoU" in whole.stdout

    # Interrupted after epoch 0 and resumed: the same weights as the uninterrupted run.
    part = tmp_path / "part"
    first = _run("train", *TRAIN, "--shards", str(shards), "--epochs", "1", "--run-dir", str(part))
    assert first.returncode == 0, first.stderr
    (ckpt,) = (part / "checkpoints").glob("*_checkpoint.pth")
    resumed = _run("train", "--resume", str(ckpt), "--epochs", "2")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout
    a, b = _weights(tmp_path / "whole"), _weights(part)
    assert a["config"]["task"] == "segmentation" and a["config"]["no_savanna"] is True
    # The baseline's UNet optimiser, kept by the resumed run (its state restored: same weights).
    assert a["config"]["optimizer"] == b["config"]["optimizer"] == "rmsprop"
    assert "square_avg" in next(iter(b["optimizer_state_dict"]["state"].values()))
    assert a["step"] == b["step"] > 2  # two epochs of at least two steps
    for key, value in a["model_state_dict"].items():
        assert torch.equal(value, b["model_state_dict"][key]), key

    run = tmp_path / "whole"
    scores = json.loads((run / "test_scores.json").read_text())
    assert scores["samples"] == 2 and len(scores["confusion"]) == 9 and scores["pixels"] == 2 * 256 * 256
    rows = list(csv.DictReader((run / "test_classes.csv").open()))
    assert len(rows) == 9 and rows[0]["class"] == "Forest"
    assert (run / "test_confusion.png").read_bytes()[:4] == b"\x89PNG"
    (events,) = (run / "logs" / "runs").iterdir()
    assert {p.name for p in events.iterdir()} >= {"training", "val", "test"}

    # train.evaluate of the best checkpoint on the test split gives the run's own test scores.
    (best,) = (run / "checkpoints").glob("*_model_best.pth")
    ev = _run("train.evaluate", "--shards", str(shards), "--checkpoint", str(best), "--split", "dfc2020_test",
              "--out", str(tmp_path / "eval"), "--device", "cpu")
    assert ev.returncode == 0, ev.stderr
    again = json.loads((tmp_path / "eval" / "dfc2020_test_scores.json").read_text())
    assert again["confusion"] == scores["confusion"] and again["mIoU"] == scores["mIoU"]

    # train.predict: maps of the DFC2020 test patches over the contest tree's GeoTIFFs.
    maps = tmp_path / "maps"
    pr = _run("train.predict", "--checkpoint", str(best), "--shards", str(shards), "--split", "dfc2020_test",
              "--out", str(maps), "--device", "cpu")
    assert pr.returncode == 0, pr.stderr
    for name in ("ROIs0000_test_pred_0_p0.tif", "ROIs0000_test_pred_0_p1.tif"):
        src = dfc_tree / "ROIs0000_test" / "s2_0" / name.replace("_pred_", "_s2_")
        with rasterio.open(maps / name) as ds, rasterio.open(src) as ref:
            assert ds.crs == ref.crs and ds.transform == ref.transform and ds.count == 1
            assert set(ds.read(1).ravel().tolist()) <= {1, 2, 4, 5, 6, 7, 8, 9, 10}
    assert (maps / "previews" / "preview_0000.png").is_file()


@pytest.mark.parametrize("args, message", [
    (["--loader", "dali", "--model", "SmallUNet"],
     "Error: the dali loader makes no segmentation masks: use --loader shards for segmentation"),
    (["--model", "ResNet50"],
     "Error: --model: 'ResNet50' is not a segmentation model; choose one of: UNet, DeepLabV3Plus, SmallUNet"),
])
def test_refusals_are_one_line(seg_shards: tuple[Path, Path], tmp_path: Path, args: list[str], message: str) -> None:
    _, shards = seg_shards
    proc = _run("train", "--task", "segmentation", "--shards", str(shards), "--input", "s2hr", "--stats", "dfc2020",
                "--epochs", "1", "--device", "cpu", "--run-dir", str(tmp_path / "run"), *args)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [message]
    assert not (tmp_path / "run" / "checkpoints").exists() or not any((tmp_path / "run" / "checkpoints").iterdir())
