"""Walk the samples of a tar stream in large reads.

Python's `tarfile` in stream mode (what webdataset's tar iterator uses) reads 10 KiB at a time and
joins the pieces of every member again; on a shard of 1 MB samples that costs more than
decompressing them. Here the stream is read in chunks of `chunk` bytes (a member larger than what
is buffered is read straight into its own buffer), every byte is handed to `on_bytes` once (to
hash it, for instance), headers are parsed by `tarfile.TarInfo.frombuf`, and members come out as
read-only memoryviews, without a copy where they lie inside one chunk. Grouping follows webdataset's convention: the key
of `a.b.c` is `a`, its extension `b.c` (lower-cased).

Supported: ustar, GNU and pax archives of regular files (the GNU long names and pax `path`
records of other writers are honoured); directories, links and other entries are skipped. The
archive ends at its first zero block; what follows is read (and handed to `on_bytes`) but not
parsed. Damage ends in `tarfile.ReadError` (or the `ValueError` of `check_name`) with the offset.
"""

from __future__ import annotations

import tarfile
from typing import BinaryIO, Callable, Iterator

import numpy as np

BLOCK = tarfile.BLOCKSIZE
_FILE_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)


class _Blocks:
    """Exact byte counts from a stream: small pieces are zero-copy views of one `chunk`-byte
    read, a piece larger than what is buffered is read straight into its own buffer."""

    def __init__(self, f: BinaryIO, chunk: int, on_bytes: Callable[[memoryview], None] | None) -> None:
        self.f, self.chunk, self.on_bytes = f, chunk, on_bytes
        self.readinto = getattr(f, "readinto", None)
        self.buf, self.pos = memoryview(b""), 0
        self.offset = 0  # stream offset of buf[pos]

    def _seen(self, data: memoryview) -> None:
        if self.on_bytes is not None:
            self.on_bytes(data)

    def _refill(self) -> bool:
        data = self.f.read(self.chunk)
        self.buf, self.pos = memoryview(data), 0
        self._seen(self.buf)
        return bool(data)

    def _into(self, out: memoryview) -> int:
        """Fill `out` from the stream; returns the bytes filled (fewer only at the end)."""
        got = 0
        while got < len(out):
            if self.readinto is not None:
                k = self.readinto(out[got:])
            else:
                data = self.f.read(len(out) - got)
                k = len(data)
                out[got:got + k] = data
            if not k:
                break
            self._seen(out[got:got + k])
            got += k
        return got

    def take(self, n: int) -> memoryview | None:
        """A read-only view of the next n bytes; None if the stream ends first."""
        have = len(self.buf) - self.pos
        if have >= n:
            out = self.buf[self.pos:self.pos + n]
            self.pos += n
            self.offset += n
            return out
        out = memoryview(np.empty(n, dtype=np.uint8)).cast("B")  # not zero-filled, unlike bytearray
        out[:have] = self.buf[self.pos:]
        got = have
        self.buf, self.pos = memoryview(b""), 0
        if n - got >= self.chunk:
            got += self._into(out[got:])
        else:
            while got < n and self._refill():
                k = min(n - got, len(self.buf))
                out[got:got + k] = self.buf[:k]
                self.pos = k
                got += k
        if got < n:
            return None
        self.offset += n
        return out.toreadonly()

    def skip(self, n: int) -> bool:
        """Pass over n bytes (still handed to on_bytes); False if the stream ends first."""
        left = n
        while True:
            have = len(self.buf) - self.pos
            if have >= left:
                self.pos += left
                self.offset += n
                return True
            left -= have
            if not self._refill():
                return False

    def drain(self) -> None:
        while self._refill():
            pass
        self.buf = memoryview(b"")


def _pax_path(data: bytes) -> str | None:
    """The `path` record of a pax extended header, if any."""
    path = None
    pos = 0
    while pos < len(data) and data[pos:pos + 1] != b"\0":
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        record = data[space + 1:pos + length - 1]  # without the trailing newline
        key, _, value = record.partition(b"=")
        if key == b"path":
            path = value.decode("utf-8", "surrogateescape")
        pos += length
    return path


def iter_members(f: BinaryIO, wanted: Callable[[str], bool], *, check_name: Callable[[str], None] | None = None,
                 chunk: int = 1 << 20, on_bytes: Callable[[memoryview], None] | None = None,
                 drain: bool = False) -> Iterator[tuple[str, memoryview | None]]:
    """(name, data) of every regular file in the archive; data (a read-only memoryview) is None
    where `wanted(name)` is false.

    `check_name` sees every entry name first (and may raise). With `drain`, the stream is read to
    its end after the archive's end (so that `on_bytes` sees every byte)."""
    blocks = _Blocks(f, chunk, on_bytes)
    long_name: str | None = None
    while True:
        at = blocks.offset
        header = blocks.take(BLOCK)
        if header is None:
            raise tarfile.ReadError(f"unexpected end of data at byte {at} (no end-of-archive marker)")
        try:
            info = tarfile.TarInfo.frombuf(header.tobytes(), "utf-8", "surrogateescape")
        except tarfile.EOFHeaderError:
            break
        except tarfile.HeaderError as exc:
            raise tarfile.ReadError(f"bad tar header at byte {at} ({exc})") from None
        padded = -(-info.size // BLOCK) * BLOCK
        if info.type in (tarfile.GNUTYPE_LONGNAME, tarfile.XHDTYPE, tarfile.XGLTYPE):
            data = blocks.take(padded)
            if data is None:
                raise tarfile.ReadError(f"unexpected end of data in the extended header at byte {at}")
            if info.type == tarfile.GNUTYPE_LONGNAME:
                long_name = data[:info.size].tobytes().rstrip(b"\0").decode("utf-8", "surrogateescape")
            elif info.type == tarfile.XHDTYPE:
                try:
                    long_name = _pax_path(data[:info.size].tobytes()) or long_name
                except ValueError:
                    raise tarfile.ReadError(f"bad pax header at byte {at}") from None
            continue
        name = long_name if long_name is not None else info.name
        long_name = None
        if check_name is not None:
            check_name(name)
        if info.type not in _FILE_TYPES:
            if not blocks.skip(padded):
                raise tarfile.ReadError(f"unexpected end of data in {name!r} at byte {at}")
            continue
        if wanted(name):
            data = blocks.take(padded)
            if data is None:
                raise tarfile.ReadError(f"unexpected end of data in {name!r} at byte {at}")
            yield name, data[:info.size] if padded != info.size else data
        else:
            if not blocks.skip(padded):
                raise tarfile.ReadError(f"unexpected end of data in {name!r} at byte {at}")
            yield name, None
    if drain:
        blocks.drain()


def split_name(name: str) -> tuple[str, str]:
    """webdataset's key / extension split: `a.b.c` -> (`a`, `b.c`), the extension lower-cased."""
    slash = name.rfind("/") + 1
    dot = name.find(".", slash)
    if dot < 0:
        return name, ""
    return name[:dot], name[dot + 1:].lower()


def iter_samples(f: BinaryIO, wanted_exts: frozenset[str] | set[str], **kw
                 ) -> Iterator[tuple[str, dict[str, memoryview]]]:
    """(key, {ext: data}) per sample, consecutive members of one key grouped; only wanted
    extensions are read into memory. A sample with none of them still counts (with an empty
    dict), so positions in the shard are exact. A key repeated with the same extension is an
    error."""
    key: str | None = None
    members: dict[str, memoryview] = {}
    seen: set[str] = set()
    for name, data in iter_members(f, lambda n: split_name(n)[1] in wanted_exts, **kw):
        k, ext = split_name(name)
        if k != key:
            if key is not None:
                yield key, members
            key, members, seen = k, {}, set()
        if ext in seen:
            raise ValueError(f"{name}: the sample {k} holds {ext} twice")
        seen.add(ext)
        if data is not None:
            members[ext] = data
    if key is not None:
        yield key, members
