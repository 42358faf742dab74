"""Files of a segmentation score: `<split>_scores.json` (every score), `<split>_classes.csv` (one
row per class) and `<split>_confusion.png` (the confusion matrix, rows normalised to recall)."""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any, Mapping

import numpy as np

from sen12ms_common.figures import figure, png_bytes
from sen12ms_common.storage import files as storage
from sen12ms_common.storage.outputs import writing
from sen12ms_common.vocab.dfc import DfcScheme

CSV_COLUMNS = ("class", "dfc_value", "true_pixels", "predicted_pixels", "correct_pixels", "recall", "IoU")


def _json_safe(value: Any) -> Any:
    """NaN (AA and OA of an empty split) as null: strict JSON readers refuse NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def classes_csv(metrics: Mapping[str, Any], scheme: DfcScheme) -> str:
    cm = np.asarray(metrics["confusion"], dtype=np.int64)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for i, (name, value) in enumerate(zip(scheme.names, scheme.dfc_classes)):
        w.writerow([name, value, int(cm[i].sum()), int(cm[:, i].sum()), int(cm[i, i]),
                    f"{metrics['recall'][i]:.6f}", f"{metrics['IoU'][i]:.6f}"])
    return buf.getvalue()


def confusion_png(metrics: Mapping[str, Any], scheme: DfcScheme, title: str) -> bytes:
    """Rows = true class normalised to sum 1 (recall on the diagonal), with a colour bar; a class
    without a pixel in the split is a grey row marked "absent" (no row to divide), not a blank one."""
    from matplotlib import colormaps  # start-up time: matplotlib only when plotting

    cm = np.asarray(metrics["confusion"], dtype=np.float64)
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.full_like(cm, np.nan), where=rows > 0)
    absent = rows[:, 0] == 0
    n = len(scheme.names)
    fig = figure(2.0 + 0.75 * n, 1.0 + 0.65 * n, constrained=True)
    ax = fig.add_subplot()
    cmap = colormaps["Blues"].with_extremes(bad="#e6e6e6")
    im = ax.imshow(np.ma.masked_invalid(share), cmap=cmap, vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, shrink=0.8, label="share of the true class's pixels")
    ax.set_xticks(range(n), scheme.names, rotation=45, ha="right")
    ax.set_yticks(range(n), [f"{name} (absent)" if a else name for name, a in zip(scheme.names, absent)])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(n):
        if absent[i]:
            ax.text((n - 1) / 2, i, "absent: no pixel of this class in the split", ha="center", va="center",
                    fontsize=7, color="#555555")
            continue
        for j in range(n):
            if cm[i, j]:
                ax.text(j, i, f"{share[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if share[i, j] > 0.5 else "black")
    aa, miou = metrics.get("AA"), metrics.get("mIoU")
    ax.set_title(f"{title}: AA {aa:.3f}, mIoU {miou:.3f}" if aa == aa and miou == miou else title)
    return png_bytes(fig)


def write_segmentation_scores(out_dir: str, split: str, metrics: Mapping[str, Any], scheme: DfcScheme) -> list[str]:
    """Write the three files of `split` into a local folder or an s3:// prefix (each whole or not
    at all); returns their paths."""
    out_dir = str(out_dir)
    names = {"json": f"{split}_scores.json", "csv": f"{split}_classes.csv", "png": f"{split}_confusion.png"}
    paths = {k: storage.join(out_dir, v) for k, v in names.items()}
    with writing(out_dir):
        storage.makedirs(out_dir)
        storage.write_text(paths["json"], json.dumps(_json_safe(dict(metrics)), indent=2) + "\n")
        storage.write_text(paths["csv"], classes_csv(metrics, scheme))
        storage.write_bytes(paths["png"], confusion_png(metrics, scheme, split))
    return [paths["json"], paths["csv"], paths["png"]]
