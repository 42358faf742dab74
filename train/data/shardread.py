"""Reading shards: the raw (still compressed) samples of a shard slice, checked while streaming.

Only the members an input needs are kept; the shard's xxh3-128 and sample count are compared
with the manifest at its end (the whole shard is read then), and no member larger than the
layout allows is ever allocated.

Local shards are read, not mapped: a member is copied into private memory and hashed there, so
that the bytes a sample is decoded from are the bytes that were checked (a shard rewritten in
place after its check changes nothing already read), and a shard cut short in place is a short
read (one line naming it), never a page fault past its end (SIGBUS, the end of the process).
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from sen12ms_common.errors import ShardError
from sen12ms_common.format import tarstream
from sen12ms_common.format.checksums import Digests
from sen12ms_common.format.manifest import ShardEntry
from sen12ms_common.format.sample import LABEL_EXT, SampleLayout, check_member_name
from sen12ms_common.storage import files as storage
from sen12ms_common.vocab.bands import BandRef, modalities_of
from sen12ms_common.vocab.igbp import LabelRule

from .plan import ShardSlice

RawSample = tuple[str, dict, str]  # (key, members ext -> bytes, shard name)


@dataclass(frozen=True)
class ShardSource:
    """Everything a reader needs to read a split; small and picklable (it crosses to workers)."""

    root: str
    entries: tuple[ShardEntry, ...]
    layout: SampleLayout
    bands: tuple[BandRef, ...]
    rule: LabelRule
    verify: bool
    skip_bad: bool
    mask: str | None = None  # the member masks come from (dfc, lc); None: scene labels
    savanna: bool = True  # masks: keep the savanna class

    @property
    def modalities(self) -> tuple[str, ...]:
        return modalities_of(self.bands)

    @property
    def wanted(self) -> frozenset[str]:
        exts = {LABEL_EXT} if self.mask is None else set()
        for m in self.modalities + ((self.mask,) if self.mask else ()):
            exts.add(self.layout.ext(m))
            if self.layout.chunked:
                exts.add(self.layout.sizes_ext(m))
        return frozenset(exts)

    def url(self, shard: int) -> str:
        return storage.join(self.root, self.entries[shard].name)


def _open(url: str, expected_size: int | None):
    try:
        # With verification a file of another size fails here, before a byte is read.
        return storage.open_read(url, expected_size=expected_size)
    except storage.StorageError as exc:
        raise ShardError(str(exc)) from exc
    except FileNotFoundError as exc:
        raise ShardError(f"{url}: shard is missing") from exc
    except OSError as exc:
        raise ShardError(f"{url}: cannot open ({exc})") from exc


def read_slice(src: ShardSource, sl: ShardSlice, alloc: Callable[[int], memoryview] | None = None
               ) -> Iterator[RawSample]:
    """Raw samples [start, stop) of one shard, their members read into buffers from `alloc`.
    Verifying, the whole shard is read (each piece hashed in the buffer it was read into) and its
    samples come out only once its checksum has matched."""
    entry = src.entries[sl.shard]
    url = src.url(sl.shard)
    digests = Digests(sha256=False) if src.verify else None
    held: list[RawSample] = []
    pos = 0
    with _open(url, entry.bytes if src.verify else None) as raw:
        try:
            samples = tarstream.iter_samples(raw, src.wanted, check_name=check_member_name,
                                             on_bytes=digests.update if digests else None, drain=src.verify,
                                             max_size=src.layout.member_limit(), alloc=alloc)
            for key, members in samples:
                if pos >= sl.stop and digests is None:
                    break  # nothing left to check: stop reading early
                if sl.start <= pos < sl.stop:
                    if digests is None:
                        yield key, members, entry.name
                    else:
                        held.append((key, members, entry.name))
                pos += 1
        except storage.StorageError as exc:
            raise ShardError(f"{exc} (after {pos} samples)") from exc
        except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
            raise ShardError(f"{url}: unreadable after {pos} samples ({type(exc).__name__.lstrip('_')}: {exc})") from exc
    if pos < sl.stop:
        raise ShardError(f"{url}: ends after {pos} samples; the manifest says {entry.samples}")
    if digests is not None:
        if pos != entry.samples:
            raise ShardError(f"{url}: holds {pos} samples; the manifest says {entry.samples}")
        problem = mismatch(url, entry, digests)
        if problem:
            raise ShardError(problem)
    yield from held


def mismatch(url: str, entry: ShardEntry, digests: Digests) -> str | None:
    """Why a shard whose bytes gave `digests` is not the one the manifest lists, or None."""
    if digests.bytes == entry.bytes and digests.fast == entry.xxh3_128:
        return None
    return (f"{url}: content does not match the manifest (xxh3-128 {digests.fast[:16]}..., {digests.bytes} bytes; "
            f"expected {entry.xxh3_128[:16]}..., {entry.bytes} bytes); rebuild it or pass --no-verify")


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
