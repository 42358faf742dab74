"""Object storage (S3 protocol) mechanics behind `storage`: retries, resumable reads, errors.

`storage` is the API; this module holds what only object stores need:

- `classify(url, exc)`: is an error of botocore / aiohttp / s3fs transient (connection reset or
  refused, timeout, a body that ends early, 5xx, throttling) or permanent (403, 404, no
  credentials), and the one line that says so, naming the URL.
- `retrying(url, fn, retry)`: calls `fn` again after transient errors, with exponential backoff.
- `S3ReadStream`: a raw read stream that resumes with range requests where a transfer broke
  off (pinned to the object's ETag, so a rewritten object is never spliced into the old one),
  and raises when the object is not the size the caller expects.
- `ShardOpener` / `gopen_s3` / `register_gopen`: the same stream for webdataset pipelines.
- `read_throughput(urls)`: MiB/s of streaming whole objects (for `make bench`).

Endpoint, region and credentials are never options of ours: s3fs builds its client through
botocore, which reads `AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_S3`, `AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`, `AWS_PROFILE`, `AWS_CONFIG_FILE`, `AWS_SHARED_CREDENTIALS_FILE`,
`AWS_DEFAULT_REGION` by itself (checked with s3fs 2026.9 / botocore 1.43). fsspec, s3fs and
botocore are imported only when a function needs them.
"""

from __future__ import annotations

import io
import random
import sys
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Iterable, Iterator, Mapping, TypeVar

from .storage import (
    RetryPolicy,
    ShardSizeError,
    StorageAccessError,
    StorageError,
    StorageNotFoundError,
    StorageUnavailableError,
)

T = TypeVar("T")

# Error codes of S3 (and of its look-alikes) that a later attempt may not see again.
_TRANSIENT_CODES = frozenset({
    "InternalError", "ServiceUnavailable", "SlowDown", "Throttling", "ThrottlingException",
    "RequestTimeout", "RequestLimitExceeded", "TooManyRequests",
    "BadDigest", "XAmzContentSHA256Mismatch", "OperationAborted",
})
_CREDENTIALS = "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"


class EndedEarly(Exception):
    """A response body that stopped before the bytes it announced (transient)."""


@dataclass(frozen=True)
class Failure:
    """What went wrong, in one line, and whether trying again may help."""

    transient: bool
    error: StorageError


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def _client_error(exc: BaseException):
    """The botocore ClientError behind an exception (s3fs re-raises them as OSError)."""
    try:
        from botocore.exceptions import ClientError
    except ImportError:  # pragma: no cover - s3fs needs botocore
        return None
    for e in _chain(exc):
        if isinstance(e, ClientError):
            return e
    return None


def error_code(exc: BaseException) -> str:
    """The S3 error code behind an exception ("NoSuchBucket", "AccessDenied", ...), or ""."""
    ce = _client_error(exc)
    return str((ce.response.get("Error", {}) or {}).get("Code", "")) if ce is not None else ""


def _first_line(exc: BaseException) -> str:
    """The whole reason of an error on one line (botocore's validation errors span several)."""
    text = " ".join(line.strip() for line in str(exc).strip().splitlines() if line.strip())
    if len(text) > 1000:
        text = text[:997] + "..."
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__


@lru_cache(maxsize=1)
def _network_errors() -> dict[str, tuple[type[BaseException], ...]]:
    """Exception types of the HTTP stack by what they mean (imported on first use)."""
    import asyncio
    import socket

    import aiohttp
    from botocore import exceptions as bex
    from botocore.parsers import ResponseParserError
    from fsspec.exceptions import FSTimeoutError
    from urllib3.exceptions import HTTPError as Urllib3Error

    return {
        "connect": (bex.EndpointConnectionError,),
        "timeout": (bex.ConnectTimeoutError, bex.ReadTimeoutError, FSTimeoutError, socket.timeout, TimeoutError,
                    asyncio.TimeoutError),
        "broken": (bex.IncompleteReadError, bex.ResponseStreamingError, bex.ConnectionClosedError,
                   aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, ConnectionError),
        "other": (bex.HTTPClientError, bex.ConnectionError, ResponseParserError, Urllib3Error),
    }


def _network_reason(exc: BaseException) -> str | None:
    """A short reason when exc is a network failure (transient), else None."""
    kinds = _network_errors()
    for e in _chain(exc):
        if isinstance(e, EndedEarly):
            return str(e)
        if isinstance(e, kinds["connect"]):
            endpoint = getattr(e, "kwargs", {}).get("endpoint_url", "the endpoint")
            return f"cannot connect to {endpoint} (is the server at AWS_ENDPOINT_URL up?)"
        if isinstance(e, kinds["timeout"]):
            return "timed out"
        if isinstance(e, kinds["broken"]):
            return "the connection broke off during the transfer"
        if isinstance(e, kinds["other"]):
            return _first_line(e)
    return None


def classify(url: str, exc: BaseException) -> Failure:
    """Turn any error of a request for `url` into a one-line StorageError, transient or not."""
    if isinstance(exc, StorageError):
        return Failure(isinstance(exc, StorageUnavailableError), exc)
    ce = _client_error(exc)
    if ce is not None:
        err = ce.response.get("Error", {}) or {}
        code = str(err.get("Code", ""))
        status = int(ce.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if code in _TRANSIENT_CODES or status >= 500 or status == 429:
            return Failure(True, StorageUnavailableError(f"{url}: server error {status or ''} {code}".rstrip()
                                                         + (f" ({err['Message']})" if err.get("Message") else ""),
                                                         url))
        if code == "SignatureDoesNotMatch":
            return Failure(False, StorageAccessError(
                f"{url}: access denied: the secret key does not match (check {_CREDENTIALS})", url))
        if code == "InvalidAccessKeyId":
            return Failure(False, StorageAccessError(
                f"{url}: access denied: unknown access key (check {_CREDENTIALS})", url))
        if status == 403 or code in ("AccessDenied", "Forbidden", "403"):
            return Failure(False, StorageAccessError(f"{url}: access denied (check {_CREDENTIALS})", url))
        if code == "NoSuchBucket":
            bucket = err.get("BucketName") or url.split("://", 1)[-1].split("/", 1)[0]
            return Failure(False, StorageNotFoundError(f"{url}: no such bucket {bucket!r}", url))
        if status == 404 or code in ("NoSuchKey", "404", "NotFound"):
            return Failure(False, StorageNotFoundError(f"{url}: no such object", url))
        if status == 412 or code == "PreconditionFailed":
            return Failure(False, StorageError(f"{url}: the object changed while it was being read "
                                               f"(rewritten by another process?)", url))
        return Failure(False, StorageError(f"{url}: {code or status}: {err.get('Message') or _first_line(ce)}", url))
    reason = _network_reason(exc)
    if reason is not None:
        return Failure(True, StorageUnavailableError(f"{url}: {reason}", url))
    try:
        from botocore.exceptions import NoCredentialsError, PartialCredentialsError
        if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
            return Failure(False, StorageAccessError(
                f"{url}: no S3 credentials (set {_CREDENTIALS}, or AWS_PROFILE)", url))
    except ImportError:  # pragma: no cover
        pass
    if isinstance(exc, FileNotFoundError):
        return Failure(False, StorageNotFoundError(f"{url}: no such file or object", url))
    if isinstance(exc, PermissionError):
        return Failure(False, StorageAccessError(f"{url}: access denied (check {_CREDENTIALS})", url))
    return Failure(False, StorageError(f"{url}: {_first_line(exc)}", url))


def is_storage_failure(exc: BaseException) -> bool:
    """True where exc (or its cause) comes from the storage stack, not from the caller's code."""
    if _client_error(exc) is not None or _network_reason(exc) is not None:
        return True
    try:
        from botocore.exceptions import BotoCoreError
    except ImportError:  # pragma: no cover
        return False
    return any(isinstance(e, (StorageError, BotoCoreError)) for e in _chain(exc))


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
            raise ShardSizeError(f"{url}: object is {self.size} bytes, expected {expected_size} ({what}; "
                                 f"rewritten or damaged?)", url)

    def _sync(self, coro_fn: Callable, *args: Any, **kwargs: Any) -> Any:
        from fsspec.asyn import sync

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
        since, failures = time.monotonic(), 0
        while True:
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
                raise EndedEarly(f"the transfer ended after {self._pos} of {self.size} bytes")
            except Exception as exc:
                self._drop_body()
                failure = classify(self.url, exc)
                if not failure.transient:
                    raise failure.error from exc
                failures += 1
                if failures >= self._retry.attempts:
                    raise give_up(self.url, failure, failures, since) from exc
                time.sleep(backoff_delay(self._retry, failures))

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


# --- webdataset -------------------------------------------------------------------------------

@dataclass(frozen=True)
class ShardOpener:
    """A webdataset pipeline stage: `{"url": ...}` dicts in, the same with an open `"stream"` out.

    Stands in for webdataset's `url_opener` (which knows no s3://):
    `wds.DataPipeline(wds.SimpleShardList(urls), ShardOpener(sizes),
    wds.tariterators.tar_file_expander, wds.tariterators.group_by_keys, ...)`.
    `sizes` maps URL -> bytes from the manifest (a source dict may carry `"size"` instead), so a
    truncated shard raises instead of ending the epoch early. Picklable and connection-free,
    so it can be built in the main process and run in loader workers.
    """

    sizes: Mapping[str, int] | None = None
    retry: RetryPolicy | None = None

    def __call__(self, sources: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        from . import storage

        for src in sources:
            url = src["url"]
            size = src.get("size", (self.sizes or {}).get(url))
            yield {**src, "stream": storage.open_read(url, expected_size=size, retry=self.retry)}


def gopen_s3(url: str, mode: str = "rb", bufsize: int = 8192, **kw: Any):
    """A handler for webdataset's `gopen_schemes["s3"]` (reads only; no size check)."""
    from . import storage

    if mode != "rb":
        raise ValueError(f"{url}: gopen_s3 only reads; write shards with sen12ms_common.storage.atomic_open")
    return storage.open_read(url)


def register_gopen() -> None:
    """Let plain `webdataset.WebDataset("s3://...")` read through us (process-wide).

    Prefer passing `ShardOpener` explicitly; this exists for notebooks and third-party code.
    """
    import importlib

    # `webdataset.gopen` the attribute is the function; the module holds the scheme table.
    module = importlib.import_module("webdataset.gopen")
    module.gopen_schemes["s3"] = gopen_s3


# --- throughput -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Throughput:
    objects: int
    bytes: int
    seconds: float

    @property
    def mib_s(self) -> float:
        return self.bytes / (1 << 20) / self.seconds if self.seconds > 0 else float("inf")


def read_throughput(urls: Iterable[str], chunk: int = 1 << 20, passes: int = 1) -> Throughput:
    """Stream whole objects (local paths or URLs) `passes` times through `storage.open_read`.

    For local files the page cache decides what is measured: pre-read them (passes=2 and time
    only the second, or read once before) to compare warm disk with the object store.
    """
    from . import storage

    urls = list(urls)
    total, start = 0, time.perf_counter()
    for _ in range(passes):
        for url in urls:
            with storage.open_read(url) as f:
                while True:
                    block = f.read(chunk)
                    if not block:
                        break
                    total += len(block)
    return Throughput(len(urls) * passes, total, time.perf_counter() - start)
