"""`python -m convert verify OUT`: prove a shard set is whole and decodes.

Every shard named by the manifest is streamed once (never extracted): its sha256 and size are
compared with the manifest, every sample is decoded with the shard format's decoder, sample
counts are compared with the manifest and the DALI index file is compared with the member
offsets actually found. A member whose name is a path, or that is not a regular file, makes
the shard bad; nothing is ever written.
"""

from __future__ import annotations

import hashlib
import re
import tarfile
import time
from dataclasses import dataclass, field
from typing import BinaryIO, Callable

import click

from sen12ms_common import storage
from sen12ms_common.igbp import LabelError, check_probability
from sen12ms_common.manifest import SPLITS, Manifest, ManifestError, ShardEntry, load_manifest
from sen12ms_common.patches import PatchNameError, parse_patch
from sen12ms_common.shardformat import SampleLayout, ShardFormatError, check_member_name, dali_index, decode_sample


# `train-000000.tar`, or `train-p0003of0016-000000.tar` from a conversion in parts (--part).
_SHARD_NAME = re.compile(r"^[a-z]+-(?:p\d{4,}of\d{4,}-)?\d{6}\.tar$")


class ShardError(Exception):
    """A bad shard; the message names the shard (and the sample where there is one)."""


class _HashingReader:
    """A read-only stream that hashes and counts what passes through it."""

    def __init__(self, raw: BinaryIO, on_bytes: Callable[[int], None]) -> None:
        self._raw, self._on_bytes = raw, on_bytes
        self.sha256, self.bytes = hashlib.sha256(), 0

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        self.sha256.update(data)
        self.bytes += len(data)
        self._on_bytes(len(data))
        return data

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


def _check_sample(key: str, members: dict[str, bytes], layout: SampleLayout, expected: tuple[str, ...]) -> None:
    try:
        pid = parse_patch(key)
    except PatchNameError:
        raise ShardFormatError("key is not a SEN12MS patch id") from None
    if pid.modality != "s2":
        raise ShardFormatError("key is not an S2 patch id")
    missing = [e for e in expected if e not in members]
    extra = sorted(e for e in members if e not in expected)
    if missing:
        raise ShardFormatError("member(s) " + ", ".join("." + e for e in missing) + " missing")
    if extra:
        raise ShardFormatError("unexpected member(s) " + ", ".join("." + e for e in extra))
    out = decode_sample(members, layout)
    try:
        check_probability(out["label"])
    except LabelError as exc:
        raise ShardFormatError(f"label: {exc}") from None
    meta = out.get("meta")
    if not isinstance(meta, dict) or (meta.get("season"), meta.get("scene"), meta.get("patch")) != (
            pid.season, pid.scene, pid.patch):
        raise ShardFormatError("member .json does not name this patch")


def _safe_member(info: tarfile.TarInfo) -> None:
    name = info.name
    check_member_name(name)
    if not info.isreg():
        raise ShardFormatError(f"member {name!r} is not a regular file")


def verify_shard(root: str, entry: ShardEntry, layout: SampleLayout, seen: dict[str, str],
                 on_bytes: Callable[[int], None] = lambda n: None) -> int:
    """Check one shard; returns its sample count or raises ShardError naming shard and sample."""
    if not _SHARD_NAME.match(entry.name):
        raise ShardError(f"{entry.name!r}: the manifest names a shard that is not <split>-NNNNNN.tar in its folder")
    url = storage.join(root, entry.name)
    if not storage.exists(url):
        raise ShardError(f"{entry.name}: missing")
    expected = layout.member_exts()
    index: list[list[tuple[str, int, int, str]]] = []
    samples = 0
    last_key = ""

    def flush(key: str, members: dict[str, bytes]) -> None:
        nonlocal samples, last_key
        try:
            _check_sample(key, members, layout, expected)
        except ShardFormatError as exc:
            raise ShardError(f"{entry.name}: sample {key}: {exc}") from None
        if key in seen:
            raise ShardError(f"{entry.name}: sample {key}: also in {seen[key]}")
        seen[key] = entry.name
        samples += 1
        last_key = key

    key, members, entries = "", {}, []
    try:
        with storage.open_read(url) as raw:
            reader = _HashingReader(raw, on_bytes)
            with tarfile.open(fileobj=reader, mode="r|") as tar:  # type: ignore[call-overload]
                for info in tar:
                    try:
                        _safe_member(info)
                    except ShardFormatError as exc:
                        after = f" (after sample {key or last_key})" if key or last_key else ""
                        raise ShardError(f"{entry.name}: {exc}{after}") from None
                    k, _, ext = info.name.partition(".")
                    if k != key:
                        if key:
                            flush(key, members)
                            index.append(entries)
                        key, members, entries = k, {}, []
                    if ext in members:
                        raise ShardError(f"{entry.name}: sample {k}: member .{ext} appears twice")
                    f = tar.extractfile(info)
                    members[ext] = f.read() if f is not None else b""
                    entries.append((ext, info.offset_data, info.size, info.name))
                if key:
                    flush(key, members)
                    index.append(entries)
            reader.drain()
    except (tarfile.TarError, EOFError, OSError) as exc:
        where = f"sample {key}" if key else "first sample"
        raise ShardError(f"{entry.name}: {where}: damaged or truncated tar ({exc})") from None

    if samples != entry.samples:
        after = f"after sample {last_key}" if last_key else "before its first sample"
        raise ShardError(f"{entry.name}: holds {samples} samples, the manifest says {entry.samples} "
                         f"(tar ends {after}: truncated or damaged)")
    if reader.bytes != entry.bytes:
        raise ShardError(f"{entry.name}: {reader.bytes} bytes, the manifest says {entry.bytes}")
    digest = reader.sha256.hexdigest()
    if digest != entry.sha256:
        raise ShardError(f"{entry.name}: sha256 {digest[:12]}... does not match the manifest ({entry.sha256[:12]}...)")
    idx_url = storage.join(root, entry.index)
    if not storage.exists(idx_url):
        raise ShardError(f"{entry.index}: missing (the DALI index of {entry.name})")
    idx = storage.read_text(idx_url)
    head = idx.split("\n", 1)[0].split()
    if len(head) != 2 or head[0] != "v1.2" or not head[1].isdigit():
        raise ShardError(f"{entry.index}: not a wds2idx v1.2 index")
    if int(head[1]) != samples:
        raise ShardError(f"{entry.index}: indexes {head[1]} samples, {entry.name} holds {samples}")
    if idx != dali_index(index):
        raise ShardError(f"{entry.index}: member offsets or sizes do not match {entry.name}")
    return samples


@dataclass
class VerifyResult:
    shards: int = 0
    samples: int = 0
    bytes: int = 0
    errors: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)  # shard files in the folder the manifest does not name
    seconds: float = 0.0


def verify_shards(root: str, progress: bool = False) -> VerifyResult:
    """Verify every shard of the manifest at `root`; bad shards are collected, not raised."""
    from tqdm import tqdm

    t0 = time.perf_counter()
    manifest: Manifest = load_manifest(root)
    order = [s for s in SPLITS if s in manifest.splits] + [s for s in manifest.splits if s not in SPLITS]
    entries = [e for split in order for e in manifest.splits[split]]
    result = VerifyResult()
    seen: dict[str, str] = {}
    with tqdm(total=sum(e.bytes for e in entries), unit="B", unit_scale=True, desc="verify",
              disable=not progress) as bar:
        for entry in entries:
            bar.set_postfix_str(entry.name)
            try:
                result.samples += verify_shard(root, entry, manifest.layout, seen, bar.update)
                result.shards += 1
                result.bytes += entry.bytes
            except ShardError as exc:
                result.errors.append(str(exc))
    named = {e.name for e in entries}
    result.extra = [n for n in storage.listdir(root) if n.endswith(".tar") and n not in named]
    result.seconds = time.perf_counter() - t0
    return result


@click.command("verify")
@click.argument("out")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")
def verify(out: str, progress: bool) -> None:
    """Re-hash and decode every shard of the shard set in OUT and compare it with its manifest."""
    try:
        result = verify_shards(out, progress=progress)
    except ManifestError as exc:
        raise click.ClickException(str(exc)) from None
    for name in result.extra:
        click.echo(f"warning: {name} is not named by the manifest (not verified)", err=True)
    if result.errors:
        if len(result.errors) > 1:
            for line in result.errors:
                click.echo(line, err=True)
        more = f" (and {len(result.errors) - 1} more bad shard(s), listed above)" if len(result.errors) > 1 else ""
        raise click.ClickException(f"verification failed: {result.errors[0]}{more}")
    click.echo(f"OK: {result.shards} shards, {result.samples} samples, {result.bytes / 1e6:.1f} MB in {out}: "
               f"sha256, decoding, sample counts and index files match the manifest ({result.seconds:.1f} s)")

