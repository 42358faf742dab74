"""Shard checksums for the DALI loader: each shard its reader reads is checked whole (xxh3-128,
as the manifest lists it) on a thread of its own, a bounded number of shards ahead of the
batches, and a batch is handed out only once every shard its samples come from has matched.

DALI's reader cannot check a shard itself; this keeps the webdataset loader's guarantee (no
sample of a shard that does not match is ever trained on) and lets the zstd kernels skip the
frames' own checksums (docs/performance.md)."""

from __future__ import annotations

import threading
from typing import Iterable, Sequence

from sen12ms_common.manifest import ShardEntry

from .shardread import check_whole


class ShardGate:
    """Checks shards `urls` (with their `entries`) in this order, at most `ahead` shards past
    the furthest one asked about; `problems` waits for the shards a batch comes from."""

    def __init__(self, urls: Sequence[str], entries: Sequence[ShardEntry], ahead: int) -> None:
        self._order = list(zip(urls, entries))
        self._pos = {u: i for i, u in enumerate(urls)}
        self._done: dict[str, str | None] = {}  # url -> problem, None when it matched
        self._ahead = max(1, ahead)
        self._horizon = self._ahead
        self._next = 0
        self._closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="shard-check", daemon=True)
        self._thread.start()

    def _take(self) -> tuple[str, ShardEntry] | None:
        with self._cond:
            self._cond.wait_for(lambda: self._closed or self._next < min(self._horizon, len(self._order)))
            if self._closed:
                return None
            item = self._order[self._next]
            self._next += 1
            return item

    def _run(self) -> None:
        while (item := self._take()) is not None:
            url, entry = item
            try:
                problem = check_whole(url, entry)
            except Exception as exc:  # never leave a waiting batch without an answer
                problem = f"{url}: cannot be checked ({exc.__class__.__name__}: {exc})"
            with self._cond:
                self._done[url] = problem
                self._cond.notify_all()

    def problems(self, urls: Iterable[str]) -> dict[str, str]:
        """The problems (url -> one line) of shards `urls`, once each has been checked."""
        wanted = set(urls)
        known = wanted & self._pos.keys()
        found = {u: f"{u}: the reader read a shard that is not in the manifest's split" for u in wanted - known}
        with self._cond:
            self._horizon = max(self._horizon, max((self._pos[u] for u in known), default=-1) + 1 + self._ahead)
            self._cond.notify_all()
            self._cond.wait_for(lambda: known <= self._done.keys())
            found.update({u: p for u in known if (p := self._done[u]) is not None})
        return found

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()


def reading_order(urls: Sequence[str], samples: Sequence[int], first_sample: int) -> list[int]:
    """Indices of `urls` in the order a reader starting at sample `first_sample` of their
    concatenation meets them: from the shard holding it to the end, then from the start."""
    start, seen = 0, 0
    for i, n in enumerate(samples):
        if seen + n > first_sample:
            start = i
            break
        seen += n
    return list(range(start, len(urls))) + list(range(start))
