"""PNG figures of a run: training curves and a confusion matrix, drawn on matplotlib's Agg canvas
(no pyplot, no global backend switch) and returned as bytes for `sen12ms_common.storage.files`."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from sen12ms_common.figures import figure, png_bytes

def curves_png(epochs: Sequence[int], losses: Mapping[str, Sequence[float | None]],
               scores: Mapping[str, Sequence[float | None]], best_epoch: int | None, title: str,
               note: str = "") -> bytes:
    """Loss curves (left) and validation scores (right) per epoch; None values are gaps; `note`
    under the scores (why fewer lines than scores are drawn)."""
    fig = figure(11, 4.2, constrained=True)
    left, right = fig.subplots(1, 2)
    x = np.asarray(epochs, dtype=np.float64)
    for ax, series, ylabel in ((left, losses, "loss"), (right, scores, "validation score")):
        for name, values in series.items():
            y = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
            if np.isfinite(y).any():
                ax.plot(x, y, marker="o", markersize=3, label=name)
        if best_epoch is not None:
            ax.axvline(best_epoch, color="#999999", linestyle=":", linewidth=1, label=f"best (epoch {best_epoch})")
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if len(x):
        from matplotlib.ticker import MaxNLocator  # start-up time: matplotlib only when used

        for ax in (left, right):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    right.set_ylim(0, 1.02)
    if note:
        right.set_title(note, fontsize=8, loc="left", wrap=True)
    fig.suptitle(title, fontsize=10)
    return png_bytes(fig)


def matrix_png(values: np.ndarray, rows: Sequence[str], cols: Sequence[str], title: str, *,
               xlabel: str, ylabel: str, fmt: str = "{:.2f}", vmax: float | None = None) -> bytes:
    """A heat map with every cell's value written in it; NaN cells (no data) are grey and empty."""
    from matplotlib import colormaps  # start-up time: matplotlib only when used

    v = np.asarray(values, dtype=np.float64)
    fig = figure(max(5.0, 1.0 + 0.55 * len(cols) + 1.5), max(4.0, 1.2 + 0.45 * len(rows)),
                 constrained=True)
    ax = fig.subplots()
    finite = v[np.isfinite(v)]
    top = vmax if vmax is not None else (float(finite.max()) if finite.size and finite.max() > 0 else 1.0)
    cmap = colormaps["Blues"].with_extremes(bad="#e6e6e6")
    im = ax.imshow(np.ma.masked_invalid(v), cmap=cmap, vmin=0, vmax=top, aspect="auto")
    fig.colorbar(im, ax=ax, shrink=0.8)
    ax.set_xticks(range(len(cols)), labels=list(cols), rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), labels=list(rows), fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    for i in range(v.shape[0]):
        for j in range(v.shape[1]):
            if not np.isfinite(v[i, j]):
                continue
            ax.text(j, i, fmt.format(v[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if v[i, j] > 0.6 * top else "black")
    ax.set_title(title, fontsize=10)
    return png_bytes(fig)


__all__ = ["curves_png", "matrix_png"]
