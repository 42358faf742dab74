"""Semantic segmentation in the DFC2020 class scheme as a task of a training run: pixel masks as
targets, cross-entropy that ignores 255, a confusion matrix per split, the baseline's scores, and
the best checkpoint by validation mIoU."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from sen12ms_common.vocab.dfc import IGNORE_INDEX, DfcScheme

from ..data.symmetry import apply_symmetries
from .segconfig import model_options
from .segmetrics import SCALAR_KEYS, ConfusionMatrix, segmentation_scores
from .segreport import write_segmentation_scores


class MaskedCrossEntropy(nn.Module):
    """Cross-entropy over the pixels whose class is not 255, averaged over them (the baseline's
    `CrossEntropyLoss(ignore_index=255)`), but 0 instead of NaN for a batch without any such
    pixel, so that one empty mask cannot turn the weights into NaN."""

    def __init__(self, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total = nn.functional.cross_entropy(logits, target, ignore_index=self.ignore_index, reduction="sum")
        counted = (target != self.ignore_index).sum().clamp_min(1)
        return total / counted


def mask_target(batch: Mapping[str, Any], device: torch.device) -> torch.Tensor:
    """The batch's mask (uint8 (B, H, W) training classes, 255 ignored) as int64 on the device."""
    mask = batch.get("mask")
    if mask is None:
        raise KeyError("the batch holds no mask: segmentation needs a loader that gives pixel masks")
    return apply_symmetries(mask.to(device, non_blocking=True), batch.get("symmetry")).long()


class SegmentationCollector:
    """One rank's confusion matrix (on the device) over an evaluation pass, and its sample count."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.cm: ConfusionMatrix | None = None  # made on the device of the first outputs
        self.samples = 0
        self.keys: list[str] = []

    def add(self, batch: Mapping[str, Any], logits: torch.Tensor) -> None:
        if self.cm is None:
            self.cm = ConfusionMatrix(self.num_classes, logits.device)
        self.cm.update(mask_target(batch, logits.device), logits)
        self.samples += len(batch["key"])
        self.keys.extend(batch["key"])

    def part(self) -> tuple[np.ndarray, int, list[str]]:
        cm = self.cm.numpy() if self.cm is not None else np.zeros((self.num_classes,) * 2, dtype=np.int64)
        return cm, self.samples, self.keys


@dataclass
class SegResult:
    confusion: np.ndarray   # (C, C) int64 pixel counts, rows = true class
    samples: int
    loss: float
    keys: list[str]


class SegmentationTask:
    """Pixel classes of the DFC2020 scheme (10, or 9 with `savanna=False`); the best checkpoint
    has the highest validation mIoU."""

    name = "segmentation"
    best_metric = "mIoU"
    targets = "mask"  # what the loader gives (LoaderSpec.targets)

    def __init__(self, rule: Any = None, *, savanna: bool = True, output_stride: int = 16) -> None:
        del rule  # scene-label rules do not apply to pixel masks
        self.scheme = DfcScheme(savanna)
        self.num_classes = self.scheme.num_classes
        self.class_names = self.scheme.names
        self.output_stride = int(output_stride)
        self.loss_fn: nn.Module = MaskedCrossEntropy()

    def build_model(self, model_name: str, in_channels: int) -> nn.Module:
        from ..models.registry import build_model  # start-up time: torchvision only when used

        return build_model(model_name, in_channels, self.num_classes, task="segmentation",
                           **model_options(model_name, self.output_stride))

    def target(self, batch: Mapping[str, Any], device: torch.device) -> torch.Tensor:
        return mask_target(batch, device)

    def collector(self) -> SegmentationCollector:
        return SegmentationCollector(self.num_classes)

    def merge(self, parts: Sequence[Any], loss: float) -> SegResult:
        cm = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        for matrix, _, _ in parts:
            cm += np.asarray(matrix, dtype=np.int64)
        keys = sorted(k for _, _, ks in parts for k in ks)
        return SegResult(cm, sum(int(n) for _, n, _ in parts), float(loss), keys)

    def score(self, result: SegResult) -> dict[str, Any]:
        out = segmentation_scores(result.confusion, self.class_names)
        out["dfcClasses"] = list(self.scheme.dfc_classes)
        out["samples"] = result.samples
        return out

    def scalars(self, metrics: Mapping[str, Any]) -> dict[str, float]:
        """AA, mIoU, OA and the IoU of every class (`IoU/<class>`)."""
        out = {k: float(metrics[k]) for k in SCALAR_KEYS}
        out.update({f"IoU/{name}": float(v) for name, v in zip(self.class_names, metrics["IoU"])})
        return out

    summary_metrics = ("mIoU", "AA", "OA")

    def notes(self, metrics: Mapping[str, Any], split: str) -> list[str]:
        """Why mIoU may look low: absent classes count 0 in it, not in AA."""
        present = int(metrics.get("classesPresent", self.num_classes))
        if present >= self.num_classes:
            return []
        return [f"mIoU counts the {self.num_classes - present} classes absent from the {split} split as 0 (the "
                f"DFC2020 baseline's definition); AA is the mean over the {present} classes present"]

    def val_summary(self, metrics: Mapping[str, Any]) -> str:
        return f"mIoU {metrics['mIoU']:.4f} AA {metrics['AA']:.4f} OA {metrics['OA']:.4f}"

    def test_summary(self, metrics: Mapping[str, Any]) -> str:
        return (f"AA {metrics['AA']:.4f} mIoU {metrics['mIoU']:.4f} OA {metrics['OA']:.4f} "
                f"({metrics['classesPresent']} classes present, {metrics['pixels']} pixels)")

    def write(self, out_dir: str, split: str, metrics: Mapping[str, Any], result: SegResult) -> list[str]:
        """`<split>_scores.json`, `<split>_classes.csv` and `<split>_confusion.png`."""
        return write_segmentation_scores(out_dir, split, metrics, self.scheme)


__all__ = ["SegmentationTask", "SegmentationCollector", "SegResult", "MaskedCrossEntropy", "mask_target"]
