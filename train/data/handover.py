"""Batches a DataLoader worker hands its main process in reused shared memory.

A DataLoader moves every tensor a worker yields into shared memory of its own (a fresh
allocation per batch, about 50 MB for 32 s1s2 samples: the cost that held DataLoader workers to
half the native loader's rate, docs/api.md). A `ShardDataset` in a worker writes its batches into
shared slots instead, which cross as they are. A slot is reused only once the main process has
freed every tensor over it: the main process says so in a small shared table of flags the
dataset made before its workers started (a worker sets its slot's flag to a token when it hands
the slot over; a finalizer in the main process clears it, `leases.give_when_freed`).
"""

from __future__ import annotations

import itertools
import os
import threading
from typing import Any

import torch

from .leases import give_when_freed

MAX_WORKERS = 64   # DataLoader workers with slots of their own (more: fresh shared memory)
SLOTS = 12         # per worker: its reading threads' queues, the DataLoader's prefetched batches, the loop's


def new_flags() -> torch.Tensor:
    """The flag table, made in the main process before any worker starts (inherited by forked
    workers, sent as a file descriptor to spawned ones)."""
    return torch.zeros((MAX_WORKERS, SLOTS), dtype=torch.int64).share_memory_()


def _clear(flags: torch.Tensor, w: int, i: int, token: int) -> None:
    # Only the holder of the token clears it: the worker sets a flag only while it is 0.
    if int(flags[w, i]) == token:
        flags[w, i] = 0


def _received(data: dict[str, Any], flags: torch.Tensor, leases: tuple[tuple[str, int, int, int], ...]) -> dict[str, Any]:
    """In the main process: each slot goes back once its tensor here is freed."""
    for name, w, i, token in leases:
        give_when_freed(data[name], _clear, flags, w, i, token)
    return data


class HandedBatch(dict):
    """A batch dict and the slots its tensors lie in. A copy keeps them (torch's default_convert
    copies the dict in the worker); unpickled in the main process it becomes a plain dict whose
    slots go back once freed there."""

    def __init__(self, data: dict[str, Any], flags: torch.Tensor, leases: tuple[tuple[str, int, int, int], ...]) -> None:
        super().__init__(data)
        self.flags, self.leases = flags, leases

    def __copy__(self) -> HandedBatch:
        return HandedBatch(self, self.flags, self.leases)

    def __reduce__(self) -> tuple[Any, ...]:
        return _received, (dict(self), self.flags, self.leases)


class Handover:
    """A worker's slots. `place(shape, dtype)` takes a slot to write a batch tensor into (the
    loader decodes into it, from any thread); `lay(tensor)` gives the tensor in a slot (itself if
    it lies in one); `hand(batch)` the batch to yield, its slots leased to the main process;
    `drop(tensor)` gives a slot taken for a tensor that will not be handed back at once;
    `drop_unhanded()` every slot taken and not handed (an epoch left early)."""

    def __init__(self, flags: torch.Tensor, worker: int, rows: int) -> None:
        self.flags, self.w, self.rows = flags, worker, rows
        self.slots: list[torch.Tensor] = []
        self._taken: dict[int, tuple[int, int]] = {}  # storage address -> (slot, token), not handed yet
        self._tokens = itertools.count(((os.getpid() & 0x7FFFFF) << 32) + 1)
        self._lock = threading.Lock()  # the loader's decoding thread and the worker's own both place

    def _free_slot(self, shape: tuple[int, ...], dtype: torch.dtype) -> int | None:
        if self.w >= MAX_WORKERS:
            return None
        for i, t in enumerate(self.slots):
            if (t.dtype == dtype and t.shape[1:] == shape[1:] and t.shape[0] >= shape[0]
                    and int(self.flags[self.w, i]) == 0):
                return i
        if len(self.slots) < SLOTS:
            self.slots.append(torch.empty((max(self.rows, shape[0]), *shape[1:]), dtype=dtype).share_memory_())
            return len(self.slots) - 1
        return None  # the main process holds every slot: a fresh one, as a DataLoader makes

    def place(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        with self._lock:
            i = self._free_slot(tuple(shape), dtype)
            if i is None:
                return torch.empty(shape, dtype=dtype).share_memory_()
            token = next(self._tokens)
            self.flags[self.w, i] = token
            self._taken[self.slots[i].untyped_storage().data_ptr()] = (i, token)
        return self.slots[i][:shape[0]]

    def lay(self, tensor: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        if (dtype is None or tensor.dtype == dtype) and tensor.untyped_storage().data_ptr() in self._taken:
            return tensor
        slot = self.place(tuple(tensor.shape), dtype or tensor.dtype)
        slot.copy_(tensor)
        self.drop(tensor)  # its own slot, if it had one, is not handed
        return slot

    def drop(self, tensor: torch.Tensor) -> None:
        taken = self._taken.pop(tensor.untyped_storage().data_ptr(), None)
        if taken is not None:
            self.flags[self.w, taken[0]] = 0

    def drop_unhanded(self) -> None:
        for i, _ in list(self._taken.values()):
            self.flags[self.w, i] = 0
        self._taken.clear()

    def hand(self, batch: dict[str, Any]) -> HandedBatch:
        leases = []
        for name, value in batch.items():
            if isinstance(value, torch.Tensor):
                taken = self._taken.pop(value.untyped_storage().data_ptr(), None)
                if taken is not None:
                    leases.append((name, self.w, *taken))
        return HandedBatch(batch, self.flags, tuple(leases))


__all__ = ["HandedBatch", "Handover", "new_flags"]
