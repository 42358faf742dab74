"""Errors of object storage (botocore, aiohttp, s3fs): transient or permanent, and the one line that says so."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass
from functools import lru_cache

from ..errors import StorageAccessError, StorageError, StorageNotFoundError, StorageUnavailableError, exception_chain

# Error codes of S3 (and of its look-alikes) that a later attempt may not see again.
_TRANSIENT_CODES = frozenset({
    "InternalError", "ServiceUnavailable", "SlowDown", "Throttling", "ThrottlingException",
    "RequestTimeout", "RequestLimitExceeded", "TooManyRequests",
    "BadDigest", "XAmzContentSHA256Mismatch", "OperationAborted",
})
_CREDENTIALS = "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"


class _EndedEarly(Exception):
    """A response body that stopped before the bytes it announced (transient)."""


@dataclass(frozen=True)
class Failure:
    """What went wrong, in one line, and whether trying again may help."""

    transient: bool
    error: StorageError


def _client_error(exc: BaseException):
    """The botocore ClientError behind an exception (s3fs re-raises them as OSError)."""
    try:
        from botocore.exceptions import ClientError  # optional extra (s3): imported where it is used
    except ImportError:  # pragma: no cover - s3fs needs botocore
        return None
    for e in exception_chain(exc):
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
    import aiohttp  # optional extra (s3): imported where it is used
    from botocore import exceptions as bex  # optional extra (s3): imported where it is used
    from botocore.parsers import ResponseParserError  # optional extra (s3): imported where it is used
    from fsspec.exceptions import FSTimeoutError  # sen12ms_common imports only numpy when imported
    from urllib3.exceptions import HTTPError as Urllib3Error  # optional extra (s3): imported where it is used

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
    for e in exception_chain(exc):
        if isinstance(e, _EndedEarly):
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
        # optional extra (s3): imported where it is used
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
        from botocore.exceptions import BotoCoreError  # optional extra (s3): imported where it is used
    except ImportError:  # pragma: no cover
        return False
    return any(isinstance(e, (StorageError, BotoCoreError)) for e in exception_chain(exc))
