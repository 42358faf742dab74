"""Object storage (S3 protocol) behind `storage`: the one retry layer, resuming reads, retried multipart writes."""

from __future__ import annotations

import io
import random
import sys
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, TypeVar

from ..errors import ShardError, StorageError, StorageUnavailableError
from .redaction import redact
from .s3errors import _EndedEarly, Failure, classify, error_code, is_storage_failure  # noqa: F401 (storage's names)

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently object-store requests are tried again (the only retries:
    botocore's and s3fs's own are off). `attempts` counts consecutive failures without progress;
    waits grow from `backoff` seconds, doubling up to `max_backoff` (0.5 + 1 + 2 + 4 + 8 s)."""

    attempts: int = 6
    backoff: float = 0.5
    max_backoff: float = 8.0


def backoff_delay(retry: RetryPolicy, failures: int) -> float:
    """Seconds to wait after the n-th consecutive failure (exponential, capped, +-25 % jitter)."""
    base = min(retry.max_backoff, retry.backoff * 2 ** (failures - 1))
    # Jitter spreads the retries of many loader workers that lost the same server.
    return base * random.uniform(0.75, 1.25)


def give_up(url: str, failure: Failure, attempts: int, since: float) -> StorageError:
    msg = str(failure.error)
    prefix = f"{url}: "
    reason = msg[len(prefix):] if msg.startswith(prefix) else msg
    return StorageUnavailableError(
        f"{url}: {reason}; gave up after {attempts} attempts over {time.monotonic() - since:.1f} s", url)


def retrying(url: str, fn: Callable[[], T], retry: RetryPolicy | None = None) -> T:
    """fn(), tried again after transient errors; raises a one-line StorageError otherwise."""
    retry = retry or RetryPolicy()
    since, failures = time.monotonic(), 0
    while True:
        try:
            return fn()
        except Exception as exc:
            failure = classify(url, exc)
            if not failure.transient:
                raise failure.error from exc
            failures += 1
            if failures >= retry.attempts:
                raise give_up(url, failure, failures, since) from exc
            time.sleep(backoff_delay(retry, failures))


# --- reading ----------------------------------------------------------------------------------

async def _read_up_to(body: Any, n: int) -> tuple[bytes, Exception | None]:
    """Up to n bytes of a streaming body (one hop to the IO loop), and the error that
    stopped it early, if any: bytes that arrived before a connection broke are kept."""
    parts, got = [], 0
    try:
        while got < n:
            chunk = await body.read(n - got)
            if not chunk:
                break
            parts.append(chunk)
            got += len(chunk)
    except Exception as exc:
        return b"".join(parts), exc
    return b"".join(parts), None


async def _close_body(body: Any) -> None:
    body.close()


class S3ReadStream(io.RawIOBase):
    """Read one object from start to end, resuming where a transfer broke off.

    The first GET learns size and ETag; every later GET asks for `Range: bytes=<pos>-` with
    `If-Match: <etag>`. Transient errors (see `classify`) and bodies that end early are retried
    with backoff, counting only failures without progress in between; other errors raise at once.
    `expected_size` (the manifest's) is checked against the object's size before any byte is
    returned, so a truncated shard fails up front instead of yielding fewer samples.
    Wrap it in `io.BufferedReader` (as `storage.open_read` does) for small reads.
    """

    def __init__(self, url: str, fs: Any, path: str, expected_size: int | None = None,
                 retry: RetryPolicy | None = None) -> None:
        super().__init__()
        self.url, self._fs, self._retry = url, fs, retry or RetryPolicy()
        self._bucket, self._key, self._version = fs.split_path(path)
        self._pos, self._body = 0, None
        self._etag: str | None = None
        self.size = -1
        self.resumes = 0  # requests that continued an interrupted transfer (for tests and logs)
        retrying(url, self._open_body, self._retry)
        if expected_size is not None and self.size != expected_size:
            self.close()
            what = "truncated" if self.size < expected_size else "larger than expected"
            raise ShardError(redact(f"{url}: object is {self.size} bytes, expected {expected_size} ({what}; "
                                    "rewritten or damaged?)"))

    def _sync(self, coro_fn: Callable, *args: Any, **kwargs: Any) -> Any:
        from fsspec.asyn import sync  # sen12ms_common imports only numpy when imported

        return sync(self._fs.loop, coro_fn, *args, **kwargs)

    def _open_body(self) -> None:
        kw: dict[str, Any] = {"Bucket": self._bucket, "Key": self._key}
        if self._version:
            kw["VersionId"] = self._version
        if self._etag is not None:  # a resume: the rest of the same object version
            if self._pos >= self.size:
                return
            kw["Range"] = f"bytes={self._pos}-"
            if self._etag:
                kw["IfMatch"] = self._etag
        resp = self._sync(self._get_object, kw)
        length = int(resp.get("ContentLength", -1))
        if self._etag is None:
            self.size = length
            self._etag = resp.get("ETag") or ""  # a store without ETags: resume without the guard
        else:
            self.resumes += 1
        self._body = resp["Body"]

    async def _get_object(self, kw: dict[str, Any]) -> dict[str, Any]:
        # The client itself, not s3fs's call_s3 (which re-raises errors as bare OSErrors):
        # `classify` wants botocore's error codes and status.
        s3 = await self._fs.set_session()
        return await s3.get_object(**kw)

    def _drop_body(self) -> None:
        body, self._body = self._body, None
        if body is None:
            return
        if sys.is_finalizing():
            return  # fsspec's IO thread is gone at interpreter exit: waiting for it would hang
        try:
            self._sync(_close_body, body, timeout=10)
        except Exception:  # closing a broken connection may fail again; nothing to keep
            pass

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        pos = max(0, base + offset)
        if pos != self._pos:
            self._drop_body()
            self._pos = pos
        return pos

    def readinto(self, b: Any) -> int:
        if self.closed:
            raise ValueError(f"{self.url}: read from a closed stream")
        want = min(len(b), self.size - self._pos)
        if want <= 0:
            return 0
        # Failures count only without progress in between: each call starts afresh.
        return retrying(self.url, lambda: self._read_once(b, want), self._retry)

    def _read_once(self, b: Any, want: int) -> int:
        """One attempt: (re)open the body where the last one stopped and read up to `want` bytes."""
        try:
            if self._body is None:
                self._open_body()
            data, error = self._sync(_read_up_to, self._body, want)
            if data:
                n = len(data)
                memoryview(b)[:n] = data
                self._pos += n
                if error is not None or self._pos >= self.size:
                    # Broken: the next read resumes here. Complete: hand the connection back
                    # now rather than when the reader is collected.
                    self._drop_body()
                return n
            if error is not None:
                raise error
            raise _EndedEarly(f"the transfer ended after {self._pos} of {self.size} bytes")
        except Exception:
            self._drop_body()
            raise

    def readall(self) -> bytes:
        parts = []
        while True:
            chunk = self.read(max(1 << 20, self.size - self._pos))
            if not chunk:
                return b"".join(parts)
            parts.append(chunk)

    def close(self) -> None:
        if not self.closed:
            self._drop_body()
        super().close()


# --- writing ----------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def _retrying_file_class() -> type:
    import s3fs  # optional extra (s3): imported where it is used

    class RetryingS3File(s3fs.S3File):
        """s3fs's writer whose every request (a part, the completion, an abort) goes through `retrying`."""

        def __init__(self, url: str, *args: Any, **kwargs: Any) -> None:
            self.url = url
            super().__init__(*args, **kwargs)

        def _call_s3(self, method: str, *args: Any, **kwargs: Any) -> Any:
            request = super()._call_s3
            if method == "abort_multipart_upload":
                return request(method, *args, **kwargs)  # the error path: the upload stays invisible anyway
            return retrying(self.url, lambda: request(method, *args, **kwargs))

    return RetryingS3File


def open_write(url: str, fs: Any, path: str, part_size: int | None = None) -> Any:
    """A writer for `path`: a multipart upload completed on close (one PUT if small), every
    request of it retried by `retrying`."""
    # S3 rejects parts under 5 MiB; s3fs's default part is 50 MiB.
    block = max(part_size, 5 << 20) if part_size else fs.default_block_size
    return _retrying_file_class()(url, fs, path, "wb", block_size=block,
                                  s3_additional_kwargs=dict(fs.s3_additional_kwargs),
                                  requester_pays=fs.requester_pays)
