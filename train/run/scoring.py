"""Evaluation passes: the model over every batch of a split (no gradients), the outputs of every
rank gathered into one result of the task, and its scores."""

from __future__ import annotations

import time
from typing import Any, Callable

import torch

from sen12ms_common.errors import DataError, Interrupted

from ..data import Loader
from ..tasks.registry import Result
from .distributed import Dist, gather_objects
from .labelcheck import LabelCheck
from .progress import NO_PROGRESS, Plan, ProgressMeter, ProgressOptions
from .setup import Setup
from .signals import StopFlag

OnKeys = Callable[[list[str]], None]


def _collect(setup: Setup, loader: Loader, *, desc: str, stop: StopFlag | None, progress: ProgressOptions,
             main: bool, labels: LabelCheck | None, on_keys: OnKeys | None = None) -> tuple[Any, float, int]:
    """This rank's collected outputs, loss sum and sample count over one pass of `loader`;
    `on_keys` gets the keys of every batch."""
    labels = labels or LabelCheck(skipped=loader.skipped)
    collector = setup.task.collector()
    meter = ProgressMeter(progress, desc, Plan(total=len(loader)), main=main)
    setup.forward.eval()
    loss_sum, n = 0.0, 0
    batches = iter(loader.epoch(0))
    try:
        with torch.no_grad():
            while True:
                t0 = time.perf_counter()
                batch = next(batches, None)
                if batch is None:
                    break
                wait = time.perf_counter() - t0
                batch = labels(batch)
                if batch is None:
                    continue
                x = setup.input_fn(batch["image"])
                with setup.precision.autocast():
                    logits = setup.forward(x)
                logits = logits.float()
                target = setup.task.target(batch, setup.device)
                loss_sum += float(setup.loss_fn(logits, target)) * len(batch["key"])
                n += len(batch["key"])
                collector.add(batch, logits)
                meter.update(len(batch["key"]), wait)
                if on_keys is not None:
                    on_keys(list(batch["key"]))
                if stop is not None and stop.requested:
                    raise Interrupted(stop.signal, f"stopped during {desc}")
    finally:
        meter.close()
        close = getattr(batches, "close", None)
        if close is not None:
            close()  # shuts the loader's workers down also when the pass ends early
    return collector.part(), loss_sum, n


def predict(setup: Setup, loader: Loader, *, desc: str = "eval", stop: StopFlag | None = None,
            progress: ProgressOptions = NO_PROGRESS, labels: LabelCheck | None = None,
            on_keys: OnKeys | None = None) -> Result:
    """The task's result of one pass of `loader` in this process. `labels` checks each batch's
    labels (default: stop at the first bad one)."""
    part, loss_sum, n = _collect(setup, loader, desc=desc, stop=stop, progress=progress, main=True, labels=labels,
                                 on_keys=on_keys)
    return setup.task.merge([part], loss_sum / max(n, 1))


def predict_all(setup: Setup, loader: Loader, d: Dist, *, desc: str = "eval", stop: StopFlag | None = None,
                on_keys: OnKeys | None = None, labels: LabelCheck | None = None,
                progress: ProgressOptions = NO_PROGRESS) -> Result:
    """`predict` over this rank's part of the split, gathered from every rank: the result of the
    whole split, on every rank. A data error or (with `stop`) a stop request on any rank is
    raised on every rank. `on_keys` gets the keys this rank read."""
    if not d.enabled:
        return predict(setup, loader, desc=desc, stop=stop, labels=labels, on_keys=on_keys, progress=progress)
    local, error = None, None
    try:
        local = _collect(setup, loader, desc=desc, stop=None, progress=progress, main=d.is_main, labels=labels,
                         on_keys=on_keys)
    except DataError as exc:  # reported below, on every rank, so that no rank waits for this one
        error = str(exc)
    parts = gather_objects(d, (error, stop is not None and stop.requested, local))
    errors = [f"rank {r}: {e}" for r, (e, _, _) in enumerate(parts) if e is not None]
    if errors:
        raise DataError("; ".join(errors))
    if any(s for _, s, _ in parts):
        raise Interrupted(stop.signal if stop is not None else StopFlag().signal, f"stopped during {desc}")
    n = sum(p[2] for _, _, p in parts)
    return setup.task.merge([p[0] for _, _, p in parts], sum(p[1] for _, _, p in parts) / max(n, 1))


def score(setup: Setup, result: Result) -> dict[str, Any]:
    return setup.task.score(result)


__all__ = ["predict", "predict_all", "score"]
