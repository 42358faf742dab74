"""A run of `convert shards` (or of one part of it): take OUT's lock, read OUT, plan, continue
where an earlier run of the conversion stopped, write the shards of each split (each committed
with a record in OUT/.parts/), then the report and manifest. docs/FORMAT.md describes the files."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable


from convert.shards.assembly import PlanOptions, Planned, make_plan, options_difference
from convert.shards.dfcplan import dfc2020_layout
from convert.shards.encode import Encoded, Failed, encode_entry
from convert.shards.interrupts import deferred_interrupt
from convert.shards.outfolder import (CONTENT_KINDS, PART_DIR, PARTS, Entry, OutState, Resume, ShardRecord, SplitEnd,
                                      is_lock, options_name, part_manifest_name, part_report_name, read_json,
                                      resume_point, write_json)
from convert.shards.outlock import OutLock
from convert.shards.plan import UNASSIGNED, Part, PlanEntry
from convert.shards.stats import BandMoments, finish, merge
from convert.shards.summary import verdict
from convert.shards.writer import SplitWriter
from convert.workers import WorkerPool, _WorkerDied
from sen12ms_common.errors import ConvertError
from sen12ms_common.format.manifest import (DFC2020_SPLITS, MANIFEST_NAME, REPORT_NAME, Manifest, Rejection, ShardEntry,
                                            report_dict)
from sen12ms_common.format.sample import SampleLayout
from sen12ms_common.progress import Counter, ProgressOptions, as_options, status
from sen12ms_common.storage import files as storage
from sen12ms_common.vocab.bands import MODALITY_BANDS

Done = dict[str, tuple[list[ShardRecord], SplitEnd | None]]


@dataclass
class ShardsOptions:
    data: str | tuple[str, ...]  # one tree, or several converted together
    out: str
    labels: str | None = None
    splits: str | None = None
    layout: SampleLayout = field(default_factory=SampleLayout)
    shard_size: int = 256_000_000
    workers: int = 1
    seed: int = 0
    resume: bool = False
    val_fraction: float = 0.1
    progress: bool | ProgressOptions = True
    part: Part | None = None  # convert only this part of the scenes
    max_rejected: float = 0.05  # fail when more than this share of the inputs is rejected
    break_lock: bool = False  # take over the stale lock of a run on another machine
    on_commit: Callable[[str, str], None] | None = None  # called with (split, shard name) after each commit

    def plan_options(self) -> PlanOptions:
        return PlanOptions(self.data, self.labels, self.splits, self.layout, self.shard_size, self.seed,
                           self.val_fraction, self.part, self.workers, self.progress)


@dataclass
class Outcome:
    manifest: Manifest
    report: dict[str, Any]
    seconds: float
    processed: int  # inputs read by this run (not those kept from an earlier one)
    manifest_url: str = ""
    report_url: str = ""


def convert_shards(opts: ShardsOptions, echo: Callable[[str], None] = lambda s: None) -> Outcome:
    """Run (or resume) a conversion; raises ConvertError with a one-line message."""
    t0 = time.perf_counter()
    try:
        storage.makedirs(opts.out)
    except OSError as exc:
        raise ConvertError(f"{opts.out}: cannot create the output folder ({exc.strerror or exc})") from exc
    with OutLock(opts.out, opts.part, opts.break_lock) as lock:
        state = OutState.read(opts.out)  # the one listing: after the lock, so that it cannot change under us
        gone = lock.check(state)
        state.check_foreign()
        state.check_other_conversion(opts.part)
        if not opts.resume:
            state.check_fresh(opts.part)
        temporaries = _temporaries(state, opts.part, gone, lock.token) + lock.orphans(state)
        planned = make_plan(opts.plan_options())
        part = opts.part
        if part is not None and not planned.part_meta["scenes"]:  # type: ignore[index]
            echo(f"part {part}: no scenes (the tree has fewer scenes than {part.count} parts); writing an empty part")
        resume = _resume(state, opts, planned, gone + temporaries, lock.token, echo)
        done, processed = _convert_splits(opts, planned, resume, lock)
        # On object storage this takes a while after the bar reached 100 %: say so.
        status(as_options(opts.progress), f"shards: writing the report and the manifest to {opts.out}...")
        try:
            manifest, report, manifest_url, report_url = _finish(opts, planned, done, lock.token)
        except OSError as exc:
            raise ConvertError(f"{opts.out}: cannot write the manifest or report ({exc.strerror or exc}); the shards "
                               "are complete: fix it and run again with --resume") from exc
    return Outcome(manifest, report, time.perf_counter() - t0, processed, manifest_url, report_url)


def _temporaries(state: OutState, part: Part | None, gone: list[Entry], token: str) -> list[Entry]:
    """The temporaries of this conversion's runs that are gone; refuses one whose run is unknown."""
    dead = {e.owner for e in gone}
    # A lock's own temporary without its lock: a run killed while it took the lock; never in the
    # way, removed when its holder is gone (OutLock.orphans).
    strays = [e.path for e in state.of(part, "temp") if e.owner not in dead | {token} and not is_lock(e.target)]
    if strays:
        raise ConvertError(f"{state.out}: holds {strays[0]}, a temporary of a run whose lock is gone (or of another "
                           "program); it is never deleted: remove it if no conversion is writing, and run again")
    return [e for e in state.of(part, "temp") if e.owner in dead]


def _resume(state: OutState, opts: ShardsOptions, planned: Planned, leftovers: list[Entry], token: str,
            echo: Callable[[str], None]) -> Resume:
    """Check that OUT holds this conversion (or nothing of it), and remove what interrupted runs of
    it left: shards after the last committed one; `leftovers`: the locks and temporaries of runs
    of it that are gone."""
    part = opts.part
    options_path = f"{PARTS}/{options_name(part)}"
    started = bool(state.of(part, *CONTENT_KINDS))  # else its options are those of a run that wrote nothing
    if started and state.has(options_path):
        differs = options_difference(read_json(state.url(options_path)), planned.options)
        if differs:
            raise ConvertError(f"{opts.out}: holds shards of a different conversion, made with {differs}; run with "
                               "the same options, or choose an empty folder")
    crashed = any(e.kind == "lock" for e in leftovers)
    resume = resume_point(state, part, planned.plan.fingerprint(opts.layout, opts.shard_size), crashed,
                          tuple(planned.plan.splits))
    locks = [e.path for e in leftovers if e.kind == "lock"]
    for path in [e.path for e in leftovers if e.kind != "lock"] + resume.remove + locks:  # the locks last
        storage.remove(state.url(path))
    for split, (records, _) in resume.done.items():
        if resume.removed_shards.get(split):
            echo(f"{split}: removed {resume.removed_shards[split]} unfinished shard(s) after the {len(records)} "
                 "finished one(s)")
    if opts.resume and any(records for records, _ in resume.done.values()):
        echo(f"resuming: keeping {sum(len(records) for records, _ in resume.done.values())} finished shard(s)")
    if not (started and state.has(options_path)):
        write_json(state.url(options_path), planned.options, token)
    return resume


def split_layout(layout: SampleLayout, split: str) -> SampleLayout:
    """The layout of a split's samples (DFC2020 splits: dfc masks, no labels)."""
    return dfc2020_layout(layout) if split in DFC2020_SPLITS else layout


def _encode_task(task: tuple[PlanEntry, SampleLayout, bool]) -> Encoded | Failed:
    return encode_entry(*task)


def _convert_splits(opts: ShardsOptions, planned: Planned, resume: Resume, lock: OutLock) -> tuple[Done, int]:
    """Write the splits that are not complete yet; returns every split's records and end, and the
    number of inputs this run read."""
    plan, done = planned.plan, dict(resume.done)
    fingerprint = plan.fingerprint(opts.layout, opts.shard_size)
    total = sum(len(v) for v in plan.splits.values())
    already = sum((recs[-1].end if recs else 0) if end is None else end.end for recs, end in done.values())
    processed = 0
    # The workers fork before the progress bar starts its monitor thread.
    with WorkerPool(_encode_task, opts.workers) as pool, \
            Counter(as_options(opts.progress), "shards", total, "sample", initial=already) as bar:
        for split in plan.splits:
            records, end = done[split]
            if end is not None:
                continue
            start = records[-1].end if records else 0
            writer = SplitWriter(opts.out, split, len(records), start, fingerprint, opts.shard_size, opts.part,
                                 lock.token, opts.on_commit)
            bar.note(split)
            layout = split_layout(opts.layout, split)
            tasks = ((e, layout, split == "train") for e in plan.splits[split][start:])
            try:
                for result in pool.map(tasks):
                    with deferred_interrupt():  # a shard is never left renamed but uncommitted
                        writer.add(result)
                    processed += 1
                    bar.update(1)
                bar.note(f"{split}: writing its last shard")
                with deferred_interrupt():
                    end = writer.finish()
            except (_WorkerDied, OSError) as exc:
                lock.keep = not writer.abort(exc)
                raise _failure(exc, writer) from exc
            except BaseException as exc:
                lock.keep = not writer.abort(exc)
                raise
            done[split] = (records + writer.records, end)
    return done, processed


def _failure(exc: BaseException, writer: SplitWriter) -> BaseException:
    if isinstance(exc, _WorkerDied):
        return ConvertError("a worker process died (killed by the system, out of memory?); the finished shards are "
                            "kept: run again with --resume (and fewer --workers)")
    assert isinstance(exc, OSError)
    return ConvertError(f"{writer.current_url}: cannot write ({exc.strerror or exc}); nothing partial was left, the "
                        "finished shards are kept: fix it and run again with --resume")


def _finish(opts: ShardsOptions, planned: Planned, done: Done, token: str
            ) -> tuple[Manifest, dict[str, Any], str, str]:
    """Build report and manifest from the commit records, in shard order, and write them (for a
    part: its part report and part manifest, which also holds the moments behind its stats). A
    run that converted nothing, or rejected more than --max-rejected, writes only the report."""
    plan, out, part = planned.plan, opts.out, opts.part
    rejected, warnings = list(plan.rejected), list(plan.warnings)
    totals: BandMoments = {}
    splits: dict[str, list[ShardEntry]] = {}
    converted: dict[str, int] = {}
    for split in plan.splits:
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
    source = dict(planned.source, shard_size=opts.shard_size, inputs=sum(plan.inputs.values()),
                  converted=sum(converted.values()), rejected=len(rejected))
    own = {s: split_layout(opts.layout, s) for s in splits if s in DFC2020_SPLITS}
    manifest = Manifest(opts.layout, splits, finish(totals, band_order), source, split_layouts=own)
    if part is None:
        report_url, manifest_url = storage.join(out, REPORT_NAME), storage.join(out, MANIFEST_NAME)
        manifest_text = manifest.dumps()
    else:
        report_url = storage.join(out, PART_DIR, part_report_name(part))
        manifest_url = storage.join(out, PART_DIR, part_manifest_name(part))
        manifest_text = _part_manifest(opts, planned, manifest, totals)
    _write_final(report_url, json.dumps(report, indent=2, sort_keys=True) + "\n", token)
    failed = verdict(report, opts.max_rejected, report_url)
    if failed:
        raise ConvertError(f"{out}: {failed}")
    _write_final(manifest_url, manifest_text, token)  # last: marks the set (or part) complete
    return manifest, report, manifest_url, report_url


def _write_final(url: str, text: str, token: str) -> None:
    """Write the report or the manifest; a failure (a full disk) names that file."""
    try:
        storage.write_text(url, text, token)
    except OSError as exc:
        raise ConvertError(f"{url}: cannot write ({exc.strerror or exc}); the shards are complete: fix it and run "
                           "again with --resume") from exc


def _part_manifest(opts: ShardsOptions, planned: Planned, manifest: Manifest, totals: BandMoments) -> str:
    part, meta = opts.part, planned.part_meta
    assert part is not None and meta is not None
    if sum(planned.plan.inputs.values()) != meta["inputs"]:
        raise RuntimeError(f"bookkeeping error in part {part}: {sum(planned.plan.inputs.values())} inputs planned, "
                           f"{meta['inputs']} in its scenes")
    doc = manifest.to_dict()
    # JSON writes a float64 as its shortest round-trip repr: the merge reads back the exact moments.
    doc["part"] = dict(meta, report=part_report_name(part),
                       moments={k: [int(n), float(m), float(m2)] for k, (n, m, m2) in totals.items()})
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"
