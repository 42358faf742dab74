"""Buffers handed to code whose lifetime the loader does not control (a training step, a user's
loop) go back to their pool when the tensor made over them is freed: a finalizer on the tensor's
storage, which torch keeps alive exactly as long as any tensor or view over it."""

from __future__ import annotations

import weakref
from typing import Any, Callable

import numpy as np
import torch

from sen12ms_common.format.buffers import BufferPool


def give_when_freed(tensor: torch.Tensor, give: Callable[..., Any], *args: Any) -> weakref.finalize:
    """Call `give(*args)` once no tensor over `tensor`'s storage is left (in whichever thread
    drops the last one); `.detach()` the returned finalizer to cancel it."""
    return weakref.finalize(tensor.untyped_storage(), give, *args)


def lent_tensor(pool: BufferPool, shape: tuple[int, ...]) -> torch.Tensor:
    """A tensor over a buffer of `pool`, the buffer back in the pool once the tensor (every view of
    it) is freed. The tensor owns a storage of its own, so that its life is the batch's."""
    buf = pool.take(shape)
    tensor = torch.from_numpy(buf)
    give_when_freed(tensor, pool.give, buf)
    return tensor


def tensor_over(array: np.ndarray, give: Callable[..., Any], *args: Any) -> torch.Tensor:
    """A tensor over `array`'s memory with a storage of its own; `give(*args)` once it is freed."""
    tensor = torch.from_numpy(array)
    give_when_freed(tensor, give, *args)
    return tensor


__all__ = ["give_when_freed", "lent_tensor", "tensor_over"]
