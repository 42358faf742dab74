"""The main process's side of the DataLoader-worker handover (`train.data.handover`): which of a
worker's slots it holds (the flag table), which it has mapped (the mapped table), and those
mappings, so that a slot's shared memory crosses between the processes once, not with each batch.

A batch arrives as a `Parcel`: its slotted tensors as `Lease`s (slot, token, dtype, shape; the
slot's storage only until this process says in the mapped table that it has it), its small
tensors by value, the rest as they are. Each tensor made here over a slot has a storage of its
own; once it (every view of it) is freed, the slot's flag is cleared and the worker reuses it.
"""

from __future__ import annotations

import os
import threading
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sen12ms_common.errors import DataError
from .leases import give_when_freed

MAX_WORKERS = 64   # DataLoader workers with slots of their own (more: fresh shared memory)
SLOTS = 12         # per worker: its reading threads' queues, the DataLoader's prefetched batches, the loop's

# A DataLoader unpickles a batch with nothing but its bytes: this is how the batch finds its
# dataset's receiver (weakly: the dataset owns it).
_RECEIVERS: weakref.WeakValueDictionary[int, Receiver] = weakref.WeakValueDictionary()


def random_id() -> int:
    """A nonzero id that fits an int64 flag, unlikely ever to repeat (a pid does)."""
    return (int.from_bytes(os.urandom(8), "little") >> 1) or 1


@dataclass(frozen=True)
class Lease:
    """A batch tensor lying in slot `slot` of its worker, leased to the main process as `token`."""

    name: str
    slot: int
    token: int
    dtype: torch.dtype
    size: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int
    storage: Any = None  # the slot's torch storage, sent until the main process has it mapped


@dataclass(frozen=True)
class Parcel:
    """One batch as it crosses: `plain` values as pickled, `values` small tensors as arrays."""

    receiver: int
    worker: int
    nonce: int   # the worker's Handover (a restarted worker has another)
    pid: int
    order: tuple[str, ...]
    plain: dict[str, Any]
    leases: tuple[Lease, ...]
    values: tuple[tuple[str, np.ndarray], ...]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Receiver:
    """Made with its dataset in the main process (before any worker starts: forked workers
    inherit the tables, spawned ones get them as file descriptors)."""

    def __init__(self) -> None:
        self.key = random_id()
        self.flags = torch.zeros((MAX_WORKERS, SLOTS), dtype=torch.int64).share_memory_()  # slot -> token held
        self.mapped = torch.zeros((MAX_WORKERS, SLOTS), dtype=torch.int64).share_memory_()  # slot -> nonce mapped
        self._init_local()
        _RECEIVERS[self.key] = self

    def _init_local(self) -> None:
        self._slots: dict[int, tuple[int, dict[int, torch.Tensor]]] = {}  # nonce -> (pid, slot -> bytes)
        self._lock = threading.RLock()  # a finalizer may run inside `receive` (a collection)

    def __getstate__(self) -> dict[str, Any]:
        return {"key": self.key, "flags": self.flags, "mapped": self.mapped}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_local()

    def forget(self) -> None:
        """Drop every mapping (in a worker: those it inherited from the main process by a fork)."""
        with self._lock:
            self._slots = {}

    def purge(self) -> None:
        """Drop the mappings of workers that have ended (their slots' memory goes with them)."""
        with self._lock:
            for nonce in list(self._slots):
                self._drop_if_ended(nonce)

    def _drop_if_ended(self, nonce: int) -> None:
        with self._lock:
            known = self._slots.get(nonce)  # a finalizer run meanwhile may have dropped it
            if known is not None and not _alive(known[0]):
                del self._slots[nonce]

    def receive(self, parcel: Parcel) -> dict[str, Any]:
        out = dict(parcel.plain)
        out.update((name, torch.from_numpy(array)) for name, array in parcel.values)
        if parcel.leases:
            w, nonce = parcel.worker, parcel.nonce
            with self._lock:
                if nonce not in self._slots:
                    self.purge()  # a new worker: one that ended may have left its mappings here
                    self._slots[nonce] = (parcel.pid, {})
                slots = self._slots[nonce][1]
                for lease in parcel.leases:
                    if lease.storage is not None:
                        slots[lease.slot] = torch.empty(0, dtype=torch.uint8).set_(lease.storage)
                        self.mapped[w, lease.slot] = nonce
                    out[lease.name] = self._tensor(slots, lease, w, nonce)
        return {name: out[name] for name in parcel.order}

    def _tensor(self, slots: dict[int, torch.Tensor], lease: Lease, w: int, nonce: int) -> torch.Tensor:
        whole = slots.get(lease.slot)
        if whole is None:
            raise DataError(f"a DataLoader worker's batch refers to its slot {lease.slot}, which this process "
                            "never received (internal error)")
        # A storage of its own per batch (over the same memory), so that its end is this batch's.
        own = torch.from_numpy(whole.numpy()).view(lease.dtype).as_strided(lease.size, lease.stride, lease.offset)
        give_when_freed(own, self._freed, w, lease.slot, lease.token, nonce)
        return own

    def _freed(self, w: int, i: int, token: int, nonce: int) -> None:
        # Only the holder of the token clears it: the worker sets a flag only while it is 0.
        if int(self.flags[w, i]) == token:
            self.flags[w, i] = 0
        # The last batch of an epoch is often freed after its (not persistent) worker ended.
        self._drop_if_ended(nonce)


def received(parcel: Parcel) -> dict[str, Any]:
    """Unpickling a batch in the main process: a plain dict whose slots go back once freed."""
    receiver = _RECEIVERS.get(parcel.receiver)
    if receiver is None:
        raise DataError("a ShardDataset batch from a DataLoader worker arrived in a process without its dataset: "
                        "read its batches in the process that made the DataLoader")
    return receiver.receive(parcel)


def forget_inherited() -> None:
    """In a worker just forked: the main process's mappings it inherited would keep the slots of
    ended workers alive as long as it lives."""
    for receiver in list(_RECEIVERS.values()):
        receiver.forget()


__all__ = ["Lease", "MAX_WORKERS", "Parcel", "Receiver", "SLOTS", "forget_inherited", "random_id", "received"]
