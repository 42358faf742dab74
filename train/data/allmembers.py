"""Every member of every sample of a split, in manifest order: what `train.predict` needs besides
the model input (S2 for previews, lc for ground truth, the metadata for CRS and transform)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from sen12ms_common.format.sample import META_EXT

from .plan import ShardSlice
from .shardread import RawSample, ShardSource, read_slice


@dataclass(frozen=True)
class AllMembers(ShardSource):
    """A `ShardSource` that keeps every member of the layout and the metadata."""

    @property
    def wanted(self) -> frozenset[str]:
        return frozenset(self.layout.member_exts()) | {META_EXT}


def read_split(src: AllMembers) -> Iterator[RawSample]:
    """(key, members, shard name) of every sample, shard by shard, checked as the loaders check."""
    for i, entry in enumerate(src.entries):
        yield from read_slice(src, ShardSlice(i, 0, entry.samples))
