"""Test helpers: `storage.open_read` as the stream opener of a webdataset pipeline and as webdataset's
`gopen` handler for s3:// (the trainer does not use them; they show the streams fit webdataset)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping

from sen12ms_common.storage import files as storage
from sen12ms_common.storage.files import RetryPolicy


@dataclass(frozen=True)
class ShardOpener:
    """A pipeline stage: `{"url": ...}` dicts in, the same with an open, size-checked `"stream"` out
    (webdataset's own `url_opener` knows no s3://)."""

    sizes: Mapping[str, int] | None = None
    retry: RetryPolicy | None = None

    def __call__(self, sources: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for src in sources:
            url = src["url"]
            size = src.get("size", (self.sizes or {}).get(url))
            yield {**src, "stream": storage.open_read(url, expected_size=size, retry=self.retry)}


def gopen_s3(url: str, mode: str = "rb", bufsize: int = 8192, **kw: Any):
    """A handler for webdataset's `gopen_schemes["s3"]` (reads only; no size check)."""
    if mode != "rb":
        raise ValueError(f"{url}: gopen_s3 only reads")
    return storage.open_read(url)


def register_gopen() -> None:
    """Let plain `webdataset.WebDataset("s3://...")` read through storage (process-wide)."""
    # `webdataset.gopen` the attribute is the function; the module holds the scheme table.
    module = importlib.import_module("webdataset.gopen")
    module.gopen_schemes["s3"] = gopen_s3
