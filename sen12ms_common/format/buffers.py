"""Reusable buffers, the loader's one pool: a member or batch read into a fresh allocation pays
a page fault per 4 KiB (reads ran at a third of the speed of reads into reused memory here,
docs/benchmarks.md).

Ownership is explicit: `take` hands a buffer out, its holder hands it back with `give` once
nothing reads it any more; a buffer is never handed out twice in between. A holder that cannot
know when its consumers are done binds the return to an object's life instead
(`train.data.leases.give_when_freed`)."""

from __future__ import annotations

from collections import deque

import numpy as np


class BufferPool:
    """numpy buffers of one dtype by shape. `take(shape)` hands out a free buffer of that shape
    (a new one when none is free); `give(buf)` returns one; at most `keep` free buffers are kept
    per shape (None: all). `take_bytes` / `give_bytes`: uint8 memoryviews in power-of-two size
    classes, for members read from a stream. Safe to share between threads: deque's append and
    pop are atomic, and a buffer given back twice is kept once."""

    def __init__(self, dtype: type = np.uint8, keep: int | None = None, smallest: int = 1 << 16) -> None:
        self.dtype, self.keep, self.smallest = np.dtype(dtype), keep, smallest
        self._free: dict[tuple[int, ...], deque[np.ndarray]] = {}
        self._ids: set[int] = set()  # the free buffers, so that a second give is a no-op

    def take(self, shape: tuple[int, ...]) -> np.ndarray:
        q = self._free.get(shape)
        while q:
            try:
                buf = q.pop()  # the most recent: its pages are the likeliest still in cache
            except IndexError:
                break
            self._ids.discard(id(buf))
            return buf
        return np.empty(shape, dtype=self.dtype)

    def give(self, buf: np.ndarray) -> None:
        if id(buf) in self._ids:
            return
        q = self._free.setdefault(buf.shape, deque())
        if self.keep is None or len(q) < self.keep:
            self._ids.add(id(buf))
            q.append(buf)

    def take_bytes(self, n: int) -> memoryview:
        """A writable view of n bytes of a buffer from this pool."""
        cap = max(self.smallest, 1 << max(0, n - 1).bit_length())
        return memoryview(self.take((cap,)))[:n]

    def give_bytes(self, view: memoryview) -> None:
        """Return the buffer under `view` (from `take_bytes`, or a view of one)."""
        base = view.obj
        if isinstance(base, np.ndarray) and base.dtype == self.dtype and base.ndim == 1:
            self.give(base)

    @property
    def held_bytes(self) -> int:
        """Bytes of the free buffers kept."""
        return sum(buf.nbytes for q in self._free.values() for buf in q)
