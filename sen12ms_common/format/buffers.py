"""Reusable byte buffers: a member read into a fresh allocation pays a page fault per 4 KiB
(reads ran at a third of the speed of reads into reused memory here, docs/benchmarks.md)."""

from __future__ import annotations

import sys
from collections import deque

import numpy as np


def _free_refcount() -> int:
    """The reference count `BufferPool.get` sees for a buffer nobody else holds."""
    q = deque([np.empty(1, np.uint8)])
    buf = q[0]
    return sys.getrefcount(buf)


class BufferPool:
    """uint8 buffers in power-of-two size classes, handed out as writable memoryviews of the
    asked size and handed out again once no view of them is alive (their reference count says
    so: a memoryview, or a numpy array made from one, holds its buffer). Not thread-safe: one
    pool per reading thread."""

    FREE = _free_refcount()

    def __init__(self, smallest: int = 1 << 16, scan: int = 8) -> None:
        self.smallest, self.scan = smallest, scan
        self._classes: dict[int, deque[np.ndarray]] = {}

    def get(self, n: int) -> memoryview:
        cap = max(self.smallest, 1 << max(0, n - 1).bit_length())
        q = self._classes.setdefault(cap, deque())
        # The oldest buffers are the likeliest to be free: look at a few, rotating them.
        for _ in range(min(len(q), self.scan)):
            buf = q[0]
            q.rotate(-1)
            if sys.getrefcount(buf) == self.FREE:
                return memoryview(buf)[:n]
        buf = np.empty(cap, dtype=np.uint8)
        q.append(buf)
        return memoryview(buf)[:n]

    @property
    def held_bytes(self) -> int:
        return sum(cap * len(q) for cap, q in self._classes.items())
