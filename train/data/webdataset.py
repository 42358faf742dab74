"""The webdataset loader: shards -> uint16 batches on the CPU, decoded by threads in this
process (`workers` = 0, the default) or in worker processes."""

from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch

from sen12ms_common.cpus import usable_cpus
from sen12ms_common.errors import DataError, ShardError
from sen12ms_common.format.buffers import BufferPool
from sen12ms_common.storage import files as storage

from .batches import BatchDecoder
from .feeds import merged, prefetched, threaded_workers
from .items import Decoded, Ended, Failed, Item, Skipped
from .plan import EpochPlan, StreamPlan, buffer_shuffle, epoch_plan
from .procs import SlotRing, SlotShape, WorkerFeeds
from .shardread import RawSample, ShardSource, check_shards, read_slice
from .spec import BatchBuffers, LoaderSpec, check_modalities, mask_source
from .symmetry import SYMMETRIES

log = logging.getLogger(__name__)

_AUGMENT = 0x5C4F  # the stream of random symmetries, apart from the shuffle's

__all__ = ["ShardError", "WebDatasetLoader", "make_loader", "check_shards"]


# --- one read stream: raw samples -> shuffled -> decoded uint16 batches ------------------------

def _stream_raw(src: ShardSource, plan: StreamPlan, pool: BufferPool, events: list[str]) -> Iterator[RawSample]:
    for sl in plan.slices:
        try:
            yield from read_slice(src, sl, pool.take_bytes)
        except ShardError as exc:
            if not src.skip_bad:
                raise
            log.warning("skipping bad shard: %s", exc)
            events.append(str(exc))


def _give_back(pool: BufferPool, samples: Iterable[RawSample]) -> None:
    """The members' buffers of samples decoded (or passed over) go back to their pool."""
    for _, members, _ in samples:
        for data in members.values():
            if data is not None:
                pool.give_bytes(data)


def stream_batches(src: ShardSource, plan: StreamPlan, decoder: BatchDecoder, pool: BufferPool, *,
                   batch_size: int, shuffle: bool, bufsize: int, skip: int, events: list[str], readahead: int = 0,
                   augment: bool = False) -> Iterator[tuple[int, tuple[dict[str, Any], int | None] | None]]:
    """(j, (batch, slot) or None) for batches j = skip, skip + 1, ... of one stream (see
    `BatchDecoder.decode`); skipped ones are not decoded.
    `readahead`: a thread of its own reads up to that many samples ahead (remote storage, where
    one stream waits on the network while the others are read); `augment`: a random symmetry of
    the square per sample (flips, 90-degree rotations)."""
    items: Iterable[RawSample] = _stream_raw(src, plan, pool, events)
    if readahead:
        items = prefetched(iter(items), depth=readahead)
    if shuffle:
        items = buffer_shuffle(items, bufsize, np.random.default_rng(list(plan.seed)))
    it = iter(items)
    for _ in range(skip * batch_size):
        passed = next(it, None)
        if passed is None:
            return
        _give_back(pool, [passed])
    j = skip
    while True:
        chunk = [s for _, s in zip(range(batch_size), it)]
        if not chunk:
            return
        # A function of (seed, epoch, rank, stream, batch): a resumed run draws the same ones.
        sym = (np.random.default_rng([*plan.seed, j, _AUGMENT]).integers(0, SYMMETRIES, len(chunk))
               if augment else None)
        got = decoder.decode_slotted(chunk, batch_size, events, sym)
        _give_back(pool, chunk)
        yield j, got
        j += 1


def skip_counts(plan: EpochPlan, start_batch: int) -> dict[int, int]:
    """Per stream, how many of its batches come before canonical batch `start_batch`."""
    counts = {s.index: 0 for s in plan.streams}
    for _, v in plan.order()[:start_batch]:
        counts[v] += 1
    return counts


class EpochStreams:
    """The read streams of one epoch; reader w of k reads streams v with v % k == w."""

    def __init__(self, src: ShardSource, counts: tuple[int, ...], *, batch_size: int, seed: int, shuffle: bool,
                 streams: int, rank: int, world_size: int, shuffle_buffer: int, threads: int = 1,
                 pin_memory: bool = False, augment: bool = False, part: int = 0, parts: int = 1,
                 buffers: BatchBuffers | None = None) -> None:
        self.src, self.counts, self.buffers = src, counts, buffers
        self.part, self.parts = part, parts
        self.batch_size, self.seed, self.shuffle = batch_size, seed, shuffle
        self.streams, self.rank, self.world_size = streams, rank, world_size
        self.bufsize = max(1, math.ceil(shuffle_buffer / streams))
        self.threads, self.pin_memory, self.augment = threads, pin_memory, augment
        self.epoch, self.start_batch = 0, 0
        # Per reading thread (w): its decoder and the reused memory its members are read into.
        self._decoders: dict[int, BatchDecoder] = {}
        self._pools: dict[Any, BufferPool] = {}

    def decoder(self, w: int, threads: int) -> BatchDecoder:
        # Made in the process (and after the fork) that decodes: a thread pool does not survive a fork.
        d = self._decoders.get(w)
        if d is None or d.threads != max(1, threads):
            if d is not None:
                d.close()
            d = self._decoders[w] = BatchDecoder(self.src, threads, self.pin_memory, self.buffers)
        return d

    def close(self) -> None:
        for d in self._decoders.values():
            d.close()
        self._decoders = {}
        self._pools = {}

    def __getstate__(self) -> dict[str, Any]:
        # To a worker process started by a fork server: decoders and pools are made there.
        return {**self.__dict__, "_decoders": {}, "_pools": {}}

    def plan(self) -> EpochPlan:
        return epoch_plan(self.counts, batch_size=self.batch_size, seed=self.seed, epoch=self.epoch,
                          shuffle=self.shuffle, streams=self.streams, rank=self.rank, world_size=self.world_size,
                          part=self.part, parts=self.parts)

    def batches(self, w: int, k: int, threads: int, slots: Any = None) -> Iterator[Item]:
        """The items of reader w of k (a worker process or a reading thread, `train.data.items`):
        the batches of the streams v with v % k == w in canonical order, `Ended` for each stream
        (early: skipped shards); `threads`: its decoding threads; `slots`: a worker process's
        shared memory, its batches are made in."""
        plan = self.plan()
        skips = skip_counts(plan, self.start_batch)
        mine = [s for s in plan.streams if s.index % k == w and s.batches > skips[s.index]]
        events: list[str] = []

        def take() -> list[str]:
            out = events[:]
            events.clear()
            return out

        # Remote storage: every stream reads in a thread of its own, so that they wait on the network
        # together, each with its own buffer pool; local files: this reader's streams share one pool.
        remote = storage.is_remote(self.src.root)
        decoder = self.decoder(w, threads)
        decoder.slots = slots
        gens = {s.index: stream_batches(self.src, s, decoder, self._pools.setdefault(s.index if remote else (w,),
                                                                                      BufferPool()),
                                        batch_size=self.batch_size, shuffle=self.shuffle, bufsize=self.bufsize,
                                        skip=skips[s.index], events=events,
                                        readahead=self.batch_size if remote else 0, augment=self.augment)
                for s in mine}
        ended: set[int] = set()
        last = {v: j for j, v in plan.order()}  # the last planned batch of each stream
        try:
            for j, v in plan.order()[self.start_batch:]:
                if v not in gens or v in ended:
                    continue
                got = next(gens[v], None)
                if got is None:
                    ended.add(v)
                    yield Ended(v, take())
                    continue
                decoded = got[1]
                if j == last[v]:
                    # Run the stream to its end: the end-of-shard checks (sha256, sample count) of
                    # its last shard happen only after its last sample was read.
                    next(gens[v], None)
                if decoded is None:
                    yield Skipped((j, v), take())
                    continue
                yield Decoded((j, v), decoded[0], take(), decoded[1])
            for v in gens:
                if v not in ended:
                    yield Ended(v, take())
        except ShardError as exc:
            yield Failed(str(exc), take())


@dataclass(frozen=True)
class EpochRunner:
    """What a worker process runs: reader w of k over an epoch's streams, from a batch on."""

    streams: EpochStreams

    def __call__(self, w: int, k: int, epoch: int, start: int, slots: Any) -> Iterator[Item]:
        ds = self.streams
        ds.epoch, ds.start_batch = epoch, start
        return ds.batches(w, k, ds.threads, slots)


def ordered(items: Iterable[Item], order: Iterable[tuple[int, int]],
            on_events: Callable[[list[str]], None]) -> Iterator[dict[str, Any]]:
    """Batches from several workers in the canonical `order`; batches of a stream that ended
    early (skipped shards) are left out."""
    expected = deque(order)
    pending: dict[tuple[int, int], dict[str, Any]] = {}
    ended: set[int] = set()
    skipped: set[tuple[int, int]] = set()  # batches whose samples all failed (skip_bad)

    def ready() -> Iterator[dict[str, Any]]:
        while expected:
            key = expected[0]
            if key in pending:
                expected.popleft()
                yield pending.pop(key)
            elif key[1] in ended or key in skipped:
                skipped.discard(key)
                expected.popleft()
            else:
                return

    for item in items:
        if item.events:
            on_events(list(item.events))
        if isinstance(item, Failed):
            raise ShardError(item.message)
        if isinstance(item, Ended):
            ended.add(item.stream)
        elif isinstance(item, Skipped):
            skipped.add(item.at)
        else:
            pending[item.at] = item.batch
        yield from ready()
    if expected:
        raise DataError(f"the loader delivered no batch {expected[0]} of this epoch (internal error)")


class WebDatasetLoader:
    """`Loader` over the shards of one split (see `train.data` for the batch dict)."""

    def __init__(self, spec: LoaderSpec) -> None:
        manifest = spec.manifest
        entries = tuple(manifest.shards(spec.split))
        layout = manifest.layout_of(spec.split)
        check_modalities(manifest, spec.bands, spec.root, spec.split)
        self.spec = spec
        self.src = ShardSource(spec.root, entries, layout, tuple(spec.bands), spec.rule,
                               spec.verify, spec.skip_bad_shards, mask_source(spec), not spec.no_savanna)
        self.dataset = EpochStreams(self.src, tuple(e.samples for e in entries), batch_size=spec.batch_size,
                                    seed=spec.seed, shuffle=spec.train, streams=spec.streams, rank=spec.rank,
                                    world_size=spec.world_size, shuffle_buffer=spec.shuffle_buffer,
                                    threads=decode_threads(spec), pin_memory=spec.pin_memory,
                                    augment=spec.augment and spec.train, part=spec.part, parts=spec.parts,
                                    buffers=spec.batch_buffers)
        first = self.dataset.plan()  # sample and batch counts do not depend on the epoch
        self.samples, self._batches = first.samples, first.batches
        self.skipped: list[str] = []
        self._feeds: WorkerFeeds | None = None
        problems = check_shards(spec.root, entries, spec.verify)
        if problems:
            if not spec.skip_bad_shards:
                more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
                raise ShardError(f"{len(problems)} {spec.split} shard(s) cannot be used: "
                                 + "; ".join(problems[:3]) + more)
            for p in problems:
                log.warning("will skip bad shard: %s", p)

    def __len__(self) -> int:
        return self._batches

    def _record(self, events: list[str]) -> None:
        # A shard read by two streams (or in every epoch) is one problem, counted once.
        self.skipped.extend(e for e in dict.fromkeys(events) if e not in self.skipped)

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[dict[str, Any]]:
        ds = self.dataset
        ds.epoch, ds.start_batch = epoch, start_batch
        plan = ds.plan()
        skips = skip_counts(plan, start_batch)
        busy = sum(1 for s in plan.streams if s.batches > skips[s.index])
        workers = min(self.spec.workers, busy)
        order = plan.order()[start_batch:]
        if workers == 0:
            # Reading threads, each with its own streams (as worker processes split them): the
            # tar walk and shuffle of one run while the others read, hash and decode without
            # the GIL. Threads beyond the streams decode the samples of a batch together.
            threads = ds.threads  # decode_threads(spec), fixed when the loader was made
            k = max(1, min(threads, busy))
            if k == 1:
                items = prefetched(ds.batches(0, 1, threads))
            else:
                # Each thread holds its queued batches: two ahead keeps 2 threads busy, one
                # ahead bounds what many threads hold (about 2 x threads batches in all).
                items = threaded_workers(lambda w, k: ds.batches(w, k, threads // k), k, order,
                                         depth=2 if k <= 2 else 1)
            yield from ordered(items, order, self._record)
            return
        # Worker processes: each decodes its streams' batches into shared-memory slots of its own.
        feeds = self._workers()
        try:
            yield from ordered(merged(feeds.epoch(workers, epoch, start_batch), order), order, self._record)
        finally:
            feeds.end_epoch()

    def _workers(self) -> WorkerFeeds:
        """The worker processes, started at the first epoch that uses them and kept."""
        if self._feeds is None:
            spec = self.spec
            size, full, k = self.src.layout.size, spec.batch_size, min(spec.workers, spec.streams)
            mask = (full, size, size) if self.src.mask is not None else None
            ring = SlotRing(SlotShape((full, len(self.src.bands), size, size), mask), k)
            self._feeds = WorkerFeeds(EpochRunner(self.dataset), ring,
                                      copy_out=spec.pin_memory and torch.cuda.is_available())
        return self._feeds

    def close(self) -> None:
        self.dataset.close()
        if self._feeds is not None:
            self._feeds.close()
            self._feeds = None


def decode_threads(spec: LoaderSpec) -> int:
    """Decoding threads per reading process: `spec.threads`, or (0) every CPU this process may
    use when it reads itself, one per worker process otherwise."""
    if spec.threads > 0:
        return spec.threads
    return 1 if spec.workers > 0 else usable_cpus()


def make_loader(spec: LoaderSpec) -> WebDatasetLoader:
    return WebDatasetLoader(spec)
