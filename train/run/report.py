"""The record of a run: one row per epoch in `RUN/metrics.csv`, the training curves as
`RUN/training_curves.png`, and the summary table printed at the end. What a user reads counts
epochs from 1 (the `epoch` column, the curves, the summary), as the log does; `EpochRecord.epoch`
counts from 0, as the checkpoint does."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from sen12ms_common.errors import StorageError
from sen12ms_common.storage import files as storage

from ..tasks.plots import curves_png

METRICS_CSV = "metrics.csv"
CURVES_PNG = "training_curves.png"
_FIXED = ("timestamp", "epoch", "step", "train_loss", "train_samples", "seconds", "val_loss", "best")


@dataclass
class EpochRecord:
    epoch: int
    step: int                 # optimizer steps at the end of the epoch
    train_loss: float
    train_samples: int
    seconds: float            # training time of the epoch (this launch's part after a resume)
    val_loss: float | None = None
    best: bool = False
    val: dict[str, float] = field(default_factory=dict)  # the task's scalar metrics on val


def _number(text: str | None) -> float | None:
    if text is None or text == "":
        return None
    value = float(text)
    return value if math.isfinite(value) else None


def _record(row: Mapping[str, str]) -> EpochRecord:
    val = {k[4:]: v for k, v in ((k, _number(t)) for k, t in row.items() if k and k.startswith("val_")
                                 and k != "val_loss") if v is not None}
    return EpochRecord(int(row["epoch"]) - 1, int(row["step"]), float(row["train_loss"]), int(row["train_samples"]),
                       float(row["seconds"]), _number(row.get("val_loss")), row.get("best") == "1", val)


class MetricsTable:
    """The rows of `metrics.csv`, one per epoch of the run `timestamp`, rewritten whole after
    every epoch (atomically, also in a bucket)."""

    def __init__(self, url: str, timestamp: str) -> None:
        self.url, self.timestamp = url, timestamp
        self.records: dict[int, EpochRecord] = {}

    def carry_over(self, before_epoch: int) -> str | None:
        """This run's rows of the epochs before `before_epoch` from an existing file (a resumed
        run); a file that cannot be read is replaced: the reason, else None."""
        try:
            if not storage.exists(self.url):
                return None
            rows = list(csv.DictReader(io.StringIO(storage.read_text(self.url))))
            records = [_record(r) for r in rows if r.get("timestamp") == self.timestamp]
        except (StorageError, OSError, UnicodeDecodeError, KeyError, TypeError, ValueError, csv.Error) as exc:
            return f"{self.url}: not readable ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); " \
                   "it is written anew"
        self.records = {r.epoch: r for r in records if 0 <= r.epoch < before_epoch}
        return None

    def add(self, record: EpochRecord) -> None:
        self.records[record.epoch] = record

    @property
    def rows(self) -> list[EpochRecord]:
        return [self.records[e] for e in sorted(self.records)]

    def best(self) -> EpochRecord | None:
        marked = [r for r in self.rows if r.best]
        return marked[-1] if marked else None

    def text(self) -> str:
        keys = list(dict.fromkeys(k for r in self.rows for k in r.val))
        out = io.StringIO()
        w = csv.writer(out, lineterminator="\n")
        w.writerow([*_FIXED, *(f"val_{k}" for k in keys)])
        for r in self.rows:
            w.writerow([self.timestamp, r.epoch + 1, r.step, repr(r.train_loss), r.train_samples, f"{r.seconds:.3f}",
                        "" if r.val_loss is None else repr(r.val_loss), int(r.best),
                        *("" if k not in r.val else repr(r.val[k]) for k in keys)])
        return out.getvalue()

    def write(self) -> None:
        storage.write_text(self.url, self.text())

    def curves_png(self, score_keys: Sequence[str], title: str) -> bytes:
        rows = self.rows
        best = self.best()
        losses = {"train loss": [r.train_loss for r in rows], "val loss": [r.val_loss for r in rows]}
        scores, note = _merge_equal({k: [r.val.get(k) for r in rows] for k in score_keys})
        return curves_png([r.epoch + 1 for r in rows], losses, scores, best.epoch + 1 if best else None, title,
                          note=note)


def _merge_equal(series: Mapping[str, list[float | None]]) -> tuple[dict[str, list[float | None]], str]:
    """Scores equal in every epoch drawn once, named together (single-label classification:
    microF1 = sampleF1 = microPrec = accuracy, whose three lines would hide each other), and a note
    saying so; the note is empty when every score has its own line."""
    merged: dict[str, list[float | None]] = {}
    names: dict[str, list[str]] = {}
    for key, values in series.items():
        same = next((k for k, v in merged.items() if v == values and any(x is not None for x in values)), None)
        if same is None:
            merged[key], names[key] = values, [key]
        else:
            names[same].append(key)
    out = {f"val {' = '.join(names[k])}": v for k, v in merged.items()}
    alike = [n for n in names.values() if len(n) > 1]
    note = "; ".join(f"{' and '.join(n[1:])} equal{'s' if len(n) == 2 else ''} {n[0]} in every epoch"
                     f"{_SINGLE_LABEL_WHY if set(n) <= _ACCURACY_ALIKE else ''}: drawn as one line" for n in alike)
    return out, note


# With one label per sample, micro F1, sample F1 and micro precision are all the accuracy.
_ACCURACY_ALIKE = {"microF1", "sampleF1", "microPrec", "microRec"}
_SINGLE_LABEL_WHY = " (one label per sample: each is the accuracy)"


def _cell(value: Any) -> str:
    return "-" if value is None else f"{float(value):.4f}"


def summary_table(columns: Sequence[str], rows: Sequence[tuple[str, float | None, Mapping[str, Any]]]) -> list[str]:
    """Lines of a plain text table: a name, the loss and `columns` of each (name, loss, metrics) row."""
    head = ["", "loss", *columns]
    body = [[name, _cell(loss), *(_cell(m.get(c)) for c in columns)] for name, loss, m in rows]
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
    return ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
            for row in [head, *body]]


def summary_lines(task: Any, best: EpochRecord | None, test: tuple[Mapping[str, Any], float] | None,
                  split: str = "test") -> list[str]:
    """The table of the best epoch's validation scores and the scored split (`test`: metrics and
    loss), and the task's notes on them."""
    columns = [c for c in task.summary_metrics
               if (best is not None and c in best.val) or (test is not None and c in test[0])]
    rows: list[tuple[str, float | None, Mapping[str, Any]]] = []
    if best is not None and best.val:
        rows.append((f"val (epoch {best.epoch + 1})", best.val_loss, best.val))
    if test is not None:
        rows.append((split, test[1], test[0]))
    lines = summary_table(columns, rows) if rows else []
    return lines + (task.notes(test[0], split) if test is not None else [])


__all__ = ["EpochRecord", "MetricsTable", "summary_table", "summary_lines", "METRICS_CSV", "CURVES_PNG"]
