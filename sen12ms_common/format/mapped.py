"""Files mapped read-only: views of the page cache, read with no copy. The loaders do not map
shards (a shard cut short in place would end the process with SIGBUS, one rewritten in place
would change under the decoder: docs/guarantees.md); the bench's limit rows and tests do."""

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
    short in place since ends the process (SIGBUS): map only files nobody changes meanwhile."""
    try:
        fd = f.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        return None
    flags = mmap.MAP_SHARED | (_POPULATE if whole else 0)
    try:
        return memoryview(mmap.mmap(fd, 0, flags=flags, prot=mmap.PROT_READ))
    except (OSError, ValueError):
        return None
