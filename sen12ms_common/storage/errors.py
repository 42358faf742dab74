"""The errors of the storage layer (one line naming the URL) and the redaction of credentials
from every URL they name."""

from __future__ import annotations

from ..errors import Sen12msError
from .redaction import has_user_info, redact


def refuse_credentials(url: str) -> None:
    """Credentials belong in the environment or the AWS files, never in a URL (they would end up in
    logs, shell histories and arguments files): a URL with user info is refused."""
    if has_user_info(url):
        raise StorageAccessError(f"{redact(url)}: credentials in a URL are refused; set AWS_ACCESS_KEY_ID / "
                                 "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) instead", str(url))


class StorageError(OSError, Sen12msError):
    """A read or write that failed; `str()` is one line naming the URL (user info redacted)."""

    def __init__(self, message: str, url: str = "") -> None:
        message, url = redact(message), redact(url)
        super().__init__(message)
        self.message, self.url = message, url

    def __str__(self) -> str:
        # webdataset appends the stream and URL to an exception's args; keep the one line.
        return self.message

    def __reduce__(self):  # loader workers pickle exceptions to the main process
        return (self.__class__, (self.message, self.url))


class StorageAccessError(StorageError, PermissionError):
    """403, a wrong key or secret, no credentials."""


class StorageNotFoundError(StorageError, FileNotFoundError):
    """No such object, file or bucket."""


class StorageUnavailableError(StorageError):
    """Transient errors (unreachable server, 5xx, broken transfers) that outlasted the retries."""


class ShardSizeError(StorageError):
    """An object or file that is not the size its manifest says (truncated or replaced)."""
