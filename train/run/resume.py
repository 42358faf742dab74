"""Resuming a run: what a checkpoint gives back (weights, optimizer, scaler, RNG states, where the
run stands), each stored field checked before it is used, and which option changes alter the
data order."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

import torch

from sen12ms_common.errors import CheckpointError
from sen12ms_common.storage import files as storage

from ..config.trainconfig import DATA_ORDER_KEYS, TrainConfig
from .checkpoint import TIMESTAMP, check_resume_state, load_model_weights, restore_rng_state
from .distributed import Dist, rank_seed
from .inputfit import check_input

if TYPE_CHECKING:
    from .setup import Setup
    from .steps import RunState

_STATE_ERRORS = (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError)


def restore(checkpoint: Mapping[str, Any], cfg: TrainConfig, setup: Setup, optimizer: torch.optim.Optimizer,
            state: RunState, d: Dist) -> str | None:
    """Weights, optimizer, scaler, RNG states and where the run stands, from the checkpoint (each
    field checked first: `checkpoint.check_resume_state`); returns the run's timestamp, if known."""
    source = cfg.resume or "checkpoint"
    check_resume_state(checkpoint, source)
    check_input(checkpoint, setup.model, cfg.input, source, cfg.bands)
    load_model_weights(setup.model, checkpoint, strict=True, source=source)
    for key, target in (("optimizer_state_dict", optimizer), ("scaler_state_dict", setup.precision.scaler)):
        if checkpoint.get(key):
            try:
                target.load_state_dict(checkpoint[key])
            except _STATE_ERRORS as exc:
                raise CheckpointError(f"{source}: stored {key} does not fit ({exc.__class__.__name__}: "
                                      f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    try:
        _restore_rng(checkpoint, d, cfg.seed)
    except _STATE_ERRORS as exc:
        raise CheckpointError(f"{source}: stored RNG state is unreadable ({exc.__class__.__name__})") from None
    _resume_point(checkpoint, state)
    if not d.is_main:  # the saved loss sums are the whole job's: counted once, on rank 0
        state.loss_sum, state.loss_count = 0.0, 0
    ts = checkpoint.get("timestamp")
    if ts is None and cfg.resume:  # the original's checkpoints: <ts>_checkpoint.pth
        ts = "_".join(storage.basename(cfg.resume).split("_")[:2])
    return ts if isinstance(ts, str) and TIMESTAMP.match(ts) else None


def _resume_point(ckpt: Mapping[str, Any], state: RunState) -> None:
    if "resume_epoch" in ckpt:  # ours
        state.epoch = int(ckpt["resume_epoch"])
        state.batch = int(ckpt.get("resume_batch", 0))
        state.step = int(ckpt.get("step", 0))
        state.loss_sum, state.loss_count = (float(v) for v in ckpt.get("epoch_loss", (0.0, 0)))
        state.loss_count = int(state.loss_count)
    else:  # the original's: `epoch` is the epoch just finished
        state.epoch = int(ckpt.get("epoch", -1)) + 1
    state.best_prec = float(ckpt.get("best_prec", 0.0))


def _restore_rng(ckpt: Mapping[str, Any], d: Dist, seed: int) -> None:
    """Each rank continues its own RNG streams (saved per rank under torchrun); with another
    world size than the checkpoint's, ranks other than 0 start fresh streams."""
    per_rank = ckpt.get("rank_rng_states")
    if isinstance(per_rank, (list, tuple)) and len(per_rank) == d.world_size:
        restore_rng_state(per_rank[d.rank])
    elif ckpt.get("rng_state") is not None:
        restore_rng_state(ckpt["rng_state"])
        if d.rank > 0:
            torch.manual_seed(rank_seed(seed, d.rank))


def check_resume_order(cfg: TrainConfig, checkpoint: Mapping[str, Any], world_size: int = 1) -> list[str]:
    """Options that differ from the checkpoint's and change the data order (the number of
    processes included: each rank reads its own part)."""
    saved = checkpoint.get("data_order")
    saved = saved if isinstance(saved, Mapping) else {}
    changed = [f"{k}: {str(saved[k])[:40]} -> {getattr(cfg, k)}" for k in DATA_ORDER_KEYS
               if k in saved and saved[k] != getattr(cfg, k)]
    stored_world = saved.get("world_size", 1)
    if saved and stored_world != world_size:
        changed.append(f"processes: {str(stored_world)[:40]} -> {world_size}")
    return changed


__all__ = ["restore", "check_resume_order"]
