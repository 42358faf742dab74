"""Segmentation metrics recomputed independently (issue 16, item 4).

Two independent references: the baseline's procedure as its code/metrics.py describes it (sklearn
confusion_matrix per patch over non-ignored pixels, row-normalised diagonal summed and divided by
the classes present, IoU with 0 for 0/0, mIoU the mean over all classes), and plain loops.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix

from sen12ms_common.vocab.dfc import DfcScheme
from train.tasks.segmetrics import ConfusionMatrix, segmentation_scores


def baseline_procedure(gts: np.ndarray, preds: np.ndarray, n: int) -> dict:
    state = np.zeros((n, n))
    for gt, pred in zip(gts, preds):
        gt, pred = gt.flatten(), pred.flatten()
        keep = gt != 255
        if keep.any():
            state += confusion_matrix(gt[keep], pred[keep], labels=np.arange(n))
    rows = state.sum(axis=1)[:, None]
    normed = np.divide(state, rows, out=np.zeros_like(state), where=rows != 0)
    aa = np.diagonal(normed).sum() / (state.sum(axis=1) > 0).sum()
    iou = np.zeros(n)
    for i in range(n):
        den = state[i, :].sum() + state[:, i].sum() - state[i, i]
        iou[i] = state[i, i] / den if den != 0 else 0.0
    return {"cm": state, "AA": aa, "IoU": iou, "mIoU": iou.mean()}


def loop_scores(gts: np.ndarray, preds: np.ndarray, n: int) -> dict:
    cm = [[0] * n for _ in range(n)]
    for g, p in zip(gts.ravel().tolist(), preds.ravel().tolist()):
        if g != 255 and g < n:
            cm[g][p] += 1
    recalls, ious = [], []
    for i in range(n):
        true = sum(cm[i])
        pred = sum(cm[r][i] for r in range(n))
        if true:
            recalls.append(cm[i][i] / true)
        union = true + pred - cm[i][i]
        ious.append(cm[i][i] / union if union else 0.0)
    total = sum(map(sum, cm))
    return {"cm": cm, "AA": sum(recalls) / len(recalls), "IoU": ious, "mIoU": sum(ious) / n,
            "OA": sum(cm[i][i] for i in range(n)) / total}


def _random_batch(rng: np.random.Generator, n: int, shape=(6, 32, 32), absent=(), never_predicted=()):
    gt = rng.integers(0, n, size=shape)
    for c in absent:
        gt[gt == c] = (c + 1) % n
    gt[rng.random(shape) < 0.15] = 255  # ignored pixels
    gt[1] = 255  # a patch without any labelled pixel
    # Predictions: right 60 % of the time, else a random class.
    pred = np.where(rng.random(shape) < 0.6, np.where(gt == 255, 0, gt), rng.integers(0, n, size=shape))
    for c in never_predicted:
        pred[pred == c] = (c + 2) % n
    return gt.astype(np.uint8), pred


@pytest.mark.parametrize("n, absent, never", [(10, (), ()), (10, (2, 7), ()), (9, (), (4,)), (10, (2, 7), (4, 8))])
def test_random_predictions_against_both_references(n, absent, never):
    rng = np.random.default_rng(n + len(absent) + 10 * len(never))
    gt, pred = _random_batch(rng, n, absent=absent, never_predicted=never)
    acc = ConfusionMatrix(n)
    for i in range(0, len(gt), 4):  # batch by batch
        acc.update(torch.from_numpy(gt[i:i + 4]), torch.from_numpy(pred[i:i + 4]))
    got = acc.scores()
    base = baseline_procedure(gt, pred, n)
    loops = loop_scores(gt, pred, n)
    assert got["confusion"] == base["cm"].astype(int).tolist() == loops["cm"]
    assert got["AA"] == pytest.approx(base["AA"], rel=1e-12) == pytest.approx(loops["AA"], rel=1e-12)
    assert got["mIoU"] == pytest.approx(base["mIoU"], rel=1e-12) == pytest.approx(loops["mIoU"], rel=1e-12)
    np.testing.assert_allclose(got["IoU"], base["IoU"], rtol=1e-12)
    assert got["OA"] == pytest.approx(loops["OA"], rel=1e-12)
    assert got["classesPresent"] == n - len(absent)
    for c in absent:
        assert got["recall"][c] == 0 and got["IoU"][c] == 0
    for c in never:
        assert sum(row[c] for row in got["confusion"]) == 0 and got["IoU"][c] == 0


def test_hand_computed_edge_cases():
    # Class 2 is in the ground truth but never predicted; class 3 is predicted but absent from it.
    gt = torch.tensor([[0, 0, 1, 1, 2, 255, 0]], dtype=torch.uint8)
    pred = torch.tensor([[0, 1, 1, 3, 0, 2, 0]])
    acc = ConfusionMatrix(4)
    acc.update(gt, pred)
    s = acc.scores(["a", "b", "c", "d"])
    assert s["confusion"] == [[2, 1, 0, 0], [0, 1, 0, 1], [1, 0, 0, 0], [0, 0, 0, 0]]
    assert s["recall"] == pytest.approx([2 / 3, 1 / 2, 0, 0])
    assert s["AA"] == pytest.approx(7 / 18)  # over the three classes present, not four
    assert s["IoU"] == pytest.approx([1 / 2, 1 / 3, 0, 0])
    assert s["mIoU"] == pytest.approx(5 / 24)  # over all four classes
    assert s["OA"] == pytest.approx(1 / 2) and s["pixels"] == 6 and s["classesPresent"] == 3
    assert s["classNames"] == ["a", "b", "c", "d"]


def test_logits_targets_outside_the_classes_and_reset():
    n = DfcScheme(savanna=False).num_classes
    logits = torch.zeros(2, n, 4, 4)
    logits[:, 5] = 1.0
    logits[1, 5, 0, 0], logits[1, 2, 0, 0] = 0.0, 3.0
    target = torch.full((2, 4, 4), 5, dtype=torch.uint8)
    target[0, 0, :2] = 255  # ignored
    target[0, 1, 0] = 9  # not a class of the 9-class scheme: not counted, as sklearn with labels
    acc = ConfusionMatrix(n)
    acc.update(target, logits)
    cm = acc.numpy()
    assert cm.sum() == 32 - 3 and cm[5, 5] == 28 and cm[5, 2] == 1
    acc.reset()
    assert acc.numpy().sum() == 0
    s = acc.scores()
    assert math.isnan(s["AA"]) and math.isnan(s["OA"]) and s["mIoU"] == 0.0
    with pytest.raises(ValueError, match="differ in shape"):
        acc.update(target, torch.zeros(2, 4, 5))


def test_counts_stay_on_the_device_of_the_matrix():
    acc = ConfusionMatrix(3, device="cpu")
    acc.update(torch.tensor([[0, 1, 2]]), torch.tensor([[0, 1, 1]]))
    assert acc.matrix.device.type == "cpu" and acc.matrix.dtype == torch.int64
    if torch.cuda.is_available():
        gpu = ConfusionMatrix(3, device="cuda")
        gpu.update(torch.tensor([[0, 1, 2]]), torch.tensor([[0, 1, 1]]))
        assert gpu.matrix.device.type == "cuda" and np.array_equal(gpu.numpy(), acc.numpy())


def test_bad_matrices_and_names():
    with pytest.raises(ValueError, match="square"):
        segmentation_scores(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="2 class names for 3 classes"):
        segmentation_scores(np.eye(3), ["a", "b"])
