"""Local shards mapped read-only: their members are views of the page cache, read with no copy
and held by nothing but the samples that use them."""

from __future__ import annotations

import io
import mmap
from typing import BinaryIO

# Linux: the whole file's pages are mapped in one call instead of a fault per 64 KiB.
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)


def map_file(f: BinaryIO, whole: bool = True) -> memoryview | None:
    """A read-only view of all of open file `f`, or None where it cannot be mapped (a remote
    stream, an empty file, a file system without mmap). `whole`: every page is about to be
    read (its pages are mapped at once).

    The mapping lives while any view of it does. Reading a page past the end of a file cut
    short in place since ends the process (SIGBUS): `cut_short` tells before a sample is decoded;
    the converter replaces files by renaming, which a mapping survives."""
    try:
        fd = f.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        return None
    flags = mmap.MAP_SHARED | (_POPULATE if whole else 0)
    try:
        return memoryview(mmap.mmap(fd, 0, flags=flags, prot=mmap.PROT_READ))
    except (OSError, ValueError):
        return None


def cut_short(view: memoryview) -> str | None:
    """Why the bytes of `view` can no longer be read, if it is a view of a mapping whose file has
    been cut short in place since it was mapped; None otherwise (any other view as well)."""
    m = view.obj
    if not isinstance(m, mmap.mmap):
        return None
    try:
        now = m.size()  # the file's size now, not the mapping's
    except (OSError, ValueError):
        return None
    if now >= len(m):
        return None
    return f"the shard was cut short while it was read ({now} bytes now, {len(m)} when opened; rewritten in place?)"
