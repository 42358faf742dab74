"""The original toolbox's metric set, with sklearn's definitions."""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np
from sklearn import metrics as skm

from sen12ms_common.vocab.igbp import LABEL_TYPES


# The original's scalar metrics, in its order.
ORIGINAL_SCALAR_KEYS: tuple[str, ...] = (
    "macroPrec", "microPrec", "samplePrec", "macroRec", "microRec", "sampleRec",
    "macroF1", "microF1", "sampleF1", "macroF2", "microF2", "sampleF2",
    "HammingLoss", "subsetAcc", "macroAcc", "microAcc", "sampleAcc",
    "oneError", "coverageError", "rankLoss", "labelAvgPrec",
)
SCALAR_KEYS: tuple[str, ...] = ORIGINAL_SCALAR_KEYS + ("AverageAcc", "AverageAccPresent", "OverallAcc")

__all__ = ["predict", "compute_metrics", "scalar_metrics", "ORIGINAL_SCALAR_KEYS", "SCALAR_KEYS"]


def _check_label_type(label_type: str) -> None:
    if label_type not in LABEL_TYPES:
        raise ValueError(f"label type must be one of {LABEL_TYPES}, not {label_type!r}")


def predict(probs: np.ndarray, label_type: str) -> np.ndarray:
    """0/1 predictions (uint8, N x C): multi-label probs >= 0.5; single-label one-hot argmax.

    A tie in single-label goes to the first (lowest) class, as `np.argmax`.
    """
    _check_label_type(label_type)
    p = np.asarray(probs)
    if p.ndim != 2:
        raise ValueError(f"probabilities must be N x C, got shape {p.shape}")
    if label_type == "multi_label":
        return (p >= 0.5).astype(np.uint8)
    out = np.zeros(p.shape, dtype=np.uint8)
    if p.shape[0]:
        out[np.arange(p.shape[0]), np.argmax(p, axis=1)] = 1
    return out


def _validate(y_true: np.ndarray, probs: np.ndarray, label_type: str,
              class_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    _check_label_type(label_type)
    y = np.asarray(y_true)
    p = np.asarray(probs, dtype=np.float64)
    if y.ndim != 2 or p.shape != y.shape:
        raise ValueError(f"true labels {y.shape} and probabilities {p.shape} must both be N x C")
    if y.shape[0] == 0:
        raise ValueError("no samples to score")
    if y.shape[1] != len(class_names):
        raise ValueError(f"{y.shape[1]} classes in the labels but {len(class_names)} class names")
    if len(set(class_names)) != len(class_names):
        raise ValueError(f"class names must be unique: {list(class_names)}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("true labels must be 0/1 indicator rows")
    if not np.isfinite(p).all():
        raise ValueError("probabilities hold NaN or infinity")
    y = y.astype(np.int64)
    if label_type == "single_label":
        bad = np.flatnonzero(y.sum(axis=1) != 1)
        if bad.size:
            raise ValueError(f"single-label rows must hold exactly one 1; row {bad[0]} holds "
                             f"{int(y[bad[0]].sum())} ({bad.size} such rows)")
    return y, p


def _plain(value: Any) -> Any:
    """numpy scalars / arrays inside dicts and lists -> Python floats, ints and lists."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def _intersection_over_union(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """|pred AND true| / |pred OR true| per sample; 0 where both are empty."""
    inter = np.logical_and(y == 1, pred == 1).sum(axis=1)
    union = np.logical_or(y == 1, pred == 1).sum(axis=1)
    return np.divide(inter, union, out=np.zeros(len(y), dtype=np.float64), where=union != 0)


def compute_metrics(y_true: np.ndarray, probs: np.ndarray, label_type: str,
                    class_names: Sequence[str]) -> dict:
    """Every metric of the original (see the module docstring), as JSON-serialisable values.

    y_true: N x C 0/1 rows (one-hot for single-label); probs: N x C predicted probabilities
    (sigmoid for multi-label, softmax for single-label); class_names: C unique names (the keys
    of `clsReport`; the original used "1".."C").
    """
    y, p = _validate(y_true, probs, label_type, class_names)
    pred = predict(p, label_type).astype(np.int64)
    n, c = y.shape
    out: dict[str, Any] = {}
    with warnings.catch_warnings():
        # zero_division is set explicitly; sklearn still warns about e.g. absent classes.
        warnings.simplefilter("ignore")
        for name, fn in (("Prec", skm.precision_score), ("Rec", skm.recall_score),
                         ("F1", skm.f1_score), ("F2", lambda *a, **k: skm.fbeta_score(*a, beta=2, **k))):
            for prefix, average in (("macro", "macro"), ("micro", "micro"), ("sample", "samples")):
                out[prefix + name] = float(fn(y, pred, average=average, zero_division=0))
        out["HammingLoss"] = float(skm.hamming_loss(y, pred))
        out["subsetAcc"] = float(skm.accuracy_score(y, pred))

        tp = np.logical_and(pred == 1, y == 1).sum(axis=0)
        tn = np.logical_and(pred == 0, y == 0).sum(axis=0)
        class_acc = (tp + tn) / n
        out["macroAcc"] = float(class_acc.mean())
        out["microAcc"] = float((tp + tn).sum() / (n * c))
        iou = _intersection_over_union(y, pred)
        out["sampleAcc"] = float(iou.mean())

        top = np.argmax(p, axis=1)
        out["oneError"] = float(np.mean(y[np.arange(n), top] == 0))
        out["coverageError"] = float(skm.coverage_error(y, p))
        out["rankLoss"] = float(skm.label_ranking_loss(y, p))
        out["labelAvgPrec"] = float(skm.label_ranking_average_precision_score(y, p))

        out["clsReport"] = _plain(skm.classification_report(
            y, pred, labels=np.arange(c), target_names=list(class_names), output_dict=True,
            zero_division=0))

        if label_type == "single_label":
            true_idx, pred_idx = np.argmax(y, axis=1), np.argmax(pred, axis=1)
            counts = skm.confusion_matrix(true_idx, pred_idx, labels=np.arange(c)).astype(np.float64)
            rows = counts.sum(axis=1, keepdims=True)
            conf = np.divide(counts, rows, out=np.zeros_like(counts), where=rows != 0)
            out["conf_mat"] = conf.tolist()
            out["AverageAcc"] = float(np.trace(conf) / c)
            present = rows[:, 0] > 0
            out["AverageAccPresent"] = float(np.diag(conf)[present].mean())
        else:
            mcm = skm.multilabel_confusion_matrix(y, pred, labels=np.arange(c))
            out["multilabel_conf_mat"] = mcm.astype(int).tolist()
            out["class-wise Acc"] = class_acc.astype(float).tolist()
            out["AverageAcc"] = float(class_acc.mean())
            out["OverallAcc"] = float(iou.mean())
    out["numSamples"] = int(n)
    return out


def scalar_metrics(metrics: dict) -> dict[str, float]:
    """The single-number metrics of a `compute_metrics` result (for TensorBoard scalars)."""
    return {k: float(metrics[k]) for k in SCALAR_KEYS if k in metrics}
