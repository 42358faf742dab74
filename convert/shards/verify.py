"""`python -m convert verify OUT`: prove a shard set is whole and decodes."""

from __future__ import annotations

import tarfile
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import click

from sen12ms_common.errors import InputError, ShardError, report_errors
from sen12ms_common.format import tarstream
from sen12ms_common.format.checksums import Digests
from sen12ms_common.format.manifest import ALL_SPLITS, Manifest, ShardEntry, is_shard_name, load_manifest
from sen12ms_common.format.sample import SampleLayout, check_member_name, dali_index, decode_sample
from sen12ms_common.progress import Counter, ProgressOptions, as_options, progress_options
from sen12ms_common.storage import files as storage
from sen12ms_common.vocab.igbp import check_probability
from sen12ms_common.vocab.patches import parse_any_patch


class _AllExts:
    def __contains__(self, ext: object) -> bool:
        return True


_ALL = _AllExts()  # verify reads every member

def _check_sample(key: str, members: dict[str, bytes], layout: SampleLayout, expected: tuple[str, ...]) -> None:
    try:
        pid = parse_any_patch(key)
    except InputError:
        raise ShardError("key is not a SEN12MS (or DFC2020) patch id") from None
    if pid.modality != "s2":
        raise ShardError("key is not an S2 patch id")
    missing = [e for e in expected if e not in members]
    extra = sorted(e for e in members if e not in expected)
    if missing:
        raise ShardError("member(s) " + ", ".join("." + e for e in missing) + " missing")
    if extra:
        raise ShardError("unexpected member(s) " + ", ".join("." + e for e in extra))
    out = decode_sample(members, layout)
    try:
        if layout.labels:
            check_probability(out["label"])
    except InputError as exc:
        raise ShardError(f"label: {exc}") from None
    meta = out.get("meta")
    if not isinstance(meta, dict) or (meta.get("season"), meta.get("scene"), meta.get("patch")) != (
            pid.season, pid.scene, pid.patch):
        raise ShardError("member .json does not name this patch")


@dataclass
class _Walk:
    """What streaming one shard found: samples, the last key, digests and member offsets."""

    samples: int = 0
    last_key: str = ""
    digests: Digests = field(default_factory=Digests)
    index: list[list[tuple[str, int, int, str]]] = field(default_factory=list)


def _walk_shard(url: str, entry: ShardEntry, layout: SampleLayout, seen: dict[str, str],
                on_bytes: Callable[[int], None]) -> _Walk:
    """Stream the shard once, decoding and checking every sample; raises ShardError naming it."""
    walk = _Walk()
    expected = layout.member_exts()
    offsets: dict[str, tuple[int, int]] = {}
    reading = ""  # the sample whose members are being read

    def seen_bytes(data: memoryview) -> None:
        walk.digests.update(data)
        on_bytes(len(data))

    def seen_member(name: str, at: int, size: int) -> None:
        nonlocal reading
        offsets[name] = (at, size)
        reading = tarstream.split_name(name)[0]

    def damaged(exc: Exception) -> ShardError:
        where = f"sample {reading}" if reading else "first sample"
        return ShardError(f"{entry.name}: {where}: damaged or truncated tar ({exc})")

    def samples(raw) -> Iterator[tuple[str, dict]]:
        # The tar's own problems, named here; a sample's (from _count_sample) leave the loop as they are.
        try:
            # Cut between two samples: the sample count names where.
            yield from tarstream.iter_samples(raw, _ALL, until_cut=True, check_name=check_member_name,
                                              on_bytes=seen_bytes, drain=True, strict=True,
                                              max_size=layout.member_limit(), on_member=seen_member)
        except ValueError as exc:  # a member name that is a path, a member twice
            after = f" (after sample {reading})" if reading else ""
            raise ShardError(f"{entry.name}: {exc}{after}") from None
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise damaged(exc) from None

    try:
        with storage.open_read(url) as raw:
            for key, members in samples(raw):
                _count_sample(entry, key, members, layout, expected, seen, walk)
                walk.index.append([(ext, *offsets.pop(f"{key}.{ext}"), f"{key}.{ext}") for ext in members])
    except (tarfile.TarError, EOFError, OSError) as exc:  # opening or closing it
        raise damaged(exc) from None
    return walk


def _count_sample(entry: ShardEntry, key: str, members: dict[str, bytes], layout: SampleLayout,
                  expected: tuple[str, ...], seen: dict[str, str], walk: _Walk) -> None:
    try:
        _check_sample(key, members, layout, expected)
    except ShardError as exc:
        raise ShardError(f"{entry.name}: sample {key}: {exc}") from None
    if key in seen:
        raise ShardError(f"{entry.name}: sample {key}: also in {seen[key]}")
    seen[key] = entry.name
    walk.samples += 1
    walk.last_key = key


def _check_against_manifest(entry: ShardEntry, walk: _Walk) -> None:
    if walk.samples != entry.samples:
        after = f"after sample {walk.last_key}" if walk.last_key else "before its first sample"
        raise ShardError(f"{entry.name}: holds {walk.samples} samples, the manifest says {entry.samples} "
                         f"(tar ends {after}: truncated or damaged)")
    digests = walk.digests
    if digests.bytes != entry.bytes:
        raise ShardError(f"{entry.name}: {digests.bytes} bytes, the manifest says {entry.bytes}")
    for what, got, want in (("sha256", digests.sha256, entry.sha256), ("xxh3-128", digests.fast, entry.xxh3_128)):
        if got != want:
            raise ShardError(f"{entry.name}: {what} {got[:12]}... does not match the manifest ({want[:12]}...)")


def _check_index(root: str, entry: ShardEntry, walk: _Walk) -> None:
    idx_url = storage.join(root, entry.index)
    if not storage.exists(idx_url):
        raise ShardError(f"{entry.index}: missing (the DALI index of {entry.name})")
    idx = storage.read_text(idx_url)
    head = idx.split("\n", 1)[0].split()
    if len(head) != 2 or head[0] != "v1.2" or not head[1].isdigit():
        raise ShardError(f"{entry.index}: not a wds2idx v1.2 index")
    if int(head[1]) != walk.samples:
        raise ShardError(f"{entry.index}: indexes {head[1]} samples, {entry.name} holds {walk.samples}")
    if idx != dali_index(walk.index):
        raise ShardError(f"{entry.index}: member offsets or sizes do not match {entry.name}")


def verify_shard(root: str, entry: ShardEntry, layout: SampleLayout, seen: dict[str, str],
                 on_bytes: Callable[[int], None] = lambda n: None) -> int:
    """Check one shard; returns its sample count or raises ShardError naming shard and sample."""
    # `load_manifest` checked the manifest's structure (sen12ms_common.format.manifest.check_manifest);
    # an entry given directly is held to the same naming rule.
    if not is_shard_name(entry.name, entry.name.split("-", 1)[0]):
        raise ShardError(f"{entry.name!r}: the manifest names a shard that is not <split>-NNNNNN.tar in its folder")
    url = storage.join(root, entry.name)
    if not storage.exists(url):
        raise ShardError(f"{entry.name}: missing")
    walk = _walk_shard(url, entry, layout, seen, on_bytes)
    _check_against_manifest(entry, walk)
    _check_index(root, entry, walk)
    return walk.samples


@dataclass
class VerifyResult:
    shards: int = 0
    samples: int = 0
    bytes: int = 0
    errors: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)  # shard files in the folder the manifest does not name
    seconds: float = 0.0


def verify_shards(root: str, progress: bool | ProgressOptions = False) -> VerifyResult:
    """Verify every shard of the manifest at `root`; bad shards are collected, not raised."""
    t0 = time.perf_counter()
    manifest: Manifest = load_manifest(root)
    order = [s for s in ALL_SPLITS if s in manifest.splits] + [s for s in manifest.splits if s not in ALL_SPLITS]
    entries = [(split, e) for split in order for e in manifest.splits[split]]
    result = VerifyResult()
    seen: dict[str, str] = {}
    with Counter(as_options(progress), "verify", sum(e.bytes for _, e in entries), "B", scaled=True) as bar:
        for split, entry in entries:
            bar.note(entry.name)
            try:
                result.samples += verify_shard(root, entry, manifest.layout_of(split), seen, bar.update)
                result.shards += 1
                result.bytes += entry.bytes
            except ShardError as exc:
                result.errors.append(str(exc))
    named = {e.name for _, e in entries}
    result.extra = [n for n in storage.listdir(root) if n.endswith(".tar") and n not in named]
    result.seconds = time.perf_counter() - t0
    return result


@click.command("verify")
@click.argument("out")
@progress_options(counted=True)
@report_errors
def verify(out: str, progress: bool, progress_interval: float) -> None:
    """Re-hash and decode every shard of the shard set in OUT and compare it with its manifest."""
    result = verify_shards(out, progress=ProgressOptions(progress, progress_interval))
    for name in result.extra:
        click.echo(f"warning: {name} is not named by the manifest (not verified)", err=True)
    if result.errors:
        if len(result.errors) > 1:
            for line in result.errors:
                click.echo(line, err=True)
        more = f" (and {len(result.errors) - 1} more bad shard(s), listed above)" if len(result.errors) > 1 else ""
        raise click.ClickException(f"verification failed: {result.errors[0]}{more}")
    click.echo(f"OK: {result.shards} shards, {result.samples} samples, {result.bytes / 1e6:.1f} MB in {out}: "
               f"checksums, decoding, sample counts and index files match the manifest ({result.seconds:.1f} s)")

