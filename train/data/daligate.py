"""Shard checksums for the DALI loader: each shard its reader reads is checked whole (xxh3-128,
as the manifest lists it) on a thread of its own, a bounded number of shards ahead of the
batches, and a batch is handed out only once every shard its samples come from has matched.

DALI's reader cannot check a shard itself; this keeps the webdataset loader's guarantee (no
sample of a shard that does not match is ever trained on) and lets the zstd kernels skip the
frames' own checksums (docs/performance.md). The same pass walks the tar and compares its
members with the shard's index file, which DALI reads them by and no checksum covers. DALI
reads the shard again after it was checked: a batch is handed out only while its shards'
status (size, modification and change times, inode) is still the one they were checked with,
so that a shard rewritten in place after its check stops the epoch with one line."""

from __future__ import annotations

import os
import tarfile
import threading
from typing import Iterable, Sequence

from sen12ms_common.format import tarstream
from sen12ms_common.format.checksums import Digests
from sen12ms_common.format.manifest import ShardEntry, index_name
from sen12ms_common.format.sample import dali_index

from .shardread import mismatch

Stamp = tuple[int, int, int, int, int]  # (device, inode, size, mtime ns, ctime ns)


def _stamp(st: os.stat_result) -> Stamp:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _walk(f, digests: Digests) -> str:
    """The `wds2idx` index of the tar in stream `f`, every byte of it handed to `digests`."""
    index: list[list[tuple[str, int, int, str]]] = []
    key = None

    def member(name: str, at: int, size: int) -> None:
        nonlocal key
        k, ext = tarstream.split_name(name)
        if k != key:
            index.append([])
            key = k
        index[-1].append((ext, at, size, name))

    for _ in tarstream.iter_members(f, lambda n: False, on_bytes=digests.update, drain=True, on_member=member):
        pass
    return dali_index(index)


def check_for_dali(url: str, entry: ShardEntry) -> tuple[str | None, Stamp | None]:
    """(problem or None, the shard's status it was checked with): the shard's xxh3-128 against the
    manifest and its index file against its members, in one read (never mapped: a file cut short
    meanwhile is a short read, not a SIGBUS)."""
    idx = os.path.join(os.path.dirname(url), index_name(entry.name))
    digests = Digests(sha256=False)
    try:
        with open(url, "rb") as f:
            before = _stamp(os.fstat(f.fileno()))
            walked = _walk(f, digests)
            if _stamp(os.fstat(f.fileno())) != before:
                return f"{url}: the shard changed while it was checked (rewritten in place?)", None
    except FileNotFoundError:
        return f"{url}: shard is missing", None
    except (OSError, tarfile.TarError, ValueError) as exc:
        return f"{url}: cannot be read whole ({exc.__class__.__name__}: {exc})", None
    problem = mismatch(url, entry, digests)
    if problem is None:
        try:
            with open(idx, encoding="utf-8", errors="replace") as f:
                listed = f.read()
        except OSError as exc:
            return f"{idx}: cannot read the index file ({exc.strerror or exc})", None
        if listed != walked:
            problem = (f"{idx}: the index's members (offsets, sizes, order) do not match {entry.name}; "
                       "rewrite it with `convert shards`")
    return problem, before


class ShardGate:
    """Checks shards `urls` (with their `entries`) in this order, at most `ahead` shards past
    the furthest one asked about; `problems` waits for the shards a batch comes from."""

    def __init__(self, urls: Sequence[str], entries: Sequence[ShardEntry], ahead: int) -> None:
        self._order = list(zip(urls, entries))
        self._pos = {u: i for i, u in enumerate(urls)}
        self._done: dict[str, str | None] = {}  # url -> problem, None when it matched
        self._stamps: dict[str, Stamp] = {}  # url -> its status when it matched
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
            stamp = None
            try:
                problem, stamp = check_for_dali(url, entry)
            except Exception as exc:  # never leave a waiting batch without an answer
                problem = f"{url}: cannot be checked ({exc.__class__.__name__}: {exc})"
            with self._cond:
                if stamp is not None:
                    self._stamps[url] = stamp
                self._done[url] = problem
                self._cond.notify_all()

    def problems(self, urls: Iterable[str]) -> dict[str, str]:
        """The problems (url -> one line) of shards `urls` (DALI has read the batch's samples from
        them), once each has been checked; a shard whose status changed since its check is one."""
        wanted = set(urls)
        known = wanted & self._pos.keys()
        found = {u: f"{u}: the reader read a shard that is not in the manifest's split" for u in wanted - known}
        with self._cond:
            self._horizon = max(self._horizon, max((self._pos[u] for u in known), default=-1) + 1 + self._ahead)
            self._cond.notify_all()
            self._cond.wait_for(lambda: known <= self._done.keys())
            found.update({u: p for u in known if (p := self._done[u]) is not None})
            stamps = {u: self._stamps[u] for u in known if u not in found and u in self._stamps}
        for u, stamp in stamps.items():
            try:
                now = _stamp(os.stat(u))
            except OSError:
                now = None
            if now != stamp:
                found[u] = f"{u}: the shard changed after it was checked (rewritten in place?); its samples are not used"
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
