"""The webdataset loader: shards -> uint16 batches, on the CPU, in worker processes.

Per read stream (see `train.data.plan`): open each shard of its slices through
`sen12ms_common.storage` (local or s3://), walk the tar in large reads
(`sen12ms_common.tarstream`, webdataset's key / extension convention) keeping only the members
the input needs, shuffle the
still-compressed samples through a buffer (deterministic per seed, epoch, rank, stream),
decode them with `shardformat.decode_sample`, stack the chosen bands into a uint16 batch
(`inputs.select_channels`) and compute the targets of the whole batch with the `LabelRule`.
Workers hand uint16 batches (allocated in shared memory), float32 probabilities and keys to
the main process, which puts them into the canonical order of the plan. Float conversion and
normalisation happen later, on the training device.

Integrity: before an epoch every shard must exist (and, when verifying, have the manifest's
size); while streaming, the sha256 of each shard's bytes is compared with the manifest at the
shard's end, and the sample count too. A decode error names shard and sample. With
`skip_bad_shards` such a shard (or sample) is reported, counted in `Loader.skipped` and the
stream goes on; otherwise the epoch stops with a `ShardError`.
"""

from __future__ import annotations

import hashlib
import logging
import math
import signal
import tarfile
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from sen12ms_common import storage, tarstream
from sen12ms_common.bands import BandRef, modalities_of
from sen12ms_common.igbp import LabelRule
from sen12ms_common.inputs import select_channels
from sen12ms_common.manifest import ShardEntry
from sen12ms_common.shardformat import (LABEL_EXT, N_LABEL, SampleLayout, ShardFormatError, check_member_name,
                                         decode_sample)

from . import DataError, LoaderSpec
from .plan import EpochPlan, ShardSlice, StreamPlan, buffer_shuffle, epoch_plan

log = logging.getLogger(__name__)

RawSample = tuple[str, dict, str]  # (key, members ext -> bytes, shard name)


class ShardError(DataError):
    """A shard (or a sample in it) that is missing, damaged or not what the manifest says."""


@dataclass(frozen=True)
class _Source:
    """Everything a worker needs to read a split; small and picklable."""

    root: str
    entries: tuple[ShardEntry, ...]
    layout: SampleLayout
    bands: tuple[BandRef, ...]
    rule: LabelRule
    verify: bool
    skip_bad: bool

    @property
    def modalities(self) -> tuple[str, ...]:
        return modalities_of(self.bands)

    @property
    def wanted(self) -> frozenset[str]:
        exts = {LABEL_EXT}
        for m in self.modalities:
            exts.add(self.layout.ext(m))
            if self.layout.codec == "lz4":
                exts.add(self.layout.sizes_ext(m))
        return frozenset(exts)

    def url(self, shard: int) -> str:
        return storage.join(self.root, self.entries[shard].name)


# --- reading one shard -------------------------------------------------------------------------

def read_slice(src: _Source, sl: ShardSlice) -> Iterator[RawSample]:
    """Raw samples [start, stop) of one shard; the whole shard is read when verifying."""
    entry = src.entries[sl.shard]
    url = src.url(sl.shard)
    try:
        # With verification a file of another size fails here, before a byte is read.
        raw = storage.open_shard_stream(url, expected_size=entry.bytes if src.verify else None)
    except storage.StorageError as exc:
        raise ShardError(str(exc)) from exc
    except FileNotFoundError as exc:
        raise ShardError(f"{url}: shard is missing") from exc
    except OSError as exc:
        raise ShardError(f"{url}: cannot open ({exc})") from exc
    pos = 0
    digest = hashlib.sha256() if src.verify else None
    nbytes = 0

    def count(data: bytes) -> None:
        nonlocal nbytes
        nbytes += len(data)
        digest.update(data)

    with raw:
        try:
            samples = tarstream.iter_samples(raw, src.wanted, check_name=check_member_name,
                                             on_bytes=count if src.verify else None, drain=src.verify)
            for key, members in samples:
                if pos >= sl.stop and not src.verify:
                    break  # nothing left to check: stop reading early
                if sl.start <= pos < sl.stop:
                    yield key, members, entry.name
                pos += 1
        except storage.StorageError as exc:
            raise ShardError(f"{exc} (after {pos} samples)") from exc
        except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
            raise ShardError(f"{url}: unreadable after {pos} samples ({exc.__class__.__name__}: {exc})") from exc
    if pos < sl.stop:
        raise ShardError(f"{url}: ends after {pos} samples; the manifest says {entry.samples}")
    if src.verify:
        if pos != entry.samples:
            raise ShardError(f"{url}: holds {pos} samples; the manifest says {entry.samples}")
        if nbytes != entry.bytes or digest.hexdigest() != entry.sha256:
            raise ShardError(f"{url}: content does not match the manifest (sha256 {digest.hexdigest()[:16]}..., "
                             f"{nbytes} bytes; expected {entry.sha256[:16]}..., {entry.bytes} bytes); "
                             f"rebuild it or pass --no-verify")


def check_shards(root: str, entries: Iterable[ShardEntry], verify: bool) -> list[str]:
    """Problems ("url: reason") of shards that are missing or (verify) of the wrong size."""
    entries = list(entries)
    try:
        listing = storage.sizes(root)  # one listing, also on object stores
    except OSError as exc:
        return [f"{root}: cannot list the shards ({exc})"]
    problems = []
    for e in entries:
        got = listing.get(e.name)
        url = storage.join(root, e.name)
        if got is None:
            problems.append(f"{url}: shard is missing")
        elif verify and got != e.bytes:
            problems.append(f"{url}: {got} bytes; the manifest says {e.bytes}")
    return problems


# --- one read stream: raw samples -> shuffled -> decoded uint16 batches ------------------------

def _stream_raw(src: _Source, plan: StreamPlan, events: list[str]) -> Iterator[RawSample]:
    for sl in plan.slices:
        try:
            yield from read_slice(src, sl)
        except ShardError as exc:
            if not src.skip_bad:
                raise
            log.warning("skipping bad shard: %s", exc)
            events.append(str(exc))


def _alloc_uint16(shape: tuple[int, ...]) -> torch.Tensor:
    if get_worker_info() is None:
        return torch.empty(shape, dtype=torch.uint16)
    # Allocated in shared memory right away, so handing it to the main process copies nothing.
    proto = torch.empty(0, dtype=torch.uint16)
    storage_ = proto._typed_storage()._new_shared(math.prod(shape), device="cpu")
    return proto.new(storage_).view(shape)


def decode_batch(src: _Source, chunk: list[RawSample], events: list[str]) -> dict[str, Any] | None:
    """Decode raw samples into one batch dict (see `train.data`); None if every sample failed."""
    size = src.layout.size
    image = _alloc_uint16((len(chunk), len(src.bands), size, size))
    out = image.numpy()
    prob = np.empty((len(chunk), N_LABEL), dtype=np.float32)
    keys: list[str] = []
    for key, members, shard in chunk:
        try:
            arrays = decode_sample(members, src.layout, src.modalities)
        except ShardFormatError as exc:
            msg = f"{storage.join(src.root, shard)}: sample {key}: {exc}"
            if not src.skip_bad:
                raise ShardError(msg) from exc
            log.warning("skipping bad sample: %s", msg)
            events.append(msg)
            continue
        i = len(keys)
        select_channels(arrays, src.bands, out=out[i])
        prob[i] = arrays["label"]
        keys.append(key)
    if not keys:
        return None
    n = len(keys)
    return {
        "image": image[:n] if n < len(chunk) else image,
        "target": torch.from_numpy(src.rule.targets(prob[:n])),
        "prob": torch.from_numpy(prob[:n]),
        "key": keys,
    }


def stream_batches(src: _Source, plan: StreamPlan, *, batch_size: int, shuffle: bool, bufsize: int,
                   skip: int, events: list[str]) -> Iterator[tuple[int, dict[str, Any] | None]]:
    """(j, batch) for batches j = skip, skip + 1, ... of one stream; skipped ones are not decoded."""
    items: Iterable[RawSample] = _stream_raw(src, plan, events)
    if shuffle:
        items = buffer_shuffle(items, bufsize, np.random.default_rng(list(plan.seed)))
    it = iter(items)
    for _ in range(skip * batch_size):
        if next(it, None) is None:
            return
    j = skip
    while True:
        chunk = [s for _, s in zip(range(batch_size), it)]
        if not chunk:
            return
        yield j, decode_batch(src, chunk, events)
        j += 1


def skip_counts(plan: EpochPlan, start_batch: int) -> dict[int, int]:
    """Per stream, how many of its batches come before canonical batch `start_batch`."""
    counts = {s.index: 0 for s in plan.streams}
    for _, v in plan.order()[:start_batch]:
        counts[v] += 1
    return counts


class EpochStreams(IterableDataset):
    """The read streams of one epoch; worker w of k reads streams v with v % k == w."""

    def __init__(self, src: _Source, counts: tuple[int, ...], *, batch_size: int, seed: int, shuffle: bool,
                 streams: int, rank: int, world_size: int, shuffle_buffer: int) -> None:
        super().__init__()
        self.src, self.counts = src, counts
        self.batch_size, self.seed, self.shuffle = batch_size, seed, shuffle
        self.streams, self.rank, self.world_size = streams, rank, world_size
        self.bufsize = max(1, math.ceil(shuffle_buffer / streams))
        self.epoch, self.start_batch = 0, 0

    def plan(self) -> EpochPlan:
        return epoch_plan(self.counts, batch_size=self.batch_size, seed=self.seed, epoch=self.epoch,
                          shuffle=self.shuffle, streams=self.streams, rank=self.rank, world_size=self.world_size)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        w, k = (info.id, info.num_workers) if info is not None else (0, 1)
        plan = self.plan()
        skips = skip_counts(plan, self.start_batch)
        mine = [s for s in plan.streams if s.index % k == w and s.batches > skips[s.index]]
        events: list[str] = []

        def take() -> list[str]:
            out = events[:]
            events.clear()
            return out

        gens = {s.index: stream_batches(self.src, s, batch_size=self.batch_size, shuffle=self.shuffle,
                                        bufsize=self.bufsize, skip=skips[s.index], events=events)
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
                    yield {"_end": v, "_events": take()}
                    continue
                batch = got[1]
                if j == last[v]:
                    # Run the stream to its end: the end-of-shard checks (sha256, sample count) of
                    # its last shard happen only after its last sample was read.
                    next(gens[v], None)
                if batch is None:
                    continue
                batch["_slot"] = (j, v)
                batch["_events"] = take()
                yield batch
            for v in gens:
                if v not in ended:
                    yield {"_end": v, "_events": take()}
        except ShardError as exc:
            yield {"_error": str(exc), "_events": take()}


def ordered(items: Iterable[dict[str, Any]], order: Iterable[tuple[int, int]],
            on_events: Callable[[list[str]], None]) -> Iterator[dict[str, Any]]:
    """Batches from several workers in the canonical `order`; batches of a stream that ended
    early (skipped shards) are left out."""
    expected = deque(order)
    pending: dict[tuple[int, int], dict[str, Any]] = {}
    ended: set[int] = set()

    def ready() -> Iterator[dict[str, Any]]:
        while expected:
            key = expected[0]
            if key in pending:
                expected.popleft()
                yield pending.pop(key)
            elif key[1] in ended:
                expected.popleft()
            else:
                return

    for item in items:
        events = item.pop("_events", None)
        if events:
            on_events(list(events))
        if "_error" in item:
            raise ShardError(item["_error"])
        if "_end" in item:
            ended.add(int(item["_end"]))
        else:
            j, v = item.pop("_slot")
            pending[(int(j), int(v))] = item
        yield from ready()
    if expected:
        raise DataError(f"the loader delivered no batch {expected[0]} of this epoch (internal error)")


_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def _worker_init(_: int) -> None:
    # Only the main process reacts to SIGTERM / Ctrl-C: it writes a checkpoint, then stops us.
    # Both arrive blocked (see _forking_workers); one that came in meanwhile is dropped here.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)


@contextmanager
def _forking_workers() -> Iterator[None]:
    """Start loader workers with SIGTERM / Ctrl-C blocked. A scheduler, torchrun (`killpg`) or
    a terminal signals the whole process group; a worker hit before `_worker_init` would die of
    torch's own SIGTERM handler, and the run with it, before writing its checkpoint. Signals
    sent to this process meanwhile are delivered when the block ends."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class WebDatasetLoader:
    """`Loader` over the shards of one split (see `train.data` for the batch dict)."""

    def __init__(self, spec: LoaderSpec) -> None:
        manifest = spec.manifest
        entries = tuple(manifest.shards(spec.split))
        missing = [m for m in modalities_of(spec.bands) if m not in manifest.layout.modalities]
        if missing:
            raise DataError(f"{spec.root}: these shards hold no {', '.join(missing)} "
                            f"(they hold {', '.join(manifest.layout.modalities)}); choose another --input")
        self.spec = spec
        self.src = _Source(spec.root, entries, manifest.layout, tuple(spec.bands), spec.rule,
                           spec.verify, spec.skip_bad_shards)
        self.dataset = EpochStreams(self.src, tuple(e.samples for e in entries), batch_size=spec.batch_size,
                                    seed=spec.seed, shuffle=spec.train, streams=spec.streams, rank=spec.rank,
                                    world_size=spec.world_size, shuffle_buffer=spec.shuffle_buffer)
        first = self.dataset.plan()  # sample and batch counts do not depend on the epoch
        self.samples, self._batches = first.samples, first.batches
        self.skipped: list[str] = []
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
        loader = DataLoader(ds, batch_size=None, num_workers=workers, pin_memory=self.spec.pin_memory,
                            worker_init_fn=_worker_init if workers else None,
                            prefetch_factor=2 if workers else None,
                            # Its own generator: iterating must not draw from the global torch RNG,
                            # or a run resumed mid-epoch would continue with another RNG state.
                            generator=torch.Generator().manual_seed(self.spec.seed))
        with _forking_workers():
            it = iter(loader)
        try:
            yield from ordered(it, plan.order()[start_batch:], self._record)
        finally:
            shutdown = getattr(it, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()

    def close(self) -> None:
        pass


def make_loader(spec: LoaderSpec) -> WebDatasetLoader:
    return WebDatasetLoader(spec)
