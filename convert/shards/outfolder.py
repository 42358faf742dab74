"""The output folder of `convert shards`: the names the converter writes into OUT, and what OUT
holds, read from one listing (`OutState.read`): which files are the converter's, which conversion
they belong to, how far it got, and what an interrupted run of it left to remove."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from convert.shards.plan import Part
from sen12ms_common.errors import ConvertError
from sen12ms_common.format.manifest import MANIFEST_NAME, REPORT_NAME, index_name, shard_name
from sen12ms_common.storage import files as storage
from sen12ms_common.vocab.names import ALL_SPLITS, PART_TAG, SHARD_FILE_RE, SPLITS

PARTS = ".parts"  # commit records and options of each conversion or part (resume)
PART_DIR = "parts"  # part manifests and reports of a conversion in parts (merge)
_SPLIT = "|".join(ALL_SPLITS)
_TAG = PART_TAG
RECORD_RE = re.compile(rf"^(?P<split>{_SPLIT})-(?:(?P<part>{_TAG})-)?(?P<i>\d{{6}})\.json$")
END_FILE_RE = re.compile(rf"^(?P<split>{_SPLIT})(?:-(?P<part>{_TAG}))?\.end\.json$")
OPTIONS_RE = re.compile(rf"^options(?:-(?P<part>{_TAG}))?\.json$")
PART_FILE_RE = re.compile(r"^(?P<kind>manifest|report)-(?P<i>\d{4,})-of-(?P<n>\d{4,})\.json$")
LOCK_RE = re.compile(rf"^\.lock(?:-(?P<part>{_TAG}))?-(?P<token>[0-9a-f]{{12}})\.json$")
# storage.temporary_name: `.<name>.tmp-<owner>-<8 hex>`; the converter's owner is its lock token.
TEMP_RE = re.compile(r"^\.(?P<target>.+)\.tmp-(?P<owner>[^-]+)-[0-9a-f]{8}$")
CONTENT_KINDS = ("shard", "index", "record", "end", "partdoc")  # what a conversion (or part) consists of


def tag(part: Part | None) -> str | None:
    return None if part is None else part.tag


def stem(split: str, part: Part | None) -> str:
    """What shard names of a split start with: `train`, or `train-p0003of0016` for a part."""
    return split if part is None else f"{split}-{part.tag}"


def part_shard_name(split: str, shard: int, part: Part | None = None) -> str:
    return shard_name(stem(split, part), shard)


def record_name(split: str, shard: int, part: Part | None = None) -> str:
    return part_shard_name(split, shard, part)[: -len(".tar")] + ".json"


def end_name(split: str, part: Part | None = None) -> str:
    return f"{stem(split, part)}.end.json"


def options_name(part: Part | None = None) -> str:
    return "options.json" if part is None else f"options-{part.tag}.json"


def lock_name(part: Part | None, token: str) -> str:
    return f".lock-{token}.json" if part is None else f".lock-{part.tag}-{token}.json"


def is_lock(path: str) -> bool:
    return bool(LOCK_RE.match(path))


def part_manifest_name(part: Part) -> str:
    return f"manifest-{part.label}.json"


def part_report_name(part: Part) -> str:
    return f"report-{part.label}.json"


def part_count_of(part_tag: str) -> int:
    """N of a part tag: `p0003of0016` -> 16."""
    return int(part_tag.partition("of")[2])


def tag_of(name: str) -> str | None | bool:
    """The part tag of a shard or index name in OUT (None: made without --part); False for other names."""
    m = SHARD_FILE_RE.match(name)
    return m["part"] if m else False


def write_json(url: str, obj: Any, owner: str | None = None) -> None:
    storage.write_text(url, json.dumps(obj, sort_keys=True, indent=1) + "\n", owner)


def read_json(url: str) -> Any:
    try:
        return json.loads(storage.read_text(url))
    except ValueError as exc:
        raise ConvertError(f"{url}: damaged commit record ({exc}); remove it and run again with --resume") from exc


@dataclass(frozen=True)
class Entry:
    """A file in OUT named as the converter names its files."""

    path: str  # relative to OUT, '/'-separated
    kind: str  # manifest, report, shard, index, record, end, options, partdoc, lock, temp
    tag: str | None  # the part it belongs to (None: a conversion without --part)
    split: str = ""
    index: int = -1
    owner: str = ""  # lock: its token; temp: the token of the process that writes it
    target: str = ""  # temp: the path it is written for


def classify(path: str) -> Entry | None:
    """What a path of OUT is, by its name; None for names the converter never writes."""
    folder, _, name = path.rpartition("/")
    if "/" in folder:
        return None
    m = TEMP_RE.match(name)
    if m:
        target = classify(f"{folder}/{m['target']}" if folder else m["target"])
        if target is None or target.kind == "temp":
            return None
        return Entry(path, "temp", target.tag, target.split, target.index, m["owner"], target.path)
    if folder == "":
        if name in (MANIFEST_NAME, REPORT_NAME):
            return Entry(path, name.partition(".")[0], None)
        if m := SHARD_FILE_RE.match(name):
            return Entry(path, "shard" if m["ext"] == "tar" else "index", m["part"], m["split"], int(m["i"]))
        if m := LOCK_RE.match(name):
            return Entry(path, "lock", m["part"], owner=m["token"])
    elif folder == PARTS:
        if m := RECORD_RE.match(name):
            return Entry(path, "record", m["part"], m["split"], int(m["i"]))
        if m := END_FILE_RE.match(name):
            return Entry(path, "end", m["part"], m["split"])
        if m := OPTIONS_RE.match(name):
            return Entry(path, "options", m["part"])
    elif folder == PART_DIR and (m := PART_FILE_RE.match(name)):
        return Entry(path, "partdoc", f"p{int(m['i']):04d}of{int(m['n']):04d}")
    return None


def _order(e: Entry) -> tuple[int, str]:
    """Listing order of the examples in messages: OUT, then .parts/, then parts/."""
    folder = e.path.rpartition("/")[0]
    return ({"": 0, PARTS: 1, PART_DIR: 2}.get(folder, 3), e.path)


def _example(e: Entry) -> str:
    return e.path if e.path.startswith(PART_DIR + "/") else e.path.rpartition("/")[2]


@dataclass
class OutState:
    """Everything OUT holds, from one listing."""

    out: str
    sizes: dict[str, int]  # path relative to OUT -> bytes
    entries: list[Entry] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)  # files the converter did not write

    @classmethod
    def read(cls, out: str) -> OutState:
        state = cls(out, storage.find_sizes(out))
        for path in sorted(state.sizes):
            e = classify(path)
            (state.foreign.append(path) if e is None else state.entries.append(e))
        state.entries.sort(key=_order)
        ends: dict[str | None, set[str]] = {}
        for e in state.entries:
            if e.kind == "end":
                ends.setdefault(e.tag, set()).add(e.split)
        if not any(set(SPLITS) <= splits for splits in ends.values()):
            # A manifest or report is written only after every split of a conversion ended.
            state.foreign += [e.path for e in state.entries if e.kind in ("manifest", "report")]
            state.entries = [e for e in state.entries if e.kind not in ("manifest", "report")]
            state.foreign.sort()
        return state

    def url(self, path: str) -> str:
        return storage.join(self.out, *path.split("/"))

    def of(self, part: Part | None, *kinds: str) -> list[Entry]:
        return [e for e in self.entries if e.tag == tag(part) and (not kinds or e.kind in kinds)]

    def has(self, path: str) -> bool:
        return path in self.sizes

    def check_foreign(self) -> None:
        if self.foreign:
            listed = ", ".join(self.foreign[:3]) + (f" and {len(self.foreign) - 3} more" if len(self.foreign) > 3 else "")
            raise ConvertError(f"{self.out}: holds files that `convert shards` did not write ({listed}); it never "
                               "overwrites or deletes them: choose an empty folder, or move them away")

    def check_other_conversion(self, part: Part | None) -> None:
        """A run with --part never shares OUT with one without, nor with parts of another count."""
        content = [e for e in self.entries if e.kind in CONTENT_KINDS + ("options",)]
        tagged = [e for e in content if e.tag is not None]
        if part is None:
            if tagged:
                raise ConvertError(f"{self.out}: holds parts of a conversion with --part (e.g. {_example(tagged[0])}); "
                                   "join them with `convert merge-manifest`, or choose an empty folder")
            return
        plain = [e for e in content if e.tag is None]
        if plain:
            raise ConvertError(f"{self.out}: holds a conversion without --part (e.g. {_example(plain[0])}); convert "
                               "the parts into an empty folder")
        other = [e for e in tagged if part_count_of(str(e.tag)) != part.count]
        if other:
            n = part_count_of(str(other[0].tag))
            raise ConvertError(f"{self.out}: holds parts of a conversion in {n} parts (e.g. {_example(other[0])}), not "
                               f"{part.count}; use --part I/{n}, or choose an empty folder")

    def check_fresh(self, part: Part | None) -> None:
        """Without --resume: OUT holds nothing of this conversion (or part)."""
        mine = self.of(part, *CONTENT_KINDS, "manifest")
        if not mine:
            return
        n = sum(e.kind == "shard" for e in mine)
        if part is None:
            what = (f"a shard set ({MANIFEST_NAME}, {n} shards)" if any(e.kind == "manifest" for e in mine)
                    else f"an unfinished conversion ({n} shards)")
        else:
            done = self.has(f"{PART_DIR}/{part_manifest_name(part)}")
            what = f"part {part} ({n} shards)" if done else f"an unfinished part {part} ({n} shards)"
        raise ConvertError(f"{self.out}: already holds {what}; pass --resume to continue it, or choose an empty folder")


# --- how far a conversion got, and what its interrupted runs left ----------------------------------

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
class Resume:
    """Where a conversion (or part) continues, and what of it is to be removed first."""

    done: dict[str, tuple[list[ShardRecord], SplitEnd | None]]
    remove: list[str]  # paths relative to OUT, the converter's own, to remove before continuing
    removed_shards: dict[str, int]  # split -> shards among them


def _read_all(state: OutState, paths: list[str]) -> dict[str, Any]:
    """path -> parsed JSON, read in parallel on object stores (one request each)."""
    urls = [state.url(p) for p in paths]
    if storage.is_remote(state.out) and len(urls) > 1:
        with ThreadPoolExecutor(16) as pool:
            return dict(zip(paths, pool.map(read_json, urls)))
    return {p: read_json(u) for p, u in zip(paths, urls)}


def _typed(cls: type, obj: Any, url: str) -> Any:
    try:
        return cls(**obj)
    except TypeError as exc:
        raise ConvertError(f"{url}: damaged commit record ({exc}); remove it and run again with --resume") from exc


def resume_point(state: OutState, part: Part | None, fingerprint: str, crashed: bool,
                 splits: tuple[str, ...] = SPLITS) -> Resume:
    """The consecutive finished shards of each split (and its end record if it is complete), and
    what follows them. `crashed`: a run of this conversion died holding its lock, so a shard of the
    next number without a record is its own (renamed into place before its record was written)."""
    docs = _read_all(state, [e.path for e in state.of(part, "record", "end")])
    done: dict[str, tuple[list[ShardRecord], SplitEnd | None]] = {}
    remove: list[str] = []
    removed: dict[str, int] = {}
    unknown: list[str] = []
    for split in splits:
        records: list[ShardRecord] = []
        for e in sorted(state.of(part, "record"), key=lambda e: e.index):
            if e.split != split:
                continue
            rec = _typed(ShardRecord, docs[e.path], state.url(e.path))
            if rec.fingerprint != fingerprint:
                raise ConvertError(f"{state.out}: holds shards of a different conversion (other inputs, labels, "
                                   "splits, seed, codec, modalities or shard size); run with the same options, or "
                                   "choose an empty folder")
            start = records[-1].end if records else 0
            if (e.index == len(records) and rec.name == part_shard_name(split, e.index, part) and rec.start == start
                    and state.sizes.get(rec.name) == rec.bytes and state.has(index_name(rec.name))):
                records.append(rec)
        n = len(records)
        later = [e for e in state.of(part, "record") if e.split == split and e.index >= n]
        remove += [e.path for e in later]
        named = {docs[e.path].get("name") for e in later if isinstance(docs[e.path], dict)}
        for e in state.of(part, "shard", "index"):
            if e.split != split or e.index < n:
                continue
            if part_shard_name(split, e.index, part) in named or (crashed and e.index == n):
                remove.append(e.path)
                removed[split] = removed.get(split, 0) + (e.kind == "shard")
            else:
                unknown.append(e.path)
        end = _end(state, part, split, docs, fingerprint, records)
        if end is None and state.has(f"{PARTS}/{end_name(split, part)}"):
            remove.append(f"{PARTS}/{end_name(split, part)}")
        done[split] = (records, end)
    if unknown:
        raise ConvertError(f"{state.out}: holds {', '.join(unknown[:3])}{' ...' if len(unknown) > 3 else ''}, named as "
                           "this conversion names its shards but in none of its commit records (not written by it?): "
                           "it is never overwritten or deleted; move it away and run again")
    return Resume(done, remove, removed)


def _end(state: OutState, part: Part | None, split: str, docs: dict[str, Any], fingerprint: str,
         records: list[ShardRecord]) -> SplitEnd | None:
    path = f"{PARTS}/{end_name(split, part)}"
    if path not in docs:
        return None
    end = _typed(SplitEnd, docs[path], state.url(path))
    start = records[-1].end if records else 0
    if end.fingerprint != fingerprint or end.shards != len(records) or end.start != start:
        return None
    return end
