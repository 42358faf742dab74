"""`python -m convert shards`: a SEN12MS tree -> WebDataset shards per split, resumable.

Workers read and encode samples in parallel; one writer appends them to the shards in the
planned order, so the bytes do not depend on the number of workers. After each shard and its
DALI index, a commit record (`OUT/.parts/<shard>.json`: counts, sha256, statistics, rejections)
is written; `--resume` keeps the shards with a record, removes what follows them and goes on
from the next sample. The manifest and report are built from the records in shard order, so an
interrupted and resumed run writes the same bytes as an uninterrupted one.

With `--part I/N` the run converts only the scenes of part I (`plan.assign_scenes`), with the
splits of the whole tree. Its shards carry the part in their names (`train-p0003of0016-000000.tar`),
so the N parts can write into one OUT at the same time; instead of the manifest and report it
writes `OUT/parts/manifest-0003-of-0016.json` (its shards, the exact moments behind its
statistics, the options it was made with) and `OUT/parts/report-0003-of-0016.json`, which
`convert merge-manifest` (convert/merge.py) joins into `OUT/manifest.json` and `OUT/report.json`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import click

from convert.encode import Encoded, Failed, encode_entry, tar_bytes
from convert.interrupts import deferred_interrupt
from convert.plan import UNASSIGNED, Part, Plan, PlanEntry, assign_scenes, build_plan, parse_part, parse_size
from convert.stats import BandMoments, finish, merge
from convert.workers import WorkerDied, WorkerPool
from sen12ms_common import storage
from sen12ms_common.bands import MODALITY_BANDS
from sen12ms_common.manifest import (MANIFEST_NAME, REPORT_NAME, SPLITS, Manifest, Rejection, ShardEntry,
                                     index_name, report_dict, shard_name)
from sen12ms_common.patches import SceneId, parse_patch
from sen12ms_common.shardformat import CODECS, DEFAULT_LEVEL, SampleLayout, TarShardWriter, dali_index

PARTS = ".parts"  # commit records (resume)
PART_DIR = "parts"  # part manifests and reports of a conversion in parts (merge)
_SHARD_FILE_RE = re.compile(r"^(?P<split>[a-z]+)-(?:(?P<part>p\d{4,}of\d{4,})-)?(?P<i>\d{6})\.(?:tar|idx|json)$")
_END_FILE_RE = re.compile(r"^(?P<split>[a-z]+)(?:-(?P<part>p\d{4,}of\d{4,}))?\.end\.json$")
PART_FILE_RE = re.compile(r"^(?P<kind>manifest|report)-(?P<i>\d{4,})-of-(?P<n>\d{4,})\.json$")


class ConvertError(Exception):
    """A problem that stops the conversion; the message is one line for the user."""


@dataclass
class ShardsOptions:
    data: str
    out: str
    labels: str | None = None
    splits: str | None = None
    layout: SampleLayout = field(default_factory=SampleLayout)
    shard_size: int = 256_000_000
    workers: int = 1
    seed: int = 0
    resume: bool = False
    val_fraction: float = 0.1
    progress: bool = True
    part: Part | None = None  # convert only this part of the scenes
    # A local file: `<split> <shard>` is appended after each commit (SEN12MS_TRACE_COMMITS=FILE).
    trace_commits: str | None = None


@dataclass
class ShardRecord:
    """Commit record of one finished shard: plan positions [start, end) of its split."""

    fingerprint: str
    split: str
    shard: int
    name: str
    start: int
    end: int
    samples: int
    bytes: int
    sha256: str
    xxh3_128: str
    stats: dict[str, list[float]]  # band -> [count, mean, M2] over the shard's samples (train)
    rejected: list[dict[str, str]]
    warnings: list[dict[str, str]]


@dataclass
class SplitEnd:
    """Written when a split is complete: its shard count and the rejections after its last sample."""

    fingerprint: str
    split: str
    shards: int
    start: int
    end: int
    rejected: list[dict[str, str]]
    warnings: list[dict[str, str]]


@dataclass
class Outcome:
    manifest: Manifest
    report: dict[str, Any]
    seconds: float
    processed: int  # inputs read by this run (not those kept from an earlier one)
    manifest_url: str = ""
    report_url: str = ""


def _parts(out: str, name: str) -> str:
    return storage.join(out, PARTS, name)


def _stem(split: str, part: Part | None) -> str:
    """What shard names of a split start with: `train`, or `train-p0003of0016` for a part."""
    return split if part is None else f"{split}-{part.tag}"


def part_shard_name(split: str, shard: int, part: Part | None = None) -> str:
    return shard_name(_stem(split, part), shard)


def _record_name(split: str, shard: int, part: Part | None = None) -> str:
    return part_shard_name(split, shard, part)[: -len(".tar")] + ".json"


def _end_name(split: str, part: Part | None = None) -> str:
    return f"{_stem(split, part)}.end.json"


def part_manifest_name(part: Part) -> str:
    return f"manifest-{part.label}.json"


def part_report_name(part: Part) -> str:
    return f"report-{part.label}.json"


def _write_json(url: str, obj: Any) -> None:
    storage.write_text(url, json.dumps(obj, sort_keys=True, indent=1) + "\n")


def _read_json(url: str) -> Any:
    try:
        return json.loads(storage.read_text(url))
    except ValueError as exc:
        raise ConvertError(f"{url}: damaged commit record ({exc}); remove it and run again with --resume") from exc


# --- the state of OUT --------------------------------------------------------------------------

def _tag_of(name: str) -> str | None | bool:
    """The part tag of a shard, index, record or end record name (None: made without --part);
    False for other names."""
    m = _SHARD_FILE_RE.match(name) or _END_FILE_RE.match(name)
    return m["part"] if m else False


def part_count_of(tag: str) -> int:
    """N of a part tag: `p0003of0016` -> 16."""
    return int(tag.partition("of")[2])


def existing_shard_set(out: str, part: Part | None = None) -> list[str]:
    """Names in OUT that belong to the conversion (or the part of one) that `part` names:
    manifest (or part manifest and report), shards, index files, commit records."""
    if part is None:
        names = [n for n in storage.listdir(out) if n == MANIFEST_NAME or _tag_of(n) is None]
        names += [f"{PARTS}/{n}" for n in storage.listdir(storage.join(out, PARTS)) if _tag_of(n) in (None, False)]
        return names
    names = [n for n in storage.listdir(out) if _tag_of(n) == part.tag]
    names += [f"{PARTS}/{n}" for n in storage.listdir(storage.join(out, PARTS)) if _tag_of(n) == part.tag]
    names += [f"{PART_DIR}/{n}" for n in storage.listdir(storage.join(out, PART_DIR))
              if n in (part_manifest_name(part), part_report_name(part))]
    return names


def _other_conversion(out: str, part: Part | None) -> str | None:
    """Why OUT cannot take this conversion (or part) beside what it holds, or None: a run with
    --part never shares OUT with one without, nor with parts of another count."""
    names = storage.listdir(out) + storage.listdir(storage.join(out, PARTS))
    tagged = [(n, t) for n in names if (t := _tag_of(n)) not in (None, False)]
    if part is None:
        parts = storage.listdir(storage.join(out, PART_DIR))
        if tagged or parts:
            example = tagged[0][0] if tagged else f"{PART_DIR}/{parts[0]}"
            return (f"{out}: holds parts of a conversion with --part (e.g. {example}); join them with "
                    "`convert merge-manifest`, or choose an empty folder")
        return None
    plain = [n for n in names if _tag_of(n) is None]
    if plain:
        return (f"{out}: holds a conversion without --part (e.g. {plain[0]}); convert the parts into an empty "
                "folder")
    other = [(n, t) for n, t in tagged if part_count_of(str(t)) != part.count]
    if other:
        n_other = part_count_of(str(other[0][1]))
        return (f"{out}: holds parts of a conversion in {n_other} parts (e.g. {other[0][0]}), not {part.count}; "
                f"use --part I/{n_other}, or choose an empty folder")
    return None


def _remove_stale_temporaries(folder: str, part: Part | None) -> None:
    """Remove what interrupted writes of this conversion (or part) left; never the live
    temporaries of the other parts writing into the same folder at this moment."""
    if part is None or storage.is_remote(folder):
        storage.remove_stale_temporaries(folder)
        return
    own = (part_manifest_name(part), part_report_name(part))
    for name in storage.listdir(folder):
        # storage.atomic_open writes `<name>` through `.<name>.tmp-<pid>-<random>`.
        target, sep, _ = name[1:].partition(".tmp-")
        if name.startswith(".") and sep and (_tag_of(target) == part.tag or target in own):
            storage.remove(storage.join(folder, name))


def _load_progress(out: str, split: str, fingerprint: str, part: Part | None = None
                   ) -> tuple[list[ShardRecord], SplitEnd | None]:
    """The consecutive finished shards of a split (and its end record if it is complete)."""
    records: list[ShardRecord] = []
    while True:
        url = _parts(out, _record_name(split, len(records), part))
        if not storage.exists(url):
            break
        try:
            rec = ShardRecord(**_read_json(url))
        except TypeError as exc:
            raise ConvertError(f"{url}: damaged commit record ({exc}); remove it and run again with --resume") from exc
        if rec.fingerprint != fingerprint:
            raise ConvertError(
                f"{out}: holds shards of a different conversion (other inputs, labels, splits, seed, codec, "
                "modalities or shard size); run with the same options, or choose an empty folder")
        start = records[-1].end if records else 0
        tar = storage.join(out, rec.name)
        if (rec.name != part_shard_name(split, len(records), part) or rec.start != start or not storage.exists(tar) or storage.size(tar) != rec.bytes
                or not storage.exists(storage.join(out, index_name(rec.name)))):
            break
        records.append(rec)
    end_url = _parts(out, _end_name(split, part))
    end = None
    if storage.exists(end_url):
        try:
            end = SplitEnd(**_read_json(end_url))
        except TypeError as exc:
            raise ConvertError(f"{end_url}: damaged commit record ({exc}); remove it and run again with --resume") from exc
        start = records[-1].end if records else 0
        if end.fingerprint != fingerprint or end.shards != len(records) or end.start != start:
            end = None
    return records, end


def _remove_unfinished(out: str, split: str, keep: int, keep_end: bool, part: Part | None = None) -> int:
    """Remove shards, index files and records of `split` (of this part) from shard `keep` on;
    returns the count."""
    removed = 0
    tag = None if part is None else part.tag
    for folder in (out, storage.join(out, PARTS)):
        for name in storage.listdir(folder):
            m = _SHARD_FILE_RE.match(name)
            if m and m["split"] == split and m["part"] == tag and int(m["i"]) >= keep:
                storage.remove(storage.join(folder, name))
                removed += name.endswith(".tar")
    if not keep_end:
        storage.remove(_parts(out, _end_name(split, part)))
    return removed


# --- parallel encoding -------------------------------------------------------------------------

def _encode_task(task: tuple[PlanEntry, SampleLayout, bool]) -> Encoded | Failed:
    return encode_entry(*task)


# --- writing one split -------------------------------------------------------------------------

class SplitWriter:
    """Appends encoded samples of one split to shards of about `shard_size` bytes."""

    def __init__(self, out: str, split: str, first_shard: int, start: int, fingerprint: str,
                 shard_size: int, part: Part | None = None, trace: str | None = None) -> None:
        self.out, self.split, self.fingerprint, self.shard_size = out, split, fingerprint, shard_size
        self.part, self.trace = part, trace
        self.shard = first_shard
        self.start = start  # first plan position of the shard being written
        self.pos = start  # next plan position
        self.records: list[ShardRecord] = []
        self._stack: ExitStack | None = None
        self._writer: TarShardWriter | None = None
        self._bytes = 0
        self._stats: BandMoments = {}
        self._rejected: list[Rejection] = []
        self._warnings: list[Rejection] = []

    @property
    def current_url(self) -> str:
        return storage.join(self.out, part_shard_name(self.split, self.shard, self.part))

    def add(self, result: Encoded | Failed) -> None:
        if isinstance(result, Failed):
            self._rejected.append(Rejection(result.key, result.reason, result.path, self.split))
        else:
            size = tar_bytes(result.members)
            # 1024: the two zero blocks that end a tar.
            if self._writer is not None and self._bytes + size + 1024 > self.shard_size:
                self._close_shard()
            if self._writer is None:
                self._stack = ExitStack()
                # Its exit is registered before its temporary exists: a Ctrl-C that lands between
                # the two (enter_context leaves that gap) would leave the temporary behind.
                shard = storage.atomic_open(self.current_url)
                self._stack.push(shard)
                self._writer = TarShardWriter(shard.__enter__())
                self._bytes = 0
            self._writer.add_sample(result.key, result.members)
            self._bytes += size
            merge(self._stats, result.stats)
            self._warnings += [Rejection(result.key, msg, path, self.split) for path, msg in result.warnings]
        self.pos += 1

    def _close_shard(self) -> None:
        assert self._writer is not None and self._stack is not None
        name = part_shard_name(self.split, self.shard, self.part)
        shard_stats = self._writer.close()
        self._stack.close()  # renames the finished tar into place
        self._stack = self._writer = None
        storage.write_text(storage.join(self.out, index_name(name)), dali_index(shard_stats.index))
        # The position after the shard's last sample: the rejections before it belong to this shard.
        end = self.pos
        rec = ShardRecord(self.fingerprint, self.split, self.shard, name, self.start, end, shard_stats.samples,
                          shard_stats.bytes, shard_stats.sha256, shard_stats.xxh3_128,
                          {k: list(v) for k, v in self._stats.items()},
                          [asdict(r) for r in self._rejected], [asdict(w) for w in self._warnings])
        _write_json(_parts(self.out, _record_name(self.split, self.shard, self.part)), asdict(rec))
        self.records.append(rec)
        if self.trace is not None:
            # Opened and closed per line: a test that makes it a FIFO holds the run right here.
            with open(self.trace, "a", encoding="utf-8") as f:
                f.write(f"{self.split} {name}\n")
        self.shard += 1
        self.start = end
        self._stats, self._rejected, self._warnings = {}, [], []

    def finish(self) -> SplitEnd:
        if self._writer is not None:
            self._close_shard()
        end = SplitEnd(self.fingerprint, self.split, self.shard, self.start, self.pos,
                       [asdict(r) for r in self._rejected], [asdict(w) for w in self._warnings])
        _write_json(_parts(self.out, _end_name(self.split, self.part)), asdict(end))
        return end

    def abort(self, exc: BaseException) -> None:
        """Drop the shard being written: its temporary goes, nothing appears under its name."""
        if self._stack is not None:
            stack, self._stack, self._writer = self._stack, None, None
            stack.__exit__(type(exc), exc, exc.__traceback__)


# --- the whole conversion ----------------------------------------------------------------------

def _make_plan(opts: ShardsOptions) -> tuple[Plan, dict[str, Any], dict[str, Any] | None]:
    """Scan the tree, get labels and splits, and plan; also the `source` part of the manifest
    and, for a part (`opts.part`), what the part manifest says about the part."""
    from convert.scan import scan_tree

    try:
        scan = scan_tree(opts.data)
    except FileNotFoundError as exc:
        raise ConvertError(str(exc)) from exc
    if not scan.triplets and not scan.problems:
        raise ConvertError(f"{opts.data}: no SEN12MS patches found (expected <season>/s2_<scene>/*.tif)")
    source: dict[str, Any] = {"data": opts.data, "seed": opts.seed}
    needed = opts.layout.modalities + (() if opts.labels else ("lc",))
    part = opts.part
    keep: Callable[[str], bool] | None = None
    own_triplets = scan.triplets
    if part is not None:
        # The scenes come from the whole tree, so every part computes the same assignment; labels
        # are derived only for the part's own triplets.
        sizes = _scene_sizes(scan)
        assignment = assign_scenes(sizes, part.count)
        mine = set(assignment[part.index - 1])
        keep = lambda key: parse_patch(key).scene_id in mine  # noqa: E731
        own_triplets = [t for t in scan.triplets if t.id.scene_id in mine]
    label_notes: list = []  # no-data pixels in lc patches that gave a label (derived labels only)
    if opts.labels:
        from sen12ms_common.datafiles import load_labels

        labels = _user_input(load_labels, opts.labels)
        label_problems: list = []
        labels_source = opts.labels
        source["labels"] = opts.labels
    else:
        from convert.labels import derive_labels

        labels, label_problems = derive_labels(own_triplets, workers=opts.workers, progress=opts.progress,
                                               warnings=label_notes)
        labels_source = "the labels derived from the lc patches"
        source["labels"] = "derived from the lc patches"
    excluded: dict[str, str] = {}
    if opts.splits:
        from sen12ms_common.datafiles import load_splits

        split_lists = _user_input(load_splits, opts.splits)
        excluded = _excluded_of(opts.splits)
        source["splits"] = opts.splits
    else:
        from convert.splits import find_holdout, load_holdout, make_splits

        holdout_path = _user_input(lambda data: find_holdout(data, None), opts.data)
        # As `convert splits` does: only triplets with every member this run needs take part.
        complete = [t.id for t in scan.triplets if all(m in t.paths for m in needed)]
        made = make_splits(complete, _user_input(load_holdout, holdout_path),
                           val_fraction=opts.val_fraction, seed=opts.seed)
        split_lists = {"train": made.train, "val": made.val, "test": made.test}
        excluded = dict(made.excluded)
        source["splits"] = {"holdout": holdout_path, "val_fraction": opts.val_fraction, "seed": opts.seed}
    plan = build_plan(scan.triplets, scan.problems, labels, label_problems, split_lists, excluded,
                      opts.layout.modalities, opts.seed, labels_source, needed,
                      keep=keep, tree_wide=part is None or part.index == 1)
    if label_notes and "lc" not in opts.layout.modalities:  # a stored lc is checked (and warned) when encoded
        split_of = {e.key: split for split, entries in plan.splits.items() for e in entries}
        plan.warnings += [Rejection(n.id, n.reason, n.path, split_of[n.id]) for n in label_notes if n.id in split_of]
    if part is None:
        return plan, source, None
    part_meta = {
        "index": part.index, "count": part.count, "scenes": [s.key for s in assignment[part.index - 1]],
        "inputs": sum(sizes[s] for s in mine), "options": _part_options(opts, split_lists, excluded, sizes),
    }
    return plan, source, part_meta


def _scene_sizes(scan: Any) -> dict[SceneId, int]:
    """Inputs (S2 keys: triplets, and ids of scan problems) per scene of the whole tree."""
    keys = {t.key for t in scan.triplets} | {p.id for p in scan.problems if p.id}
    sizes: dict[SceneId, int] = {}
    for key in keys:
        scene = parse_patch(key).scene_id
        sizes[scene] = sizes.get(scene, 0) + 1
    return sizes


def _digest(obj: Any) -> str:
    return "sha256:" + hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _part_options(opts: ShardsOptions, split_lists: Any, excluded: dict[str, str],
                  sizes: dict[SceneId, int]) -> dict[str, Any]:
    """What every part of one conversion must have in common; `convert merge-manifest` compares it.

    Paths are left out (each machine may mount the data elsewhere); the split lists, labels and
    tree enter by content."""
    layout = opts.layout
    labels = ("derived from the lc patches" if not opts.labels
              else "sha256:" + hashlib.sha256(storage.read_bytes(opts.labels)).hexdigest())
    return {
        "codec": layout.codec, "level": layout.level, "modalities": ",".join(layout.modalities),
        "shard_size": opts.shard_size, "seed": opts.seed, "labels": labels,
        "splits": _digest({"lists": {s: sorted(str(n) for n in split_lists.get(s, [])) for s in SPLITS},
                           "excluded": sorted(excluded.items())}),
        "tree": _digest(sorted([s.key, n] for s, n in sizes.items())),
        "layout": layout.to_dict(),
    }


def _excluded_of(split_dir: str) -> dict[str, str]:
    """`excluded.txt` of a `convert splits` folder (`<S2 file name>: <reason>` per line), if there is one:
    the reasons why patches are in no list."""
    from convert.splits import EXCLUDED_NAME

    url = storage.join(split_dir, EXCLUDED_NAME)
    if not storage.exists(url):
        return {}
    out: dict[str, str] = {}
    for line in storage.read_text(url).splitlines():
        name, sep, reason = line.partition(": ")
        if sep and name.strip():
            out[name.strip()] = reason.strip()
    return out


def _user_input(fn: Callable, arg: str) -> Any:
    """Call a loader of a user-given file; its errors become one-line messages."""
    import pickle

    try:
        return fn(arg)
    except (OSError, ValueError, KeyError, pickle.UnpicklingError) as exc:
        text = str(exc) if isinstance(exc, (OSError, ValueError, pickle.UnpicklingError)) else repr(exc)
        raise ConvertError(text if arg in text else f"{arg}: {text}") from exc


def convert_shards(opts: ShardsOptions, echo: Callable[[str], None] = lambda s: None) -> Outcome:
    """Run (or resume) a conversion; raises ConvertError with a one-line message."""
    t0 = time.perf_counter()
    out = opts.out
    try:
        storage.makedirs(out)
    except OSError as exc:
        raise ConvertError(f"{out}: cannot create the output folder ({exc.strerror or exc})") from exc
    part = opts.part
    conflict = _other_conversion(out, part)
    if conflict:
        raise ConvertError(conflict)
    existing = existing_shard_set(out, part)
    if existing and not opts.resume:
        n = sum(1 for name in existing if name.endswith(".tar"))
        if part is None:
            what = (f"a shard set ({MANIFEST_NAME}, {n} shards)" if MANIFEST_NAME in existing
                    else f"an unfinished conversion ({n} shards)")
        else:
            what = (f"part {part} ({n} shards)" if f"{PART_DIR}/{part_manifest_name(part)}" in existing
                    else f"an unfinished part {part} ({n} shards)")
        raise ConvertError(f"{out}: already holds {what}; pass --resume to continue it, or choose an empty folder")
    for folder in (out, storage.join(out, PARTS), storage.join(out, PART_DIR)):
        _remove_stale_temporaries(folder, part)

    plan, source, part_meta = _make_plan(opts)
    if part_meta is not None and not part_meta["scenes"]:
        echo(f"part {part}: no scenes (the tree has fewer scenes than {part.count} parts); writing an empty part")
    fingerprint = plan.fingerprint(opts.layout, opts.shard_size)
    done: dict[str, tuple[list[ShardRecord], SplitEnd | None]] = {}
    for split in SPLITS:
        records, end = _load_progress(out, split, fingerprint, part)
        removed = _remove_unfinished(out, split, len(records), end is not None, part)
        if removed:
            echo(f"{split}: removed {removed} unfinished shard(s) after the {len(records)} finished one(s)")
        done[split] = (records, end)
    if opts.resume and any(recs for recs, _ in done.values()):
        kept = sum(len(recs) for recs, _ in done.values())
        echo(f"resuming: keeping {kept} finished shard(s)")

    total = sum(len(v) for v in plan.splits.values())
    already = sum((recs[-1].end if recs else 0) if end is None else end.end for recs, end in done.values())
    from tqdm import tqdm

    processed = 0
    # The workers fork before the progress bar starts its monitor thread.
    with WorkerPool(_encode_task, opts.workers) as pool, tqdm(total=total, initial=already, unit="sample",
                                                              desc="shards", disable=not opts.progress,
                                                              dynamic_ncols=True) as bar:
        for split in SPLITS:
            records, end = done[split]
            if end is not None:
                continue
            start = records[-1].end if records else 0
            writer = SplitWriter(out, split, len(records), start, fingerprint, opts.shard_size, part,
                                 opts.trace_commits)
            bar.set_postfix_str(split)
            tasks = ((e, opts.layout, split == "train") for e in plan.splits[split][start:])
            try:
                for result in pool.map(tasks):
                    with deferred_interrupt():  # a shard is never left renamed but uncommitted
                        writer.add(result)
                    processed += 1
                    bar.update(1)
                with deferred_interrupt():
                    end = writer.finish()
            except WorkerDied as exc:
                writer.abort(exc)
                raise ConvertError("a worker process died (killed by the system, out of memory?); the finished "
                                   "shards are kept: run again with --resume (and fewer --workers)") from exc
            except OSError as exc:
                writer.abort(exc)
                try:  # a shard already renamed into place whose index or commit record failed to write
                    _remove_unfinished(out, split, len(records) + len(writer.records), True, part)
                except OSError:
                    pass  # --resume removes it
                raise ConvertError(f"{writer.current_url}: cannot write ({exc.strerror or exc}); nothing partial "
                                   "was left, the finished shards are kept: fix it and run again with --resume") from exc
            except BaseException as exc:
                writer.abort(exc)
                raise
            done[split] = (records + writer.records, end)

    try:
        manifest, report, manifest_url, report_url = _finish(out, opts, plan, done, source, part_meta)
    except OSError as exc:
        raise ConvertError(f"{out}: cannot write the manifest or report ({exc.strerror or exc}); the shards are "
                           "complete: fix it and run again with --resume") from exc
    return Outcome(manifest, report, time.perf_counter() - t0, processed, manifest_url, report_url)


def _finish(out: str, opts: ShardsOptions, plan: Plan,
            done: dict[str, tuple[list[ShardRecord], SplitEnd | None]], source: dict[str, Any],
            part_meta: dict[str, Any] | None = None) -> tuple[Manifest, dict[str, Any], str, str]:
    """Build report and manifest from the commit records, in shard order, and write them (for a
    part: its part report and part manifest, which also holds the moments behind its stats)."""
    rejected = list(plan.rejected)
    warnings = list(plan.warnings)
    totals: BandMoments = {}
    splits: dict[str, list[ShardEntry]] = {}
    converted: dict[str, int] = {}
    for split in SPLITS:
        records, end = done[split]
        assert end is not None
        splits[split] = [ShardEntry(r.name, r.samples, r.bytes, r.sha256, r.xxh3_128) for r in records]
        converted[split] = sum(r.samples for r in records)
        for r in records:
            merge(totals, {k: tuple(v) for k, v in r.stats.items()})  # type: ignore[misc]
            rejected += [Rejection(**d) for d in r.rejected]
            warnings += [Rejection(**d) for d in r.warnings]
        rejected += [Rejection(**d) for d in end.rejected]
        warnings += [Rejection(**d) for d in end.warnings]
    if UNASSIGNED in plan.inputs:
        converted[UNASSIGNED] = 0
    report = report_dict(plan.inputs, converted, rejected, warnings)
    for split, n in plan.inputs.items():
        if n != converted[split] + report["rejected_count"][split]:
            raise RuntimeError(f"bookkeeping error in {split}: {n} inputs, {converted[split]} converted, "
                               f"{report['rejected_count'][split]} rejected")
    band_order = tuple(b for m in opts.layout.modalities if m in ("s2", "s1") for b in MODALITY_BANDS[m])
    source = dict(source, shard_size=opts.shard_size, inputs=sum(plan.inputs.values()),
                  converted=sum(converted.values()), rejected=len(rejected))
    manifest = Manifest(opts.layout, splits, finish(totals, band_order), source)
    report_text = json.dumps(report, indent=2, sort_keys=True) + "\n"
    if part_meta is None:
        report_url, manifest_url = storage.join(out, REPORT_NAME), storage.join(out, MANIFEST_NAME)
        storage.write_text(report_url, report_text)
        storage.write_text(manifest_url, manifest.dumps())  # last: marks the set complete
        return manifest, report, manifest_url, report_url
    if sum(plan.inputs.values()) != part_meta["inputs"]:
        raise RuntimeError(f"bookkeeping error in part {opts.part}: {sum(plan.inputs.values())} inputs planned, "
                           f"{part_meta['inputs']} in its scenes")
    doc = manifest.to_dict()
    # JSON writes a float64 as its shortest round-trip repr: the merge reads back the exact moments.
    doc["part"] = dict(part_meta, report=part_report_name(opts.part),  # type: ignore[arg-type]
                       moments={k: [int(n), float(m), float(m2)] for k, (n, m, m2) in totals.items()})
    report_url = storage.join(out, PART_DIR, part_report_name(opts.part))  # type: ignore[arg-type]
    manifest_url = storage.join(out, PART_DIR, part_manifest_name(opts.part))  # type: ignore[arg-type]
    storage.write_text(report_url, report_text)
    storage.write_text(manifest_url, json.dumps(doc, indent=2, sort_keys=True) + "\n")  # last: the part is done
    return manifest, report, manifest_url, report_url


def report_table(r: dict[str, Any]) -> list[str]:
    """inputs = converted + rejected per split, and the total, as lines of a table."""
    inputs = r["inputs"]
    lines = [f"{'split':<11}{'inputs':>9}{'converted':>11}{'rejected':>10}"]
    for split in inputs:
        lines.append(f"{split:<11}{inputs[split]:>9}{r['converted'][split]:>11}{r['rejected_count'][split]:>10}")
    lines.append(f"{'total':<11}{sum(inputs.values()):>9}{sum(r['converted'].values()):>11}"
                 f"{sum(r['rejected_count'].values()):>10}")
    return lines


def summary_lines(outcome: Outcome, out: str, max_listed: int = 20) -> list[str]:
    m, r = outcome.manifest, outcome.report
    n_shards = sum(len(v) for v in m.splits.values())
    n_bytes = sum(s.bytes for v in m.splits.values() for s in v)
    rate = outcome.processed / outcome.seconds if outcome.seconds > 0 else 0.0
    report_url = outcome.report_url or storage.join(out, REPORT_NAME)
    lines = report_table(r)
    if r["rejected"]:
        lines.append(f"rejected ({len(r['rejected'])}):")
        for d in r["rejected"][:max_listed]:
            lines.append(f"  [{d['split'] or '-'}] {d['id']}: {d['reason']}")
        if len(r["rejected"]) > max_listed:
            lines.append(f"  ... and {len(r['rejected']) - max_listed} more in {report_url}")
    if r["warnings"]:
        lines.append(f"warnings: {len(r['warnings'])} (listed in {report_url})")
    lines.append(f"wrote {n_shards} shards ({n_bytes / 1e6:.1f} MB) in {outcome.seconds:.1f} s "
                 f"({outcome.processed} samples processed, {rate:.1f} samples/s); "
                 f"manifest: {outcome.manifest_url or storage.join(out, MANIFEST_NAME)}")
    return lines


def _default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _parse_modalities(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, ...]:
    mods = tuple(m.strip().lower() for m in value.split(",") if m.strip())
    bad = [m for m in mods if m not in ("s1", "s2", "lc")]
    if bad or not mods:
        raise click.BadParameter(f"{value!r}: expected a comma-separated subset of s1,s2,lc")
    return mods


def _parse_size(ctx: click.Context, param: click.Parameter, value: str) -> int:
    try:
        return parse_size(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


def _parse_part(ctx: click.Context, param: click.Parameter, value: str | None) -> Part | None:
    if value is None:
        return None
    try:
        return parse_part(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


@click.command("shards")
@click.option("--data", required=True, help="The SEN12MS tree (folder holding ROIs1158_spring/ ...).")
@click.option("--out", required=True, help="Output folder (or URL): shards, index files, manifest.json, report.json.")
@click.option("--labels", default=None,
              help="Probability labels: the JSON of `convert labels` or the original IGBP_probability_labels.pkl. "
                   "Default: derived from the lc patches.")
@click.option("--splits", "splits_dir", default=None,
              help="Folder with the split lists of `convert splits` (train/val/test). "
                   "Default: made from the hold-out list as `convert splits` makes them.")
@click.option("--codec", type=click.Choice(CODECS), default="zstd", show_default=True,
              help="Compression of each array member.")
@click.option("--level", type=click.IntRange(1, 22), default=None,
              help="zstd compression level (default 3; only for --codec zstd).")
@click.option("--shard-size", default="256MB", show_default=True, callback=_parse_size,
              help="Target size of a shard: 256MB, 1GB, 500KiB or bytes (a shard holds at least one sample).")
@click.option("--workers", type=click.IntRange(1, 512), default=_default_workers, show_default="all CPUs",
              help="Processes that read and encode; the output is the same for any number.")
@click.option("--modalities", default="s1,s2", show_default=True, callback=_parse_modalities,
              help="Arrays to store per sample: a subset of s1,s2,lc.")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Seed of the sample order within each split (and of the split making without --splits).")
@click.option("--resume", is_flag=True,
              help="Continue an interrupted conversion in OUT: keep its finished shards, redo the rest.")
@click.option("--val-fraction", default=0.1, show_default=True, type=click.FloatRange(0.0, 0.9),
              help="Share of the training scenes held out for validation (without --splits).")
@click.option("--part", default=None, metavar="I/N", callback=_parse_part,
              help="Convert only part I of N (counted from 1, e.g. 3/16): a fixed 1/N of the scenes, balanced by "
                   "patches, with the splits of the whole tree; one job of an array job each, into the same OUT; "
                   "then join them with `convert merge-manifest OUT`. Default: the whole tree.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")
def shards(data: str, out: str, labels: str | None, splits_dir: str | None, codec: str, level: int | None,
           shard_size: int, workers: int, modalities: tuple[str, ...], seed: int, resume: bool,
           val_fraction: float, part: Part | None, progress: bool) -> None:
    """Convert a SEN12MS tree into sharded WebDataset (train, val, test) with manifest and report."""
    if level is not None and codec != "zstd":
        raise click.BadParameter("--level applies to --codec zstd only", param_hint="--level")
    layout = SampleLayout(codec=codec, level=DEFAULT_LEVEL[codec] if level is None else level, modalities=modalities)
    opts = ShardsOptions(data, out, labels, splits_dir, layout, shard_size, workers, seed, resume, val_fraction,
                         progress, part, trace_commits=os.environ.get("SEN12MS_TRACE_COMMITS") or None)
    try:
        outcome = convert_shards(opts, echo=lambda s: click.echo(s, err=True))
    except ConvertError as exc:
        raise click.ClickException(str(exc)) from exc
    for line in summary_lines(outcome, out):
        click.echo(line)
    if part is not None:
        click.echo(f"part {part} done; once all {part.count} parts are: python -m convert merge-manifest {out}")
