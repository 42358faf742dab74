"""A run's checkpoint: the original's keys plus what exact resume needs (see train.run.checkpoint)."""

from __future__ import annotations

from functools import partial
from typing import Any

import torch

from ..config.trainconfig import DATA_ORDER_KEYS, TrainConfig
from .checkpoint import capture_rng_state, save_checkpoint
from .distributed import Dist, gather_objects, sum_over_ranks
from .outputs import RunFiles, write_checkpoint
from .setup import Setup
from .steps import RunState


def resume_fields(cfg: TrainConfig, setup: Setup, state: RunState, d: Dist, loss: tuple[float, float],
                  rng_states: list[Any], timestamp: str) -> dict[str, Any]:
    """Our keys of a checkpoint: where the run stands, its options and input transform, RNG states."""
    t = setup.transform
    extra: dict[str, Any] = {
        "scheduler_state_dict": None,
        "scaler_state_dict": setup.precision.scaler.state_dict(),
        "rng_state": rng_states[0],
        "step": state.step,
        "resume_epoch": state.epoch,
        "resume_batch": state.batch,
        "epoch_loss": (loss[0], int(loss[1])),
        "config": cfg.to_dict(),
        "data_order": {**{k: getattr(cfg, k) for k in DATA_ORDER_KEYS}, "world_size": d.world_size},
        "input_transform": {"bands": [b.name for b in setup.bands], "scale": t.scale.tolist(),
                            "offset": t.offset.tolist(), "clip": [float(c) for c in t.clip]},
        "timestamp": timestamp,
    }
    if d.enabled:
        extra["rank_rng_states"] = rng_states
    return extra


def save_run_checkpoint(cfg: TrainConfig, setup: Setup, optimizer: torch.optim.Optimizer, state: RunState,
                        files: RunFiles, d: Dist, is_best: bool) -> None:
    """Collective: every rank calls it at the same point; rank 0 writes the checkpoint (and the
    best one's copy)."""
    loss = sum_over_ranks(d, [state.loss_sum, state.loss_count])
    rng_states = gather_objects(d, capture_rng_state())
    if not d.is_main:
        return
    extra = resume_fields(cfg, setup, state, d, (loss[0], loss[1]), rng_states, files.ts)
    # `epoch` as the original: the last epoch finished (resume_epoch - 1 in both cases).
    write_checkpoint(files, is_best, partial(
        save_checkpoint, epoch=state.epoch - 1, arch=cfg.model, model_state_dict=setup.model.state_dict(),
        optimizer_state_dict=optimizer.state_dict(), best_prec=state.best_prec, extra=extra))


__all__ = ["save_run_checkpoint", "resume_fields"]
