"""`python -m convert merge-manifest OUT`: join the parts of a conversion made with `--part I/N`."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import click

from convert.shards.outfolder import (PART_DIR, PART_FILE_RE, TEMP_RE, part_count_of, part_manifest_name,
                                      part_shard_name, tag_of)
from convert.shards.plan import UNASSIGNED, Part
from convert.shards.stats import BandMoments, finish, merge
from convert.shards.summary import report_table
from sen12ms_common.errors import ConvertError, InputError, report_errors
from sen12ms_common.format.manifest import (MANIFEST_NAME, REPORT_NAME, SPLITS, Manifest, Rejection, ShardEntry,
                                            report_dict)
from sen12ms_common.progress import no_progress_option
from sen12ms_common.storage import files as storage
from sen12ms_common.vocab.bands import MODALITY_BANDS

_MAX_LISTED = 8

# What the parts must agree on, in the order they are compared, and how a difference reads.
_OPTIONS: dict[str, str] = {
    "codec": "--codec {value} (part 1: {first})",
    "level": "--level {value} (part 1: {first})",
    "modalities": "--modalities {value} (part 1: {first})",
    "shard_size": "--shard-size {value} bytes (part 1: {first})",
    "seed": "--seed {value} (part 1: {first})",
    "labels": "other labels (another --labels file, or derived vs given)",
    "splits": "other split lists (another --splits, --val-fraction or --seed)",
    "tree": "another tree (other scenes or patches under --data)",
    "layout": "another sample layout (another version of the converter?)",
}


@dataclass
class PartDoc:
    part: Part
    url: str
    manifest: Manifest
    meta: dict[str, Any]  # the part manifest's "part" section
    report: dict[str, Any]


@dataclass
class MergeOutcome:
    manifest: Manifest
    report: dict[str, Any]
    parts: int
    unchanged: bool  # OUT already held exactly this manifest and report


def _listed(items: list[str]) -> str:
    more = f" and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return ", ".join(items[:_MAX_LISTED]) + more


def part_count(out: str, expect: int | None = None) -> int:
    """N of the conversion whose parts are in OUT (from part manifests and part shard names)."""
    folder = storage.join(out, PART_DIR)
    counts: dict[int, str] = {}
    for name in storage.listdir(folder):
        m = PART_FILE_RE.match(name)
        if m:
            counts.setdefault(int(m["n"]), f"{PART_DIR}/{name}")
    for name in storage.listdir(out):
        tag = tag_of(name)
        if tag:
            counts.setdefault(part_count_of(str(tag)), name)
    if len(counts) > 1:
        found = "; ".join(f"{n} parts (e.g. {example})" for n, example in sorted(counts.items()))
        raise ConvertError(f"{out}: holds parts of more than one conversion: {found}; remove the other conversion's "
                           "files, or convert into separate folders")
    if expect is not None:
        if counts and expect not in counts:
            n, example = next(iter(counts.items()))
            raise ConvertError(f"{out}: the parts were made with --part I/{n} (e.g. {example}), not I/{expect}")
        return expect
    if not counts:
        raise ConvertError(f"{out}: no parts of a conversion with --part I/N (no {PART_DIR}/manifest-*.json); "
                           "run `convert shards --part I/N` into it first")
    return next(iter(counts))


def _read_json(url: str, what: str, part: Part) -> Any:
    try:
        return json.loads(storage.read_text(url))
    except FileNotFoundError:
        raise ConvertError(f"{url}: missing (the {what} of part {part}); run that part again with --resume") from None
    except ValueError as exc:
        raise ConvertError(f"{url}: damaged {what} of part {part} ({exc}); run that part again with --resume") from None


def load_parts(out: str, count: int) -> list[PartDoc]:
    """The part manifests and reports of all `count` parts, in part order; refuses missing ones."""
    folder = storage.join(out, PART_DIR)
    present = set(storage.listdir(folder))
    parts = [Part(i, count) for i in range(1, count + 1)]
    missing = [p for p in parts if part_manifest_name(p) not in present]
    if missing:
        raise ConvertError(
            f"{out}: {len(missing)} of {count} parts missing or unfinished (no {PART_DIR}/"
            f"{part_manifest_name(missing[0])}{', ...' if len(missing) > 1 else ''}): part(s) "
            f"{_listed([str(p) for p in missing])}; run `convert shards ... --part I/{count}` for them "
            "(with --resume after an interruption)")
    docs: list[PartDoc] = []
    for part in parts:
        url = storage.join(folder, part_manifest_name(part))
        doc = _read_json(url, "part manifest", part)
        try:
            meta = doc["part"]
            if (int(meta["index"]), int(meta["count"])) != (part.index, part.count):
                raise ValueError(f"it says it is part {meta['index']}/{meta['count']}")
            for key in ("scenes", "inputs", "options", "moments", "report"):
                meta[key]  # noqa: B018 - present, or KeyError below
            manifest = Manifest.from_dict(doc)
        except (KeyError, TypeError, ValueError, InputError) as exc:
            text = f"no {exc}" if isinstance(exc, KeyError) else str(exc)
            raise ConvertError(f"{url}: not a part manifest of part {part} ({text}); run that part again with "
                               "--resume") from None
        report = _read_json(storage.join(folder, meta["report"]), "part report", part)
        docs.append(PartDoc(part, url, manifest, meta, report))
    return docs


def check_parts(out: str, docs: list[PartDoc]) -> None:
    """Same options and tree in every part, disjoint scenes, and every shard in OUT at its size."""
    first = docs[0].meta["options"]
    for d in docs[1:]:
        options = d.meta["options"]
        for key, text in _OPTIONS.items():
            if options.get(key) != first.get(key):
                what = text.format(value=options.get(key), first=first.get(key))
                raise ConvertError(f"{d.url}: part {d.part} was made with {what}; run every part with the same "
                                   "options on the same tree")
    owner: dict[str, Part] = {}
    for d in docs:
        for scene in d.meta["scenes"]:
            if scene in owner:
                raise ConvertError(f"{d.url}: scene {scene} is also in part {owner[scene]}; run the parts again")
            owner[scene] = d.part
    sizes = storage.sizes(out)  # one listing, also of a bucket with thousands of shards
    bad: list[str] = []
    for d in docs:
        for split in SPLITS:
            for i, e in enumerate(d.manifest.splits.get(split, [])):
                if e.name != part_shard_name(split, i, d.part):
                    raise ConvertError(f"{d.url}: names shard {e.name!r}, expected {part_shard_name(split, i, d.part)}")
                if sizes.get(e.name) != e.bytes:
                    got = ("missing" if e.name not in sizes
                           else f"{sizes[e.name]} bytes, its part manifest says {e.bytes}")
                    bad.append(f"{e.name} ({got})")
                elif e.index not in sizes:
                    bad.append(f"{e.index} (missing)")
    if bad:
        raise ConvertError(f"{out}: {len(bad)} shard or index file(s) of the parts missing or changed: {_listed(bad)}; "
                           "run the parts that wrote them again with --resume")


def merged(docs: list[PartDoc]) -> tuple[Manifest, dict[str, Any]]:
    """The manifest and report of the whole conversion, from its parts (in part order)."""
    layout = docs[0].manifest.layout
    splits: dict[str, list[ShardEntry]] = {s: [e for d in docs for e in d.manifest.splits.get(s, [])] for s in SPLITS}
    totals: BandMoments = {}
    for d in docs:
        merge(totals, {k: (int(v[0]), float(v[1]), float(v[2])) for k, v in d.meta["moments"].items()})
    band_order = tuple(b for m in layout.modalities if m in ("s2", "s1") for b in MODALITY_BANDS[m])

    names = list(SPLITS) + ([UNASSIGNED] if any(UNASSIGNED in d.report["inputs"] for d in docs) else [])
    inputs = {s: sum(d.report["inputs"].get(s, 0) for d in docs) for s in names}
    converted = {s: sum(d.report["converted"].get(s, 0) for d in docs) for s in names}
    rejected = [Rejection(**r) for d in docs for r in d.report["rejected"]]
    warnings = [Rejection(**w) for d in docs for w in d.report["warnings"]]
    report = report_dict(inputs, converted, rejected, warnings)
    for split in names:
        if inputs[split] != converted[split] + report["rejected_count"][split]:
            raise ConvertError(f"bookkeeping error in {split}: {inputs[split]} inputs, {converted[split]} converted, "
                               f"{report['rejected_count'][split]} rejected")
    for split in SPLITS:
        if sum(e.samples for e in splits[split]) != converted[split]:
            raise ConvertError(f"bookkeeping error in {split}: the part manifests hold "
                               f"{sum(e.samples for e in splits[split])} samples, the part reports {converted[split]}")
    source = dict(docs[0].manifest.source, inputs=sum(inputs.values()), converted=sum(converted.values()),
                  rejected=len(rejected), parts=len(docs))
    return Manifest(layout, splits, finish(totals, band_order), source), report


def remove_dead_temporaries(out: str) -> list[str]:
    """The hidden temporaries of manifest.json / report.json that a merge killed at its rename
    left (`.manifest.json.tmp-<pid>-<hex>`), removed where that process no longer runs."""
    if storage.is_remote(out):
        return []  # object stores write whole objects: nothing half-written is left there
    removed = []
    for name in storage.listdir(out):
        m = TEMP_RE.match(name)
        if m is None or m["target"] not in (MANIFEST_NAME, REPORT_NAME) or not m["owner"].isdigit():
            continue
        if _running(int(m["owner"])):
            continue
        storage.remove(storage.join(out, name))
        removed.append(name)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return pid < 2**22  # another user's process (or no such pid at all)
    return True


def merge_parts(out: str, expect: int | None = None, force: bool = False) -> MergeOutcome:
    """Join the parts in OUT into OUT/manifest.json and OUT/report.json; raises ConvertError."""
    remove_dead_temporaries(out)
    count = part_count(out, expect)
    docs = load_parts(out, count)
    check_parts(out, docs)
    manifest, report = merged(docs)
    manifest_text = manifest.dumps()
    report_text = json.dumps(report, indent=2, sort_keys=True) + "\n"
    manifest_url, report_url = storage.join(out, MANIFEST_NAME), storage.join(out, REPORT_NAME)
    if storage.exists(manifest_url):
        same = (storage.read_text(manifest_url) == manifest_text and storage.exists(report_url)
                and storage.read_text(report_url) == report_text)
        if same:
            return MergeOutcome(manifest, report, count, unchanged=True)
        if not force:
            raise ConvertError(f"{manifest_url}: a complete shard set with another manifest is already there; "
                               "pass --force to replace its manifest and report")
    storage.write_text(report_url, report_text)
    storage.write_text(manifest_url, manifest_text)  # last: marks the set complete
    return MergeOutcome(manifest, report, count, unchanged=False)


@click.command("merge-manifest")
@click.argument("out")
@click.option("--expect", type=click.IntRange(1), default=None, metavar="N",
              help="The number of parts the conversion ran in; refuse if the parts say otherwise. "
                   "Default: what the parts say.")
@click.option("--force", is_flag=True,
              help="Replace an OUT/manifest.json (and report.json) that differs from the merged one.")
@no_progress_option
@report_errors
def merge_manifest(out: str, expect: int | None, force: bool) -> None:
    """Join the parts of `convert shards --part I/N` in OUT into OUT/manifest.json and OUT/report.json."""
    outcome = merge_parts(out, expect, force)
    m, r = outcome.manifest, outcome.report
    for line in report_table(r):
        click.echo(line)
    if r["rejected"] or r["warnings"]:
        click.echo(f"rejected: {len(r['rejected'])}, warnings: {len(r['warnings'])} "
                   f"(listed in {storage.join(out, REPORT_NAME)})")
    n_shards = sum(len(v) for v in m.splits.values())
    n_bytes = sum(s.bytes for v in m.splits.values() for s in v)
    done = "already merged, unchanged" if outcome.unchanged else "merged"
    click.echo(f"{done}: {outcome.parts} parts, {n_shards} shards ({n_bytes / 1e6:.1f} MB), "
               f"{sum(r['converted'].values())} samples; manifest: {storage.join(out, MANIFEST_NAME)}; "
               f"check it with: python -m convert verify {out}")
