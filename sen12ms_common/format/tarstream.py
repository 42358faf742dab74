"""Walk the samples of a tar stream, with bounded memory."""

from __future__ import annotations

import tarfile
from typing import BinaryIO, Callable, Iterator

import numpy as np

from ..errors import Sen12msError

BLOCK = tarfile.BLOCKSIZE
_FILE_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)
EXTENDED_HEADER_LIMIT = 1 << 20  # a GNU long name or pax header larger than this is damage
_CHKSUM = slice(148, 156)
# Checked bytes are read in pieces that are still in the core's cache when `on_bytes` sees
# them (docs/performance.md).
READ_STEP = 1 << 18


class _EndWithoutMarker(tarfile.ReadError, Sen12msError):
    """The stream ended between two members, without the end-of-archive blocks (a cut tar);
    `iter_samples` ends there with `until_cut`."""


def _ustar_file(header: bytes) -> tuple[str, int] | None:
    """(name, size) of a plain POSIX ustar regular-file header with a valid checksum, parsed
    in a few microseconds (what this toolbox writes); None: let `TarInfo.frombuf` decide."""
    if header[257:265] != b"ustar\x0000" or header[156:157] not in (b"0", b"\0") or header[345] != 0:
        return None
    try:
        size = int(header[124:136].rstrip(b"\0 ") or b"0", 8)
        chksum = int(header[_CHKSUM].rstrip(b"\0 ") or b"0", 8)
    except ValueError:
        return None
    if chksum != sum(header) - sum(header[_CHKSUM]) + 8 * 32 or size < 0:
        return None
    return header[:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape"), size


def _fresh(n: int) -> memoryview:
    return memoryview(np.empty(n, dtype=np.uint8))  # not zero-filled, unlike bytearray


class _Blocks:
    """Exact byte counts from a stream, read straight into buffers from `alloc` (a member costs
    one copy from the page cache or the network); every byte is handed to `on_bytes` once."""

    SCRATCH = 1 << 20

    def __init__(self, f: BinaryIO, alloc: Callable[[int], memoryview] | None,
                 on_bytes: Callable[[memoryview], None] | None) -> None:
        self.f, self.alloc, self.on_bytes = f, alloc or _fresh, on_bytes
        self.readinto = getattr(f, "readinto", None)
        self.offset = 0  # stream offset of the next byte
        self._scratch: memoryview | None = None

    def _into(self, out: memoryview) -> int:
        """Fill `out` from the stream; returns the bytes filled (fewer only at the end)."""
        got = 0
        step = len(out) if self.on_bytes is None else READ_STEP
        while got < len(out):
            if self.readinto is not None:
                k = self.readinto(out[got:got + step])
            else:
                data = self.f.read(min(step, len(out) - got))
                k = len(data)
                out[got:got + k] = data
            if not k:
                break
            if self.on_bytes is not None:
                self.on_bytes(out[got:got + k])
            got += k
        self.offset += got
        return got

    def header(self) -> bytes | None:
        """The next 512-byte block; None if the stream ends first."""
        out = memoryview(bytearray(BLOCK))
        return out.tobytes() if self._into(out) == BLOCK else None

    def take(self, n: int) -> memoryview | None:
        """A read-only view of the next n bytes; None if the stream ends first."""
        out = self.alloc(n)
        return out.toreadonly() if self._into(out) == n else None

    def skip(self, n: int) -> bool:
        """Pass over n bytes (still handed to on_bytes); False if the stream ends first."""
        if self.on_bytes is None and n and self.f.seekable():
            size = self.f.seek(0, 2)
            end = self.f.seek(min(self.offset + n, size))
            moved, self.offset = end - self.offset, end
            return moved == n
        if self._scratch is None:
            self._scratch = _fresh(self.SCRATCH)
        left = n
        while left:
            k = min(left, self.SCRATCH)
            if self._into(self._scratch[:k]) < k:
                return False
            left -= k
        return True

    def drain(self) -> None:
        while self.skip(self.SCRATCH):
            pass


class _MappedBlocks:
    """`_Blocks` over a mapped file (`sen12ms_common.format.mapped`): members are views of the mapping."""

    def __init__(self, view: memoryview, on_bytes: Callable[[memoryview], None] | None) -> None:
        self.view, self.on_bytes = view.toreadonly(), on_bytes
        self.offset = 0

    def _next(self, n: int) -> memoryview | None:
        out = self.view[self.offset:self.offset + n]
        self.offset += len(out)
        if self.on_bytes is not None and len(out):
            self.on_bytes(out)
        return out if len(out) == n else None

    def header(self) -> bytes | None:
        out = self._next(BLOCK)
        return None if out is None else out.tobytes()

    def take(self, n: int) -> memoryview | None:
        return self._next(n)

    def skip(self, n: int) -> bool:
        if self.on_bytes is None:
            end = min(self.offset + n, len(self.view))
            moved, self.offset = end - self.offset, end
            return moved == n
        return self._next(n) is not None

    def drain(self) -> None:
        self._next(len(self.view) - self.offset)


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


def iter_members(f: BinaryIO | memoryview, wanted: Callable[[str], bool], *,
                 check_name: Callable[[str], None] | None = None,
                 alloc: Callable[[int], memoryview] | None = None,
                 on_bytes: Callable[[memoryview], None] | None = None,
                 drain: bool = False, max_size: int | None = None, strict: bool = False,
                 on_member: Callable[[str, int, int], None] | None = None) -> Iterator[tuple[str, memoryview | None]]:
    """(name, data) of every regular file in the archive; data (a read-only memoryview) is None
    where `wanted(name)` is false; `alloc(n)` gives the buffer a member is read into (default:
    a fresh one). `f`: a stream, or a view of a whole archive (members are views of it).

    `check_name` sees every entry name first (and may raise); a wanted member declaring more than
    `max_size` bytes is refused; `strict`: an entry that is not a regular file is an error, not
    skipped; `on_member(name, data offset, size)` sees every regular file. With `drain`, the
    stream is read to its end after the archive's end (so that `on_bytes` sees every byte)."""
    blocks = _MappedBlocks(f, on_bytes) if isinstance(f, memoryview) else _Blocks(f, alloc, on_bytes)
    long_name: str | None = None
    while True:
        at = blocks.offset
        raw = blocks.header()
        if raw is None:
            raise _EndWithoutMarker(f"unexpected end of data at byte {at} (no end-of-archive marker)")
        plain = _ustar_file(raw) if long_name is None else None
        if plain is not None:
            name, size = plain
            yield from _member(blocks, name, size, at, wanted, check_name, max_size, on_member)
            continue
        try:
            info = tarfile.TarInfo.frombuf(raw, "utf-8", "surrogateescape")
        except tarfile.EOFHeaderError:
            break
        except tarfile.HeaderError as exc:
            raise tarfile.ReadError(f"bad tar header at byte {at} ({exc})") from None
        padded = -(-info.size // BLOCK) * BLOCK
        if info.type in (tarfile.GNUTYPE_LONGNAME, tarfile.XHDTYPE, tarfile.XGLTYPE):
            long_name = _extended_name(blocks, info, at, long_name)
            continue
        name = long_name if long_name is not None else info.name
        long_name = None
        if info.type not in _FILE_TYPES:
            if check_name is not None:
                check_name(name)
            if strict:
                raise tarfile.ReadError(f"member {name!r} is not a regular file")
            if not blocks.skip(padded):
                raise tarfile.ReadError(f"unexpected end of data in {name!r} at byte {at}")
            continue
        yield from _member(blocks, name, info.size, at, wanted, check_name, max_size, on_member)
    if drain:
        blocks.drain()


def _extended_name(blocks: _Blocks | _MappedBlocks, info: tarfile.TarInfo, at: int, name: str | None) -> str | None:
    """Read the extended header `info` (at byte `at`): the name it gives the next member (a GNU
    long name, a pax `path`), else `name`."""
    if info.size > EXTENDED_HEADER_LIMIT:
        raise tarfile.ReadError(f"extended header of {info.size} bytes at byte {at} (more than {EXTENDED_HEADER_LIMIT})")
    data = blocks.take(-(-info.size // BLOCK) * BLOCK)
    if data is None:
        raise tarfile.ReadError(f"unexpected end of data in the extended header at byte {at}")
    if info.type == tarfile.GNUTYPE_LONGNAME:
        return data[:info.size].tobytes().rstrip(b"\0").decode("utf-8", "surrogateescape")
    if info.type == tarfile.XHDTYPE:
        try:
            return _pax_path(data[:info.size].tobytes()) or name
        except ValueError:
            raise tarfile.ReadError(f"bad pax header at byte {at}") from None
    return name


def _member(blocks: _Blocks, name: str, size: int, at: int, wanted: Callable[[str], bool],
            check_name: Callable[[str], None] | None, max_size: int | None,
            on_member: Callable[[str, int, int], None] | None) -> Iterator[tuple[str, memoryview | None]]:
    if check_name is not None:
        check_name(name)
    if on_member is not None:
        on_member(name, at + BLOCK, size)
    padded = -(-size // BLOCK) * BLOCK
    if not wanted(name):
        if not blocks.skip(padded):
            raise tarfile.ReadError(f"unexpected end of data in {name!r} at byte {at}")
        yield name, None
        return
    if max_size is not None and size > max_size:
        raise tarfile.ReadError(f"{name!r} at byte {at} declares {size} bytes, more than a member can hold "
                                f"({max_size})")
    data = blocks.take(padded)
    if data is None:
        raise tarfile.ReadError(f"unexpected end of data in {name!r} at byte {at}")
    yield name, data[:size] if padded != size else data


def split_name(name: str) -> tuple[str, str]:
    """webdataset's key / extension split: `a.b.c` -> (`a`, `b.c`), the extension lower-cased."""
    slash = name.rfind("/") + 1
    dot = name.find(".", slash)
    if dot < 0:
        return name, ""
    return name[:dot], name[dot + 1:].lower()


def iter_samples(f: BinaryIO | memoryview, wanted_exts: frozenset[str] | set[str], until_cut: bool = False,
                 **kw) -> Iterator[tuple[str, dict[str, memoryview]]]:
    """(key, {ext: data}) per sample, consecutive members of one key grouped; only wanted
    extensions are read into memory. A sample with none of them still counts (with an empty
    dict), so positions in the shard are exact. A key repeated with the same extension is an
    error. A stream cut between two members (no end-of-archive blocks) is a `tarfile.ReadError`
    after the samples before the cut, or with `until_cut` just their end."""
    key: str | None = None
    members: dict[str, memoryview] = {}
    seen: set[str] = set()
    try:
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
    except _EndWithoutMarker:
        if key is not None:  # the last sample read before the cut, then the cut
            yield key, members
        if until_cut:
            return
        raise
    if key is not None:
        yield key, members
