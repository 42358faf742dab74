"""One storage layer for local paths and object storage URLs (`s3://...`), through fsspec."""

from __future__ import annotations

import errno
import io
import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Mapping, TypeVar

# The storage errors are named storage.<Error> wherever storage is used; they live in sen12ms_common.errors.
from ..errors import (ShardError, StorageAccessError, StorageError, StorageNotFoundError,  # noqa: F401
                      StorageUnavailableError)
from . import s3
from .errors import redact, refuse_credentials  # noqa: F401 (redact: storage's name)
from .s3 import RetryPolicy, S3ReadStream  # noqa: F401 (RetryPolicy: storage's name)

T = TypeVar("T")


def is_remote(url: str) -> bool:
    """True for URLs with a scheme other than `file://` (s3://, gs://, memory://, ...)."""
    return "://" in str(url) and not str(url).startswith("file://")


def _local(url: str) -> str:
    u = str(url)
    return u[len("file://"):] if u.startswith("file://") else u


def is_s3(url: str) -> bool:
    return str(url).startswith(("s3://", "s3a://"))


# The standard variables that decide which store and which identity.
AWS_VARIABLES: tuple[str, ...] = (
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE", "AWS_CA_BUNDLE",
)

# One S3 filesystem per (process, AWS variables). fsspec's own instance cache is cleared in a
# forked child (converter pool, DataLoader workers), which finalises the parent's instance
# there; its finaliser closes the parent's sockets through the inherited loop and so removes
# them from the epoll set the parent shares, and the parent hangs on its next request.
# Holding the instances here keeps them alive in children; keying on the variables gives a
# changed endpoint or key a new client without `clear_instance_cache()`.
_S3_INSTANCES: dict[tuple, Any] = {}


def _s3_filesystem():
    key = (os.getpid(), tuple(os.environ.get(v) for v in AWS_VARIABLES))
    fs = _S3_INSTANCES.get(key)
    if fs is None:
        import s3fs  # optional extra (s3): imported where it is used

        # No listing cache: another process (a converter, a resumed run) may have written
        # since, and a stale listing would hide or resurrect shards. No retries of botocore's
        # (total_max_attempts 1) or of s3fs's (retries 1): `s3.retrying` is the one layer.
        fs = s3fs.S3FileSystem(use_listings_cache=False, skip_instance_cache=True,
                               config_kwargs={"retries": {"total_max_attempts": 1}})
        fs.retries = 1
        _S3_INSTANCES[key] = fs
    return fs


def filesystem(url: str):
    """(fsspec filesystem, path inside it) for a local path or a URL."""
    import fsspec.core  # sen12ms_common imports only numpy when imported

    refuse_credentials(url)

    if is_s3(url):
        return _s3_filesystem(), fsspec.core.strip_protocol(str(url))
    return fsspec.core.url_to_fs(str(url))


def _remote(url: str, fn: Callable[[Any, str], T], retry: RetryPolicy | None = None) -> T:
    """fn(fs, path) for a URL, with retries and one-line errors on object stores."""
    fs, path = filesystem(url)
    return s3.retrying(str(url), lambda: fn(fs, path), retry)


def join(base: str, *parts: str) -> str:
    base = str(base)
    if not is_remote(base):
        return str(Path(_local(base)).joinpath(*parts))
    return "/".join([base.rstrip("/")] + [p.strip("/") for p in parts])


def basename(url: str) -> str:
    return str(url).rstrip("/").rsplit("/", 1)[-1]


def exists(url: str) -> bool:
    """True for a file or object, a folder, a bucket, or a prefix with objects under it."""
    if not is_remote(url):
        return os.path.exists(_local(url))
    return _remote(url, lambda fs, path: fs.exists(path))


def makedirs(url: str) -> None:
    if not is_remote(url):
        os.makedirs(_local(url), exist_ok=True)
    # Object stores have no folders: a key's prefix exists once an object is written under it.


def open_read(url: str, expected_size: int | None = None, retry: RetryPolicy | None = None) -> BinaryIO:
    """Open for reading (buffered, seekable).

    With `expected_size` (a shard's bytes from the manifest) a file or object of another size
    raises `ShardError` before a byte is read, so a truncated shard can never pass for a
    shorter one. On S3 the stream resumes broken transfers (`sen12ms_common.storage.s3.S3ReadStream`).
    """
    if not is_remote(url):
        f = open(_local(url), "rb")
        if expected_size is not None:
            got = os.fstat(f.fileno()).st_size
            if got != expected_size:
                f.close()
                what = "truncated" if got < expected_size else "larger than expected"
                raise ShardError(redact(f"{url}: file is {got} bytes, expected {expected_size} ({what}; "
                                        "rewritten or damaged?)"))
        return f
    if is_s3(url):
        fs, path = filesystem(url)
        return io.BufferedReader(S3ReadStream(str(url), fs, path, expected_size, retry), buffer_size=1 << 20)
    f = _remote(url, lambda fs, path: fs.open(path, "rb"), retry)
    if expected_size is not None and f.size != expected_size:
        f.close()
        raise ShardError(redact(f"{url}: object is {f.size} bytes, expected {expected_size}"))
    return f


def read_bytes(url: str) -> bytes:
    with open_read(url) as f:
        return f.read()


def read_text(url: str) -> str:
    return read_bytes(url).decode("utf-8")


def listdir(url: str) -> list[str]:
    """Names (not paths) of the files directly inside a folder or under a prefix."""
    return sorted(sizes(url))


def sizes(url: str) -> dict[str, int]:
    """Name -> bytes of the files directly inside a folder or under a prefix (one listing)."""
    if not is_remote(url):
        p = Path(_local(url))
        return {c.name: c.stat().st_size for c in p.iterdir() if c.is_file()} if p.is_dir() else {}

    def ls(fs, path: str) -> dict[str, int]:
        try:
            entries = fs.ls(path.rstrip("/"), detail=True, refresh=True)
        except FileNotFoundError as exc:
            if s3.error_code(exc) == "NoSuchBucket":  # a typo in the bucket is not an empty folder
                raise
            return {}
        return {basename(e["name"]): int(e.get("size") or 0) for e in entries if e.get("type") == "file"}

    return _remote(url, ls)


def find(url: str) -> list[str]:
    """Every file below a folder or prefix, as sorted paths relative to it ('/'-separated)."""
    if not is_remote(url):
        root = _local(url)
        out = []
        for dirpath, dirnames, filenames in os.walk(root):
            rel = os.path.relpath(dirpath, root)
            out += [name if rel == "." else f"{rel}/{name}".replace(os.sep, "/") for name in filenames]
        return sorted(out)

    def walk(fs, path: str) -> list[str]:
        base = path.rstrip("/")
        return sorted(p[len(base) + 1:] for p in fs.find(base) if p.startswith(base + "/"))

    return _remote(url, walk)


def find_sizes(url: str) -> dict[str, int]:
    """Every file below a folder or prefix -> its bytes, as paths relative to it ('/'-separated),
    from one listing (one paginated request on object stores); {} for a folder that is not there."""
    if not is_remote(url):
        root = _local(url)
        out: dict[str, int] = {}
        for dirpath, _, filenames in os.walk(root):
            rel = os.path.relpath(dirpath, root)
            for name in filenames:
                path = os.path.join(dirpath, name)
                if os.path.isfile(path):  # not a dangling link, a socket or a FIFO
                    out[name if rel == "." else f"{rel}/{name}".replace(os.sep, "/")] = os.path.getsize(path)
        return out

    def walk(fs, path: str) -> dict[str, int]:
        base = path.rstrip("/")
        try:
            found = fs.find(base, detail=True)
        except FileNotFoundError:
            return {}
        return {p[len(base) + 1:]: int(info.get("size") or 0) for p, info in found.items()
                if p.startswith(base + "/") and info.get("type", "file") == "file"}

    return _remote(url, walk)


def remove(url: str) -> None:
    if not is_remote(url):
        try:
            os.unlink(_local(url))
        except FileNotFoundError:
            pass
        return

    def rm(fs, path: str) -> None:
        try:
            fs.rm_file(path)
        except FileNotFoundError:
            pass

    _remote(url, rm)


def size(url: str) -> int:
    if not is_remote(url):
        return os.path.getsize(_local(url))
    return int(_remote(url, lambda fs, path: fs.size(path)))


def temporary_name(name: str, owner: str | None = None) -> str:
    """The hidden name a local write of `name` goes through: `.<name>.tmp-<owner>-<random>`,
    where owner is the process id unless the caller names itself (the converter: its lock)."""
    return f".{name}.tmp-{owner or os.getpid()}-{uuid.uuid4().hex[:8]}"


@contextmanager
def atomic_open(url: str, part_size: int | None = None, owner: str | None = None) -> Iterator[BinaryIO]:
    """Open `url` for writing so that it appears only complete, or not at all.

    Local files are written to a hidden temporary name beside the target (`temporary_name`),
    flushed to disk and renamed; object stores stream a multipart upload (parts of `part_size` bytes, default
    s3fs's 50 MiB, at least 5 MiB; one PUT for smaller files) that is completed on close, and an
    error aborts it. A failure leaves no partial file under the final name.
    """
    if not is_remote(url):
        target = Path(_local(url))
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(temporary_name(target.name, owner))
        f = None
        try:  # opened inside: a Ctrl-C right after the open still removes the temporary
            f = open(tmp, "wb")
            yield f
            f.flush()
            os.fsync(f.fileno())
            f.close()
            os.replace(tmp, target)
        except BaseException:
            try:
                if f is not None:
                    f.close()
            except OSError:
                pass  # on a full disk, flushing the rest fails again: the first error is the one to report
            tmp.unlink(missing_ok=True)
            raise
        return
    yield from _atomic_open_remote(url, part_size)


def _atomic_open_remote(url: str, part_size: int | None) -> Iterator[BinaryIO]:
    fs, path = filesystem(url)
    try:  # no request yet: the first part or the close sends one
        f = s3.open_write(url, fs, path, part_size) if is_s3(url) else fs.open(path, "wb")
    except Exception as exc:
        raise s3.classify(url, exc).error from exc
    try:
        yield f
        f.close()  # uploads the rest, then completes the multipart upload (or one PUT if small)
    except BaseException as exc:
        try:
            f.discard()  # aborts the multipart upload: nothing becomes visible
        except Exception:
            pass  # the server may be gone; an unfinished upload stays invisible regardless
        f.closed = True  # keep fsspec's __del__ from committing what is left
        failure = s3.classify(url, exc) if isinstance(exc, Exception) and s3.is_storage_failure(exc) else None
        if failure is not None:
            raise failure.error from exc
        raise


def write_files(folder: str, contents: Mapping[str, bytes]) -> list[str]:
    """Write whole files (name -> bytes) into a folder, created if need be; each atomically."""
    makedirs(folder)
    urls = []
    for name, data in contents.items():
        urls.append(join(folder, name))
        write_bytes(urls[-1], data)
    return urls


def write_bytes(url: str, data: bytes, owner: str | None = None) -> None:
    """Write a whole file atomically (on object stores each request of the upload is retried)."""
    with atomic_open(url, owner=owner) as f:
        f.write(data)


def write_text(url: str, text: str, owner: str | None = None) -> None:
    write_bytes(url, text.encode("utf-8"), owner)


def create_text(url: str, text: str, owner: str | None = None) -> None:
    """Write a file of a new name (no file has it), complete or not at all, and locally without a
    visible temporary where the system has unnamed files (Linux O_TMPFILE): a kill half-way leaves
    nothing. Elsewhere (and on object stores, which need none) as `write_text`."""
    if is_remote(url) or not hasattr(os, "O_TMPFILE") or not os.path.isdir("/proc/self/fd"):
        return write_text(url, text, owner)
    target = Path(_local(url))
    folder = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fd = os.open(".", os.O_TMPFILE | os.O_WRONLY, 0o666, dir_fd=folder)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise
            return write_text(url, text, owner)  # a file system without unnamed files
        with open(fd, "wb") as f:
            f.write(text.encode("utf-8"))
            f.flush()
            os.fsync(fd)
            # With a folder fd, os.link is linkat(AT_SYMLINK_FOLLOW): it links the file behind the fd.
            os.link(f"/proc/self/fd/{fd}", target.name, dst_dir_fd=folder)
    finally:
        os.close(folder)
