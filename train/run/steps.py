"""One epoch's optimizer steps, and under torchrun the ranks' agreement before every step."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch

from sen12ms_common.errors import DataError

from ..data import Loader
from .distributed import Dist, agree_max, gather_objects
from .labelcheck import LabelCheck
from .progress import ProgressMeter
from .setup import Setup
from .signals import StopFlag


@dataclass
class RunState:
    """Where a run stands; saved in every checkpoint."""

    epoch: int = 0          # the epoch to run next (0-based)
    batch: int = 0          # batches of that epoch already trained
    step: int = 0           # optimizer steps so far
    best_prec: float = 0.0  # best validation score (the task's best_metric) so far
    loss_sum: float = 0.0   # sum of (batch loss x batch samples) of the current epoch
    loss_count: int = 0


def _next_batch(it: Iterator[dict[str, Any]], stop: StopFlag, d: Dist, labels: LabelCheck,
                on_dropped: Callable[[], None]) -> tuple[dict[str, Any] | None, str]:
    """The next batch of this rank, or None with why the epoch ends here: '' (no batch left),
    'stopped', or a data error. Under torchrun the ranks agree first: all of them stop at the
    step where the first one runs out of batches (--skip-bad-shards), is stopped by a signal or
    fails. `labels` checks the batch's labels; a batch whose every sample it drops
    (--skip-bad-shards) is counted by `on_dropped` and the next one taken."""
    error: str | None = None
    try:
        while True:
            raw = next(it, None)
            batch = labels(raw) if raw is not None else None
            if raw is None or batch is not None:
                break
            on_dropped()
    except DataError as exc:
        if not d.enabled:
            raise
        batch, error = None, str(exc)
    if not d.enabled:
        return batch, ""
    ended, stopped, failed = agree_max(d, [batch is None, stop.requested, error is not None])
    if failed:
        messages = gather_objects(d, error)
        raise DataError("; ".join(f"rank {r}: {m}" for r, m in enumerate(messages) if m is not None))
    if stopped:
        return None, "stopped"
    return (None, "") if ended else (batch, "")


def _step(setup: Setup, optimizer: torch.optim.Optimizer, forward: torch.nn.Module,
          batch: dict[str, Any]) -> torch.Tensor:
    x = setup.input_fn(batch["image"], batch.get("symmetry"))  # --augment's codes, if any
    y = setup.task.target(batch, setup.device)
    optimizer.zero_grad(set_to_none=True)
    with setup.precision.autocast():
        logits = forward(x)
    loss = setup.loss_fn(logits.float(), y)
    scaler = setup.precision.scaler
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss


def train_steps(setup: Setup, optimizer: torch.optim.Optimizer, loader: Loader, state: RunState, *,
                max_steps: int | None, stop: StopFlag, dist: Dist | None = None,
                on_keys: Callable[[list[str]], None] | None = None, labels: LabelCheck | None = None,
                meter: ProgressMeter | None = None, on_step: Callable[[float], None] | None = None) -> str:
    """Train the rest of epoch `state.epoch`: 'done', 'max_steps' or 'stopped'. `labels` checks
    each batch's labels (default: stop at the first bad one); `meter` shows how far it is;
    `on_step(loss)` runs after every step (TensorBoard, validation every N steps)."""
    labels = labels or LabelCheck(skipped=loader.skipped)
    d = dist or Dist()
    forward = setup.step_forward
    forward.train()
    it = loader.epoch(state.epoch, start_batch=state.batch)
    try:
        while True:
            t0 = time.perf_counter()
            batch, why = _next_batch(it, stop, d, labels, lambda: setattr(state, "batch", state.batch + 1))
            wait = time.perf_counter() - t0
            if why == "stopped":
                return "stopped"
            if batch is None:
                return "done"
            loss = _step(setup, optimizer, forward, batch)
            n = len(batch["key"])
            value = float(loss.detach())
            state.loss_sum += value * n
            state.loss_count += n
            state.batch += 1
            state.step += 1
            if meter is not None:
                meter.update(n, wait, state.loss_sum / max(state.loss_count, 1))
            if on_keys is not None:
                on_keys(batch["key"])
            if on_step is not None:
                on_step(value)
            # One process stops right after the step; ranks learn of it at their next agreement.
            if not d.enabled and stop.requested:
                return "stopped"
            if max_steps is not None and state.step >= max_steps:
                return "max_steps"
    finally:
        it.close()  # shuts the loader's workers down also when the epoch ends early
        if meter is not None:
            meter.close()


__all__ = ["RunState", "train_steps"]
