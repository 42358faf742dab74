"""Which samples an epoch reads, in which order, on which rank and in which read stream."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

# Independent random streams for the different draws of one (seed, epoch).
_SHARD_ORDER = 0x5A4D
_SAMPLE_ORDER = 0x5B4E


@dataclass(frozen=True)
class ShardSlice:
    """Samples [start, stop) (positions inside the shard) of shard `shard` of the split."""

    shard: int
    start: int
    stop: int

    @property
    def samples(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class StreamPlan:
    """One read stream: its shard slices in reading order and its batch count."""

    index: int
    slices: tuple[ShardSlice, ...]
    samples: int
    batches: int
    seed: tuple[int, ...]  # seed sequence of the stream's sample shuffle


@dataclass(frozen=True)
class EpochPlan:
    streams: tuple[StreamPlan, ...]
    samples: int  # on this rank
    batch_size: int

    @property
    def batches(self) -> int:
        return sum(s.batches for s in self.streams)

    def order(self) -> list[tuple[int, int]]:
        """Canonical (batch-in-stream, stream) order of this rank's batches."""
        most = max((s.batches for s in self.streams), default=0)
        return [(j, s.index) for j in range(most) for s in self.streams if j < s.batches]


def shard_order(n_shards: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    if not shuffle:
        return np.arange(n_shards)
    return np.random.default_rng([seed, epoch, _SHARD_ORDER]).permutation(n_shards)


def rank_range(total: int, rank: int, world_size: int, equal: bool) -> tuple[int, int]:
    """[begin, end) of the global positions rank `rank` reads."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
    if equal:
        per = total // world_size
        return rank * per, (rank + 1) * per
    return rank * total // world_size, (rank + 1) * total // world_size


def part_range(begin: int, end: int, batch_size: int, part: int, parts: int) -> tuple[int, int]:
    """[begin, end) of part `part` of `parts` of positions [begin, end): the batches of the range
    split into contiguous blocks whose sizes differ by at most one batch, so that only the last
    part can end with a short batch and the parts' batches add up to the range's."""
    if not 0 <= part < parts:
        raise ValueError(f"part {part} outside 0..{parts - 1}")
    batches = math.ceil((end - begin) / batch_size)
    lo, hi = part * batches // parts, (part + 1) * batches // parts
    return min(begin + lo * batch_size, end), min(begin + hi * batch_size, end)


def _slices(counts: Sequence[int], order: Sequence[int], begin: int, end: int) -> list[ShardSlice]:
    """The shard slices covering global positions [begin, end) of the ordered concatenation."""
    out, pos = [], 0
    for shard in order:
        n = int(counts[shard])
        lo, hi = max(begin, pos), min(end, pos + n)
        if lo < hi:
            out.append(ShardSlice(int(shard), lo - pos, hi - pos))
        pos += n
        if pos >= end:
            break
    return out


def epoch_plan(counts: Sequence[int], *, batch_size: int, seed: int = 0, epoch: int = 0,
               shuffle: bool = True, streams: int = 8, rank: int = 0, world_size: int = 1,
               equal: bool | None = None, part: int = 0, parts: int = 1) -> EpochPlan:
    """Plan one epoch over shards holding `counts` samples each.

    `shuffle` (training) permutes the shards and the samples within each stream;
    `equal` (default: same as `shuffle`) gives every rank the same number of samples;
    `part` of `parts` (DataLoader workers of one rank): a block of whole batches of the rank's
    samples (`part_range`), so that the parts together read the rank's samples once.
    """
    if batch_size < 1 or streams < 1 or world_size < 1:
        raise ValueError("batch size, streams and world size must be at least 1")
    equal = shuffle if equal is None else equal
    order = shard_order(len(counts), seed, epoch, shuffle)
    begin, end = rank_range(int(sum(counts)), rank, world_size, equal)
    if parts > 1:
        begin, end = part_range(begin, end, batch_size, part, parts)
    n = end - begin
    per_stream = math.ceil(math.ceil(n / batch_size) / streams) * batch_size if n else 0
    plans = []
    for v in range(streams):
        lo = min(begin + v * per_stream, end)
        hi = min(lo + per_stream, end)
        plans.append(StreamPlan(
            index=v, slices=tuple(_slices(counts, order, lo, hi)), samples=hi - lo,
            batches=math.ceil((hi - lo) / batch_size),
            seed=(seed, epoch, rank, v, _SAMPLE_ORDER) + ((part,) if parts > 1 else ())))
    return EpochPlan(tuple(plans), n, batch_size)


def buffer_shuffle(items, bufsize: int, rng: np.random.Generator):
    """Shuffle a stream through a buffer of `bufsize` items (deterministic for an rng).

    Fills the buffer, then for every new item yields a random buffered one and puts the new
    one in its place; at the end yields the rest in random order. bufsize <= 1 keeps the order.
    """
    if bufsize <= 1:
        yield from items
        return
    buf: list = []
    for item in items:
        if len(buf) < bufsize:
            buf.append(item)
            continue
        k = int(rng.integers(bufsize))
        out, buf[k] = buf[k], item
        yield out
    for k in rng.permutation(len(buf)):
        yield buf[int(k)]
