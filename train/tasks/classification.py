"""Scene classification (the original toolbox's task): one label or a set of labels per patch,
scored with the original's metric set."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from sen12ms_common.storage import files as storage
from sen12ms_common.storage.outputs import writing
from sen12ms_common.vocab.igbp import LabelRule
from sen12ms_common.words import plural

from ..models.registry import build_model
from .metrics import compute_metrics, predict as to_labels, scalar_metrics
from .plots import matrix_png


@dataclass
class Predictions:
    keys: list[str]
    probs: np.ndarray       # (N, classes) float32: sigmoid (multi) or softmax (single)
    prob_igbp: np.ndarray   # (N, 17) stored probability labels
    y_true: np.ndarray      # (N, classes) uint8 0/1
    loss: float

    @property
    def samples(self) -> int:
        return len(self.keys)

    def sorted(self) -> "Predictions":
        order = np.argsort(np.asarray(self.keys, dtype=object), kind="stable")
        return Predictions([self.keys[i] for i in order], self.probs[order], self.prob_igbp[order],
                           self.y_true[order], self.loss)


class ClassificationCollector:
    """Keys, class probabilities and stored label vectors of one rank's batches."""

    def __init__(self, multi_label: bool) -> None:
        self.multi_label = multi_label
        self.keys: list[str] = []
        self.probs: list[np.ndarray] = []
        self.prob_igbp: list[np.ndarray] = []

    def add(self, batch: Mapping[str, Any], logits: torch.Tensor) -> None:
        p = torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=1)
        self.probs.append(p.cpu().numpy())
        self.prob_igbp.append(batch["prob"].numpy())
        self.keys.extend(batch["key"])

    def part(self) -> tuple[list[str], list[np.ndarray], list[np.ndarray]]:
        return self.keys, self.probs, self.prob_igbp


class ClassificationTask:
    """Single- or multi-label IGBP classes of a patch; the best checkpoint has the highest
    validation micro-F1 (as the original)."""

    name = "classification"
    targets = "labels"
    best_metric = "microF1"

    def __init__(self, rule: LabelRule) -> None:
        self.rule = rule
        self.multi_label = rule.label_type == "multi_label"
        self.num_classes = rule.num_classes
        self.class_names = tuple(rule.class_names)
        self.loss_fn: nn.Module = nn.BCEWithLogitsLoss() if self.multi_label else nn.CrossEntropyLoss()

    def build_model(self, model_name: str, in_channels: int) -> nn.Module:
        return build_model(model_name, in_channels, self.num_classes)

    def target(self, batch: Mapping[str, Any], device: torch.device) -> torch.Tensor:
        return batch["target"].to(device, non_blocking=True)

    def collector(self) -> ClassificationCollector:
        return ClassificationCollector(self.multi_label)

    def merge(self, parts: Sequence[Any], loss: float) -> Predictions:
        keys = [k for part in parts for k in part[0]]
        probs = [p for part in parts for p in part[1]]
        igbp = [p for part in parts for p in part[2]]
        c = self.num_classes
        probs_a = np.concatenate(probs).astype(np.float32) if probs else np.zeros((0, c), np.float32)
        igbp_a = np.concatenate(igbp).astype(np.float32) if igbp else np.zeros((0, 17), np.float32)
        y_true = self.rule.indicator(igbp_a).astype(np.uint8) if len(igbp_a) else np.zeros((0, c), np.uint8)
        # Sorted by key: metrics and files do not depend on the loader's order (sums in float64).
        return Predictions(keys, probs_a, igbp_a, y_true, loss).sorted()

    def score(self, result: Predictions) -> dict[str, Any]:
        return compute_metrics(result.y_true, result.probs, self.rule.label_type, list(self.class_names))

    def scalars(self, metrics: Mapping[str, Any]) -> dict[str, float]:
        return scalar_metrics(dict(metrics))

    @property
    def summary_metrics(self) -> tuple[str, ...]:
        """The columns of the summary table (and the scores of the training curves, first ones)."""
        accuracy = ("OverallAcc",) if self.multi_label else ("AverageAcc", "AverageAccPresent")
        return ("microF1", "sampleF1", "microPrec", "macroF1") + accuracy

    def absent_classes(self, metrics: Mapping[str, Any]) -> list[str]:
        """Classes without a sample in the scored split."""
        report = metrics.get("clsReport", {})
        return [c for c in self.class_names if isinstance(report.get(c), Mapping) and report[c].get("support") == 0]

    def notes(self, metrics: Mapping[str, Any], split: str) -> list[str]:
        """What a reader of the scores must know: here, why AverageAcc looks low."""
        absent = self.absent_classes(metrics)
        if self.multi_label or not absent:
            return []
        present = self.num_classes - len(absent)
        return [f"AverageAcc counts the {len(absent)} {plural('class', len(absent))} absent from the {split} split "
                f"as 0 (the original's definition: {', '.join(absent)}); AverageAccPresent is the mean over the "
                f"{present} {plural('class', present)} present"]

    def val_summary(self, metrics: Mapping[str, Any]) -> str:
        return (f"microF1 {metrics['microF1']:.4f} sampleF1 {metrics['sampleF1']:.4f} "
                f"microPrec {metrics['microPrec']:.4f}")

    def test_summary(self, metrics: Mapping[str, Any]) -> str:
        key = "OverallAcc" if self.multi_label else "AverageAcc"
        text = f"microF1 {metrics['microF1']:.4f} sampleF1 {metrics['sampleF1']:.4f} {key} {metrics[key]:.4f}"
        absent = [] if self.multi_label else self.absent_classes(metrics)
        if absent:
            text += (f" (absent classes count 0; AverageAccPresent {metrics['AverageAccPresent']:.4f} over "
                     f"{self.num_classes - len(absent)} of {self.num_classes})")
        return text

    def write(self, out_dir: str, split: str, metrics: Mapping[str, Any], result: Predictions) -> list[str]:
        written = list(write_scores(out_dir, split, metrics, result, self.rule))
        png = storage.join(out_dir, f"{split}_confusion.png")  # as the segmentation task names it
        with writing(out_dir):
            storage.write_bytes(png, self.confusion_png(metrics, split))
        return written + [png]

    def confusion_png(self, metrics: Mapping[str, Any], split: str) -> bytes:
        """Single-label: rows = true class (with its count), each row divided by its count;
        multi-label: per class the counts of true negatives, false positives, false negatives
        and true positives."""
        report = metrics.get("clsReport", {})
        rows = [f"{c} ({int(report[c]['support'])})" if isinstance(report.get(c), Mapping) else c
                for c in self.class_names]
        n = metrics.get("numSamples")
        if self.multi_label:
            cells = np.asarray(metrics["multilabel_conf_mat"], dtype=np.float64).reshape(self.num_classes, 4)
            return matrix_png(cells, rows, ["TN", "FP", "FN", "TP"], f"{split}: per-class confusion ({n} samples)",
                              xlabel="outcome", ylabel="class (samples with it)", fmt="{:.0f}")
        conf = np.asarray(metrics["conf_mat"], dtype=np.float64)
        absent = [self.class_names.index(c) for c in self.absent_classes(metrics)]
        conf[absent] = np.nan  # no sample of the class: no row to divide
        return matrix_png(conf, rows, list(self.class_names),
                          f"{split}: confusion matrix ({n} samples; each row / its count; grey: no sample)",
                          xlabel="predicted class", ylabel="true class (samples)", vmax=1.0)


def write_scores(out_dir: str, split: str, metrics: Mapping[str, Any], preds: Any,
                 rule: LabelRule) -> tuple[str, str]:
    """`<split>_scores.json` (every metric) and `<split>_predictions.npz` (ids, true labels,
    predicted probabilities) in a local folder or an s3:// prefix, each written atomically."""
    out_dir = str(out_dir)
    p = preds.sorted()
    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        ids=np.array([k + ".tif" for k in p.keys], dtype=str),  # the original's patch ids (S2 file names)
        keys=np.array(p.keys, dtype=str),
        y_true=p.y_true.astype(np.uint8),
        probs=p.probs.astype(np.float32),
        y_pred=to_labels(p.probs, rule.label_type) if len(p.keys) else np.zeros_like(p.y_true),
        prob_igbp=p.prob_igbp.astype(np.float32),
        class_names=np.array(rule.class_names, dtype=str),
        label_type=np.array(rule.label_type),
        threshold=np.array(rule.threshold, dtype=np.float64),
    )
    scores, npz = storage.join(out_dir, f"{split}_scores.json"), storage.join(out_dir, f"{split}_predictions.npz")
    with writing(out_dir):
        storage.makedirs(out_dir)
        storage.write_text(scores, json.dumps(metrics, indent=2) + "\n")
        storage.write_bytes(npz, buf.getvalue())
    return scores, npz


__all__ = ["ClassificationTask", "ClassificationCollector", "Predictions", "write_scores"]
