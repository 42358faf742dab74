"""Folders the tools write results into: a local path or an s3:// prefix (other schemes and
credentials in URLs are refused), and one-line errors for local writes that fail."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from . import files as storage
from ..errors import StorageError


def output_folder(url: str, option: str) -> str:
    """`url` as a folder to write into: a local path or an s3:// URL (credentials refused); other
    schemes are refused in one line naming the option."""
    url = str(url)
    if storage.is_remote(url) and not storage.is_s3(url):
        raise StorageError(f"{option} {storage.redact(url)}: only local folders and s3:// URLs can be written", url)
    storage.refuse_credentials(url)
    return url


@contextmanager
def writing(url: str) -> Iterator[None]:
    """Turn a local write failure (read-only folder, full disk) into a one-line StorageError naming
    `url` (the file or folder the user knows, not a temporary name); nothing is left under a final
    name (`storage` writes atomically)."""
    try:
        yield
    except StorageError:
        raise
    except OSError as exc:
        raise StorageError(f"{url}: cannot write ({exc.strerror or exc})", str(url)) from None


__all__ = ["output_folder", "writing"]
