"""The segmentation task of a run (train/tasks/segmentation.py): loss, targets, confusion matrices merged over
ranks, the baseline's scores, and the files of a split's score."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from sen12ms_common.vocab.dfc import DfcScheme, igbp_to_dfc
from train.tasks.segmentation import MaskedCrossEntropy, SegmentationTask


def _batches(seed: int, n: int, classes: int, size: int = 16):
    g = torch.Generator().manual_seed(seed)
    for i in range(n):
        mask = torch.randint(0, classes, (2, size, size), generator=g, dtype=torch.uint8)
        mask[torch.rand((2, size, size), generator=g) < 0.2] = 255
        logits = torch.randn(2, classes, size, size, generator=g)
        yield {"mask": mask, "key": [f"k{seed}_{i}_0", f"k{seed}_{i}_1"]}, logits


def _independent_scores(pairs, classes: int) -> dict:
    """AA / IoU / mIoU / OA recomputed from the raw pixels, without a confusion matrix."""
    t = np.concatenate([b["mask"].numpy().ravel() for b, _ in pairs]).astype(np.int64)
    p = np.concatenate([lg.argmax(1).numpy().ravel() for _, lg in pairs])
    keep = t != 255
    t, p = t[keep], p[keep]
    recalls, ious = [], []
    for c in range(classes):
        tp, true, pred = np.sum((t == c) & (p == c)), np.sum(t == c), np.sum(p == c)
        if true:
            recalls.append(tp / true)
        ious.append(tp / (true + pred - tp) if true + pred - tp else 0.0)
    return {"AA": np.mean(recalls), "mIoU": np.mean(ious), "OA": np.mean(t == p), "IoU": ious}


def test_loss_ignores_255_and_an_empty_mask_is_zero_not_nan() -> None:
    loss = MaskedCrossEntropy()
    logits = torch.randn(2, 9, 8, 8, requires_grad=True)
    target = torch.randint(0, 9, (2, 8, 8))
    target[0, :4] = 255
    ref = torch.nn.functional.cross_entropy(logits, target, ignore_index=255)
    assert torch.allclose(loss(logits, target), ref, atol=1e-6)
    empty = torch.full((2, 8, 8), 255)
    value = loss(logits, empty)
    value.backward()
    assert float(value.detach()) == 0.0 and torch.isfinite(logits.grad).all()
    # Why it exists: torch's own loss is NaN there.
    assert math.isnan(float(torch.nn.functional.cross_entropy(logits.detach(), empty, ignore_index=255)))


def test_collectors_of_two_ranks_merge_to_the_scores_of_all_pixels() -> None:
    task = SegmentationTask(savanna=False)
    assert (task.num_classes, task.best_metric, task.class_names[2]) == (9, "mIoU", "Grassland")
    pairs = list(_batches(1, 3, 9)) + list(_batches(2, 2, 9))
    ranks = [task.collector(), task.collector()]
    for i, (batch, logits) in enumerate(pairs):
        ranks[i % 2].add(batch, logits)
    result = task.merge([r.part() for r in ranks], loss=0.5)
    assert result.samples == 10 and result.loss == 0.5 and result.keys == sorted(result.keys)
    metrics = task.score(result)
    ref = _independent_scores(pairs, 9)
    for k in ("AA", "mIoU", "OA"):
        assert metrics[k] == pytest.approx(ref[k], abs=1e-12)
    assert metrics["IoU"] == pytest.approx(ref["IoU"], abs=1e-12)
    assert metrics["dfcClasses"] == [1, 2, 4, 5, 6, 7, 8, 9, 10]
    scalars = task.scalars(metrics)
    assert scalars["mIoU"] == metrics["mIoU"] and scalars["IoU/Water"] == metrics["IoU"][8]
    assert task.val_summary(metrics).startswith("mIoU ")


def test_target_is_the_mask_and_a_batch_without_one_is_named() -> None:
    task = SegmentationTask()
    batch = {"mask": torch.tensor([[[0, 255], [9, 3]]], dtype=torch.uint8), "key": ["a"]}
    assert task.target(batch, torch.device("cpu")).dtype == torch.int64
    with pytest.raises(KeyError, match="holds no mask"):
        task.target({"target": torch.zeros(1), "key": ["a"]}, torch.device("cpu"))


def test_models_have_the_scheme_s_classes() -> None:
    for savanna, n in ((True, 10), (False, 9)):
        net = SegmentationTask(savanna=savanna).build_model("SmallUNet", 4)
        assert net(torch.zeros(1, 4, 32, 32)).shape == (1, n, 32, 32)


def test_perfect_prediction_of_the_real_lc_patch(real_dir: Path, tmp_path: Path) -> None:
    """Ground truth from the real lc patch (IGBP 4, 5 = forest; 8, 9 = savanna): predicting it
    exactly gives AA = OA = 1, and mIoU = 2 / 10 since mIoU counts absent classes as 0 (baseline)."""
    rasterio = pytest.importorskip("rasterio")
    with rasterio.open(real_dir / "ROIs1158_spring_lc_1_p30.tif") as ds:
        igbp = ds.read(1)
    task = SegmentationTask(savanna=True)
    mask = torch.from_numpy(igbp_to_dfc(igbp))[None]
    logits = torch.nn.functional.one_hot(mask.long(), 10).permute(0, 3, 1, 2).float()
    col = task.collector()
    col.add({"mask": mask, "key": ["ROIs1158_spring_s2_1_p30"]}, logits)
    metrics = task.score(task.merge([col.part()], 0.0))
    assert (metrics["AA"], metrics["OA"], metrics["classesPresent"]) == (1.0, 1.0, 2)
    assert metrics["mIoU"] == pytest.approx(0.2)
    assert metrics["pixels"] == 256 * 256
    # Without savanna the savanna pixels are ignored: only forest is left.
    nos = SegmentationTask(savanna=False)
    col = nos.collector()
    m9 = torch.from_numpy(igbp_to_dfc(igbp, savanna=False))[None]
    col.add({"mask": m9, "key": ["x"]}, torch.zeros(1, 9, 256, 256))  # predicts class 0 = Forest everywhere
    m = nos.score(nos.merge([col.part()], 0.0))
    assert m["pixels"] == int(np.isin(igbp, (1, 2, 3, 4, 5)).sum()) and m["OA"] == 1.0


def test_files_of_a_split(tmp_path: Path) -> None:
    task = SegmentationTask(savanna=False)
    pairs = list(_batches(3, 2, 9))
    col = task.collector()
    for b, lg in pairs:
        col.add(b, lg)
    metrics = task.score(task.merge([col.part()], 0.1))
    paths = task.write(str(tmp_path / "run"), "test", metrics, None)
    assert [Path(p).name for p in paths] == ["test_scores.json", "test_classes.csv", "test_confusion.png"]
    saved = json.loads((tmp_path / "run" / "test_scores.json").read_text())
    assert saved["mIoU"] == pytest.approx(metrics["mIoU"]) and len(saved["confusion"]) == 9
    rows = list(csv.DictReader((tmp_path / "run" / "test_classes.csv").open()))
    assert [r["class"] for r in rows] == list(DfcScheme(False).names)
    cm = np.asarray(metrics["confusion"])
    assert [int(r["true_pixels"]) for r in rows] == cm.sum(axis=1).tolist()
    assert float(rows[4]["IoU"]) == pytest.approx(metrics["IoU"][4], abs=1e-6)
    assert (tmp_path / "run" / "test_confusion.png").read_bytes()[:4] == b"\x89PNG"
    # An empty split: AA and OA are NaN, written as null (strict JSON).
    empty = task.score(task.merge([task.collector().part()], 0.0))
    task.write(str(tmp_path / "run"), "val", empty, None)
    assert json.loads((tmp_path / "run" / "val_scores.json").read_text())["AA"] is None
