"""The labels of a batch, checked where the training or evaluation loop receives it: every stored
IGBP probability must be finite, in 0..1, and a sample's 17 values must sum to 1 (as `convert
verify` requires). A bad sample stops the run with one line naming it, or with --skip-bad-shards
is dropped from the batch and reported like a skipped shard.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from sen12ms_common.errors import DataError
from sen12ms_common.format.sample import N_LABEL


log = logging.getLogger(__name__)

SUM_TOLERANCE = 1e-3  # as sen12ms_common.vocab.igbp.check_probability


def bad_labels(prob: torch.Tensor, keys: Sequence[str]) -> list[tuple[int, str]]:
    """(row, reason) of every sample of a batch whose probability label is not a probability
    vector; `prob` is the batch's (B, 17) tensor, `keys` its B sample keys (a tensor of another
    shape makes every sample bad)."""
    p = prob.detach().to("cpu", torch.float64)
    if p.ndim != 2 or p.shape != (len(keys), N_LABEL):
        return [(i, f"label of shape {tuple(p.shape)} for {len(keys)} samples") for i in range(len(keys))]
    finite = torch.isfinite(p).all(dim=1)
    low, high = p.min(dim=1).values, p.max(dim=1).values
    sums = p.sum(dim=1)
    out = []
    for i in torch.nonzero(~finite | (low < 0) | (high > 1) | ((sums - 1).abs() > SUM_TOLERANCE)).flatten().tolist():
        if not bool(finite[i]):
            what = "nan" if bool(torch.isnan(p[i]).any()) else "inf"
            out.append((i, f"label holds a non-finite value ({what})"))
        elif float(low[i]) < 0 or float(high[i]) > 1:
            value = float(low[i]) if float(low[i]) < 0 else float(high[i])
            out.append((i, f"label value {value:.4g} is outside 0..1"))
        else:
            out.append((i, f"label sums to {float(sums[i]):.4f}, not 1"))
    return out


def checked_batch(batch: dict[str, Any], where: str, skip: bool, skipped: list[str]) -> dict[str, Any] | None:
    """`batch` if its labels are sound. Otherwise: with `skip`, the batch without its bad samples
    (None if none is left), each reported in `skipped`; else a `DataError` naming the first bad
    sample (`where`: the shard set and split, or the batch's `shard` entries when the loader gives
    them)."""
    if "prob" not in batch:  # a mask batch: the loader's 256-entry table made every value a class or 255
        return batch
    keys = list(batch["key"])
    bad = bad_labels(batch["prob"], keys)
    if not bad:
        return batch
    shards = batch.get("shard")
    messages = [f"{shards[i] if shards is not None else where}: sample {keys[i]}: {reason}" for i, reason in bad]
    if not skip:
        raise DataError(messages[0] + " (a damaged shard? `convert verify` names every bad sample; "
                        "--skip-bad-shards leaves such samples out)")
    for msg in messages:
        log.warning("skipping bad sample: %s", msg)
        if msg not in skipped:
            skipped.append(msg)
    keep = [i for i in range(len(keys)) if i not in {j for j, _ in bad}]
    if not keep:
        return None
    index = torch.tensor(keep, dtype=torch.long)
    out = dict(batch)
    for name, value in batch.items():
        if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == len(keys):
            out[name] = value.index_select(0, index.to(value.device))
        elif isinstance(value, list) and len(value) == len(keys):
            out[name] = [value[i] for i in keep]
    return out


@dataclass
class LabelCheck:
    """`checked_batch` for the batches of one loader: `where` names its shard set and split,
    `skipped` is the loader's list of what it skipped (bad samples are reported there too)."""

    where: str = "batch"
    skip: bool = False
    skipped: list[str] = field(default_factory=list)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any] | None:
        return checked_batch(batch, self.where, self.skip, self.skipped)


def label_check(loader: Any, root: str, split: str, skip: bool) -> LabelCheck:
    return LabelCheck(f"{root} ({split} split)", skip, loader.skipped)


__all__ = ["bad_labels", "checked_batch", "LabelCheck", "label_check"]
