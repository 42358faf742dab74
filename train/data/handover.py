"""Batches a DataLoader worker hands its main process in reused shared memory.

A DataLoader moves every tensor a worker yields into shared memory of its own (a fresh
allocation per batch, about 50 MB for 32 s1s2 samples: the cost that held DataLoader workers to
half the native loader's rate, docs/api.md), and sends each as a file descriptor. A
`ShardDataset` in a worker writes its batches into shared slots instead, each sent to the main
process once (`train.data.receiver` keeps them mapped there); a batch then crosses as a small
message: its slots, its small tensors by value. A slot is reused only once the main process has
freed every tensor over it: the main process says so in a small shared table of flags the
dataset made before its workers started (a worker sets its slot's flag to a token when it hands
the slot over; a finalizer in the main process clears it).
"""

from __future__ import annotations

import itertools
import os
import threading
from typing import Any

import numpy as np
import torch

from .receiver import MAX_WORKERS, SLOTS, Lease, Parcel, Receiver, random_id, received

BY_VALUE = 1 << 16  # bytes: a smaller tensor outside the slots crosses inside the message itself


class HandedBatch(dict):
    """A batch dict and the slots its tensors lie in. A copy keeps them (torch's default_convert
    copies the dict in the worker); pickled, it becomes a `Parcel`, unpickled in the main process
    a plain dict whose slots go back once freed there."""

    def __init__(self, data: dict[str, Any], handover: Handover, leases: dict[str, tuple[int, int]]) -> None:
        super().__init__(data)
        self.handover, self.leases = handover, leases

    def __copy__(self) -> HandedBatch:
        return HandedBatch(self, self.handover, self.leases)

    def __reduce__(self) -> tuple[Any, ...]:
        return received, (self.handover.parcel(dict(self), self.leases),)


def _small_array(value: Any) -> np.ndarray | None:
    """A small CPU tensor as an array over its memory (pickled by value), or None."""
    if not isinstance(value, torch.Tensor) or value.device.type != "cpu" or value.nbytes > BY_VALUE:
        return None
    try:
        return value.detach().numpy()
    except TypeError:  # a dtype numpy lacks (bfloat16): it crosses as torch sends it
        return None


class Handover:
    """A worker's slots. `place(shape, dtype)` takes a slot to write a batch tensor into (the
    loader decodes into it, from any thread); `lay(tensor)` gives the tensor in a slot (itself if
    it lies in one); `hand(batch)` the batch to yield, its slots leased to the main process;
    `drop(tensor)` gives a slot taken for a tensor that will not be handed back at once;
    `drop_unhanded()` every slot taken and not handed (an epoch left early)."""

    def __init__(self, receiver: Receiver, worker: int, rows: int) -> None:
        self.receiver_key, self.w, self.rows = receiver.key, worker, rows
        self.flags, self.mapped = receiver.flags, receiver.mapped
        self.nonce, self.pid = random_id(), os.getpid()
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
        leases = {}
        for name, value in batch.items():
            if isinstance(value, torch.Tensor):
                taken = self._taken.pop(value.untyped_storage().data_ptr(), None)
                if taken is not None:
                    leases[name] = taken
        return HandedBatch(batch, self, leases)

    def parcel(self, batch: dict[str, Any], leases: dict[str, tuple[int, int]]) -> Parcel:
        """What crosses for `batch` (when it is pickled, in the DataLoader's sending thread)."""
        plain, values, sent = {}, [], []
        for name, value in batch.items():
            if name in leases:
                i, token = leases[name]
                # The slot's storage goes along until the main process has said it has it mapped.
                storage = None if int(self.mapped[self.w, i]) == self.nonce else self.slots[i].untyped_storage()
                sent.append(Lease(name, i, token, value.dtype, tuple(value.shape), value.stride(),
                                  value.storage_offset(), storage))
            elif (array := _small_array(value)) is not None:
                values.append((name, array))
            else:
                plain[name] = value
        return Parcel(self.receiver_key, self.w, self.nonce, self.pid, tuple(batch), plain, tuple(sent), tuple(values))


__all__ = ["HandedBatch", "Handover", "MAX_WORKERS", "SLOTS"]
