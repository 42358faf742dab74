"""One storage layer for local paths and object storage URLs (`s3://...`), through fsspec.

Everything that reads or writes shards, manifests and reports goes through here, so that a
local folder and a bucket behave the same: files appear only complete (`atomic_open`), and a
path is always a string (a local path or a URL).
"""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator


def is_remote(url: str) -> bool:
    """True for URLs with a scheme other than `file://` (s3://, gs://, memory://, ...)."""
    return "://" in str(url) and not str(url).startswith("file://")


def _local(url: str) -> str:
    u = str(url)
    return u[len("file://"):] if u.startswith("file://") else u


def filesystem(url: str):
    """(fsspec filesystem, path inside it) for a local path or a URL."""
    import fsspec.core

    return fsspec.core.url_to_fs(str(url))


def join(base: str, *parts: str) -> str:
    base = str(base)
    if not is_remote(base):
        return str(Path(_local(base)).joinpath(*parts))
    return "/".join([base.rstrip("/")] + [p.strip("/") for p in parts])


def basename(url: str) -> str:
    return str(url).rstrip("/").rsplit("/", 1)[-1]


def exists(url: str) -> bool:
    if not is_remote(url):
        return os.path.exists(_local(url))
    fs, path = filesystem(url)
    return fs.exists(path)


def makedirs(url: str) -> None:
    if not is_remote(url):
        os.makedirs(_local(url), exist_ok=True)
    # Object stores have no folders: a key's prefix exists once an object is written under it.


def open_read(url: str) -> BinaryIO:
    if not is_remote(url):
        return open(_local(url), "rb")
    fs, path = filesystem(url)
    return fs.open(path, "rb")


def read_bytes(url: str) -> bytes:
    with open_read(url) as f:
        return f.read()


def read_text(url: str) -> str:
    return read_bytes(url).decode("utf-8")


def listdir(url: str) -> list[str]:
    """Names (not paths) of the files directly inside a folder or under a prefix."""
    if not is_remote(url):
        p = Path(_local(url))
        return sorted(c.name for c in p.iterdir() if c.is_file()) if p.is_dir() else []
    fs, path = filesystem(url)
    try:
        entries = fs.ls(path, detail=True, refresh=True)
    except FileNotFoundError:
        return []
    return sorted(basename(e["name"]) for e in entries if e.get("type") == "file")


def remove(url: str) -> None:
    if not is_remote(url):
        try:
            os.unlink(_local(url))
        except FileNotFoundError:
            pass
        return
    fs, path = filesystem(url)
    if fs.exists(path):
        fs.rm(path)


def size(url: str) -> int:
    if not is_remote(url):
        return os.path.getsize(_local(url))
    fs, path = filesystem(url)
    return int(fs.size(path))


@contextmanager
def atomic_open(url: str) -> Iterator[BinaryIO]:
    """Open `url` for writing so that it appears only complete, or not at all.

    Local files are written to a hidden temporary name beside the target, flushed to disk and
    renamed; object stores upload (multipart for large files) and commit on close, and an
    error aborts the upload. A failure leaves no partial file under the final name.
    """
    if not is_remote(url):
        target = Path(_local(url))
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            with open(tmp, "wb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return
    fs, path = filesystem(url)
    f = fs.open(path, "wb")
    try:
        yield f
    except BaseException:
        discard = getattr(f, "discard", None)
        if discard is not None:
            discard()  # aborts the multipart upload: nothing becomes visible
        raise
    f.close()


def write_bytes(url: str, data: bytes) -> None:
    """Write a whole file atomically."""
    with atomic_open(url) as f:
        f.write(data)


def write_text(url: str, text: str) -> None:
    write_bytes(url, text.encode("utf-8"))


def remove_stale_temporaries(url: str) -> int:
    """Delete temporary files an interrupted local write left in a folder; returns how many."""
    if is_remote(url):
        return 0  # an aborted upload leaves nothing visible
    p = Path(_local(url))
    stale = [c for c in p.glob(".*.tmp-*") if c.is_file()] if p.is_dir() else []
    for c in stale:
        c.unlink(missing_ok=True)
    return len(stale)
