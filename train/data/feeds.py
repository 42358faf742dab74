"""Threads that run batch generators ahead of their consumer, and the merge of several such
reading threads back into the canonical batch order of an epoch."""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Iterator, Sequence

from sen12ms_common.errors import DataError

from .items import Ended, Failed, Item, position

_END = object()


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def prefetched(items: Iterator[Any], depth: int = 2, name: str = "loader") -> Iterator[Any]:
    """`items` produced by a thread up to `depth` ahead, so that reading and decoding overlap
    the consumer's work (the training step releases the GIL)."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                q.put(item)
                if stop.is_set():
                    break
        except BaseException as exc:  # handed to the consumer, raised there
            q.put(_Failure(exc))
        finally:
            q.put(_END)

    thread = threading.Thread(target=produce, name=name, daemon=True)
    thread.start()
    item: Any = None
    try:
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item
    finally:
        stop.set()
        # Let the producer finish its put, see `stop` and end. It may be gone already: at
        # interpreter exit daemon threads stop, and an unfinished epoch is closed after them.
        while item is not _END and (thread.is_alive() or not q.empty()):
            try:
                item = q.get(timeout=0.1)
            except queue.Empty:
                continue
        if thread is not threading.current_thread():
            thread.join()


def threaded_workers(worker: Callable[[int, int], Iterator[Item]], k: int,
                     order: Sequence[tuple[int, int]], depth: int = 2) -> Iterator[Item]:
    """The items of `k` threads, thread w running `worker(w, k)` (the streams v with v % k == w,
    as worker processes split them), pulled in the canonical `order`: each thread runs at most
    `depth` batches ahead."""
    return merged([prefetched(worker(w, k), depth, name=f"reader-{w}") for w in range(k)], order)


def merged(feeds: Sequence[Iterator[Item]], order: Sequence[tuple[int, int]]) -> Iterator[Item]:
    """The items of readers (threads or worker processes; reader w reads the streams v with
    v % len(feeds) == w) pulled in the canonical `order`, never more than one batch held here."""
    k = len(feeds)
    ended: set[int] = set()
    try:
        for key in order:
            if key[1] in ended:
                continue
            feed = feeds[key[1] % k]
            while True:
                item = next(feed, None)
                if item is None:
                    raise DataError(f"the loader's reader {key[1] % k} ended before batch {key} "
                                    "(internal error)")
                yield item
                if isinstance(item, Failed):
                    return
                end = item.stream if isinstance(item, Ended) else None
                if end is not None:
                    ended.add(end)
                if position(item) == key or end == key[1]:
                    break
    finally:
        for feed in feeds:
            feed.close()  # type: ignore[attr-defined]
