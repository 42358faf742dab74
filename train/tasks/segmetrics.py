"""Segmentation scores as the DFC2020 baseline defines them (its code/metrics.py).

A pixel confusion matrix (rows = true class, columns = predicted) over the pixels whose true
class is not ignored, accumulated batch by batch on the training device; the scores are computed
once from it. Definitions in docs/segmentation.md.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from sen12ms_common.vocab.dfc import IGNORE_INDEX

__all__ = ["ConfusionMatrix", "segmentation_scores", "SCALAR_KEYS"]

SCALAR_KEYS: tuple[str, ...] = ("AA", "mIoU", "OA")


class ConfusionMatrix:
    """Pixel counts (int64, on `device`) of true class i predicted as j."""

    def __init__(self, num_classes: int, device: torch.device | str | None = None,
                 ignore_index: int = IGNORE_INDEX) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, not {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.matrix = torch.zeros((num_classes, num_classes), dtype=torch.int64, device=device)

    def update(self, target: torch.Tensor, output: torch.Tensor) -> None:
        """Add a batch: `target` (B, H, W) classes; `output` (B, C, H, W) scores (their argmax
        is the prediction) or (B, H, W) predicted classes.

        Pixels whose true class is the ignore index or outside 0..C-1 are not counted (nor, as in
        the baseline, a predicted class outside 0..C-1).
        """
        pred = output.argmax(dim=1) if output.dim() == target.dim() + 1 else output
        if pred.shape != target.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
        n = self.num_classes
        dev = self.matrix.device
        t = target.to(dev, non_blocking=True).reshape(-1).long()
        p = pred.to(dev, non_blocking=True).reshape(-1).long()
        valid = (t != self.ignore_index) & (t >= 0) & (t < n) & (p >= 0) & (p < n)
        counts = torch.bincount(t[valid] * n + p[valid], minlength=n * n)
        self.matrix += counts.reshape(n, n)

    def reset(self) -> None:
        self.matrix.zero_()

    def numpy(self) -> np.ndarray:
        return self.matrix.cpu().numpy()

    def scores(self, class_names: Sequence[str] | None = None) -> dict[str, Any]:
        return segmentation_scores(self.numpy(), class_names)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, 0 where den is 0 (the baseline's rule)."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den != 0)


def segmentation_scores(confusion: np.ndarray, class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Scores of a confusion matrix (rows = true class), as plain floats and lists:

    - `recall`: per class, correct / true pixels (0 for a class absent from the ground truth);
    - `AA`: mean `recall` over the classes present in the ground truth (NaN without any pixel);
    - `IoU`: per class, correct / (true + predicted - correct), 0 where that is 0/0;
    - `mIoU`: mean `IoU` over ALL classes, absent ones counting 0, as the baseline averages;
    - `OA`: correct / counted pixels (NaN without any pixel);
    - `classesPresent`, `pixels`, `confusion` (the matrix as lists), `classNames` when given.
    """
    cm = np.asarray(confusion, dtype=np.int64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"a confusion matrix must be square, not {cm.shape}")
    if class_names is not None and len(class_names) != cm.shape[0]:
        raise ValueError(f"{len(class_names)} class names for {cm.shape[0]} classes")
    diag, true, predicted = np.diag(cm), cm.sum(axis=1), cm.sum(axis=0)
    total = int(cm.sum())
    present = int((true > 0).sum())
    recall = _ratio(diag, true)
    iou = _ratio(diag, true + predicted - diag)
    out: dict[str, Any] = {
        "AA": float(recall.sum() / present) if present else float("nan"),
        "mIoU": float(iou.mean()),
        "OA": float(diag.sum() / total) if total else float("nan"),
        "recall": recall.tolist(),
        "IoU": iou.tolist(),
        "classesPresent": present,
        "pixels": total,
        "confusion": cm.tolist(),
    }
    if class_names is not None:
        out["classNames"] = list(class_names)
    return out
