"""Checksums of shard bytes: sha256 (the archival digest `convert verify` checks) and xxh3-128
(the fast one the loaders check while streaming, about 30x cheaper per byte)."""

from __future__ import annotations

import hashlib
from typing import BinaryIO

import xxhash

FAST = "xxh3_128"  # manifest key of the fast checksum


class Digests:
    """Running digests of a byte stream, and its length; `sha256` and / or the fast one."""

    def __init__(self, sha256: bool = True, fast: bool = True) -> None:
        self._sha = hashlib.sha256() if sha256 else None
        self._fast = xxhash.xxh3_128() if fast else None
        self.bytes = 0

    def update(self, data: bytes | memoryview) -> None:
        if self._sha is not None:
            self._sha.update(data)
        if self._fast is not None:
            self._fast.update(data)
        self.bytes += len(data)

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest() if self._sha is not None else ""

    @property
    def fast(self) -> str:
        return self._fast.hexdigest() if self._fast is not None else ""


class HashingWriter:
    """A write-only file that digests what passes through it."""

    def __init__(self, f: BinaryIO) -> None:
        self._f, self.digests = f, Digests()

    def write(self, b: bytes) -> int:
        self._f.write(b)
        self.digests.update(b)
        return len(b)

    def tell(self) -> int:
        return self.digests.bytes


def digests_of(f: BinaryIO, sha256: bool = True, fast: bool = True, chunk: int = 1 << 20) -> Digests:
    """The digests of everything left in an open binary file."""
    d = Digests(sha256, fast)
    for block in iter(lambda: f.read(chunk), b""):
        d.update(block)
    return d
