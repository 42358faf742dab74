"""A diverged run (a learning rate too large: weights or the loss turned NaN or infinite) ends in
one line that says so and names the last good checkpoint, which is kept: the diverged state is
never written over it."""

from __future__ import annotations

import math

import torch

from sen12ms_common.errors import TrainingDiverged
from sen12ms_common.storage.files import exists


def finite_state(model: torch.nn.Module, loss: float) -> bool:
    """Whether the epoch's loss and every weight and buffer are finite."""
    if not math.isfinite(loss):
        return False
    return all(bool(torch.isfinite(t).all()) for t in (*model.parameters(), *model.buffers())
               if t.is_floating_point())


def diverged(epoch: int, step: int, loss: float, lr: float, checkpoint: str, saved_step: int) -> TrainingDiverged:
    """The one-line error of a run that diverged in `epoch`."""
    kept = (f"the last good checkpoint (step {saved_step}) is kept: {checkpoint}" if saved_step > 0 and exists(checkpoint)
            else "no checkpoint was written")
    return TrainingDiverged(f"training diverged in epoch {epoch} by step {step} (train loss {loss:g}, weights or "
                            f"outputs no longer finite; --lr {lr:g} is likely too large); {kept}")
