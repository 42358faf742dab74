"""The conversion plan: which triplet goes into which split, in which order, and what is rejected
before a pixel is read.

Everything here is a pure function of the scan, the labels and the split lists, so a resumed run
recomputes the same plan and continues it (its fingerprint proves it is the same).
"""

from __future__ import annotations

import hashlib
import heapq
import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

import numpy as np

from convert.shards.scan import Problem, Triplet
from sen12ms_common.errors import InputError
from sen12ms_common.format.manifest import ALL_SPLITS, SPLITS, Rejection
from sen12ms_common.format.sample import SampleLayout
from sen12ms_common.vocab.igbp import check_probability
from sen12ms_common.vocab.names import part_tag
from sen12ms_common.vocab.patches import MODALITIES, SceneId, parse_patch

# Inputs that belong to no split (not in any split list) are counted under this name.
UNASSIGNED = "unassigned"
KNOWN_BROKEN_REASON = "known broken triplet (S1 holds NaN): in no split list, as in the original"

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*([kmgt]?)(i?)(b?)\s*$", re.IGNORECASE)
_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}


def parse_size(text: str | int) -> int:
    """`256MB` -> 256_000_000, `500KiB` -> 512_000, `1GB`, `4096` (bytes).

    K/M/G/T (with or without B) are powers of 1000, KiB/MiB/GiB/TiB powers of 1024.
    """
    if isinstance(text, int):
        value = text
    else:
        m = _SIZE_RE.match(str(text))
        if not m or (m[3] and not m[2]):
            raise ValueError(f"not a size: {text!r} (expected e.g. 256MB, 1GB, 500KiB or a number of bytes)")
        base = 1024 if m[3] else 1000
        value = int(float(m[1]) * base ** _POWERS[m[2].lower()])
    if value <= 0:
        raise ValueError(f"size must be positive, not {text!r}")
    return value


@dataclass(frozen=True)
class Part:
    """`--part I/N`: part `index` (1-based) of a conversion in `count` parts."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 1 <= self.index <= self.count:
            raise ValueError(f"part {self.index}/{self.count}: expected I/N with 1 <= I <= N (e.g. 3/16)")

    @property
    def tag(self) -> str:
        """In shard names: `train-p0003of0016-000000.tar`."""
        return part_tag(self.index, self.count)

    @property
    def label(self) -> str:
        """In part manifest names: `parts/manifest-0003-of-0016.json`."""
        return f"{self.index:04d}-of-{self.count:04d}"

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


_PART_RE = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def parse_part(text: str) -> Part:
    """`3/16` -> Part(3, 16)."""
    m = _PART_RE.match(str(text))
    if not m:
        raise ValueError(f"not a part: {text!r} (expected I/N, e.g. 3/16: part 3 of 16, counted from 1)")
    return Part(int(m[1]), int(m[2]))


def assign_scenes(sizes: Mapping[SceneId, int], count: int) -> list[list[SceneId]]:
    """Scenes of each of `count` parts, balanced by inputs (patches) per part.

    Greedy: scenes by size, largest first (equal sizes in scene order), each to the part with
    the fewest inputs so far (the lowest-numbered on a tie). A pure function of the sizes, so
    every machine of an array job computes the same assignment; and no part holds more than
    the lightest one plus the largest scene.
    """
    if count < 1:
        raise ValueError(f"count must be at least 1, not {count}")
    parts: list[list[SceneId]] = [[] for _ in range(count)]
    heap = [(0, i) for i in range(count)]
    for scene in sorted(sizes, key=lambda s: (-sizes[s], s)):
        load, i = heapq.heappop(heap)
        parts[i].append(scene)
        heapq.heappush(heap, (load + sizes[scene], i))
    return [sorted(p) for p in parts]


@dataclass(frozen=True)
class PlanEntry:
    """One triplet to convert: its position in its split's shuffled order is its place in the list."""

    key: str
    split: str
    paths: dict[str, str] = field(hash=False)  # the modalities to store -> path or URL
    label: tuple[float, ...] = field(hash=False)  # 17 float64 probabilities


@dataclass
class Plan:
    splits: dict[str, list[PlanEntry]]  # split -> entries in shard order (shuffled); train, val, test first
    rejected: list[Rejection]  # rejected before reading (no sibling, no label, no split, ...)
    warnings: list[Rejection]  # noticed, did not stop a conversion
    inputs: dict[str, int]  # split (or UNASSIGNED) -> input triplets attributed to it

    def fingerprint(self, layout: SampleLayout, shard_size: int) -> str:
        """What the bytes of the shards depend on: equal fingerprints, equal shards."""
        h = hashlib.sha256()
        h.update(json.dumps({"layout": layout.to_dict(), "shard_size": shard_size}, sort_keys=True).encode())
        for split in self.splits:
            for e in self.splits[split]:
                h.update(f"{split} {e.key} ".encode())
                h.update(np.asarray(e.label, dtype="<f8").tobytes())
        return h.hexdigest()


def shuffle_order(keys: list[str], seed: int, split: str) -> list[str]:
    """The shard order of a split: sorted keys permuted by a generator seeded with (seed, split)."""
    rng = np.random.default_rng([seed, ALL_SPLITS.index(split) if split in ALL_SPLITS else len(ALL_SPLITS)])
    ordered = sorted(keys)
    return [ordered[i] for i in rng.permutation(len(ordered))]


@dataclass
class _SplitLists:
    """Where the split lists put each key, and the keys they put in more than one split."""

    split_of: dict[str, str] = field(default_factory=dict)
    scene_split: dict[SceneId, set[str]] = field(default_factory=lambda: defaultdict(set))
    listed_twice: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    @classmethod
    def read(cls, split_lists: Mapping[str, Iterable[str]], warnings: list[Rejection] | None) -> "_SplitLists":
        """The lists' assignment; entries that are no patch name are warned about (where
        `warnings` is given) and skipped."""
        out = cls()
        for split in SPLITS:
            for name in split_lists.get(split, []):
                try:
                    pid = parse_patch(name)
                except InputError:
                    if warnings is not None:
                        warnings.append(Rejection(str(name), "split list entry is not a SEN12MS patch name",
                                                  split=split))
                    continue
                key = pid.key
                if key in out.split_of and out.split_of[key] != split:
                    out.listed_twice[key].append(split)
                    continue
                out.split_of[key] = split
                out.scene_split[pid.scene_id].add(split)
        return out

    def attributed(self, key: str, excluded: Mapping[str, str]) -> str:
        """The split of an input; else, for one the split making left out, train (test in a hold-out
        scene), as the original leaves the broken triplet out of its train list; else the split of
        its scene's other patches."""
        if key in self.split_of:
            return self.split_of[key]
        pid = parse_patch(key)
        scenes = self.scene_split.get(pid.scene_id, set())
        if pid.filename() in excluded or pid.is_known_broken:
            return "test" if scenes == {"test"} else "train"
        return next(iter(scenes)) if len(scenes) == 1 else UNASSIGNED


def _problems_by_key(problems: list[Problem], label_problems: list[Problem], warnings: list[Rejection]
                     ) -> tuple[dict[str, list[Problem]], dict[str, Problem]]:
    """Scan and label problems by input key; those of no input become warnings."""
    problems_of: dict[str, list[Problem]] = defaultdict(list)
    for p in problems:
        if p.id:
            problems_of[p.id].append(p)
        else:
            warnings.append(Rejection("", p.reason, p.path))
    for p in label_problems:
        if not p.id:
            warnings.append(Rejection("", p.reason, p.path))
    return problems_of, {p.id: p for p in label_problems if p.id}


def _label_reasons(t: Triplet, missing: list[str], prob: np.ndarray | None, label_problem: Problem | None,
                   labels_source: str) -> tuple[list[str], str, tuple[float, ...]]:
    """(reasons, path to name, label) of a triplet's siblings and label."""
    path = t.paths.get("s2", "")
    if missing:
        # The label and split reasons of an incomplete triplet only repeat this one.
        return ["missing sibling " + ", ".join(t.id.relpath(m) for m in missing)], path, ()
    if prob is None:
        if label_problem is None:
            return [f"no label for {t.id.filename()} in {labels_source}"], path, ()
        lp = label_problem
        return [f"no label: {lp.path}: {lp.reason}" if lp.path else f"no label: {lp.reason}"], lp.path or path, ()
    try:
        return [], path, tuple(float(v) for v in check_probability(prob))
    except InputError as exc:
        return [f"label in {labels_source}: {exc}"], path, ()


def _split_reason(t: Triplet, lists: _SplitLists, excluded: Mapping[str, str]) -> str | None:
    """Why a complete triplet is in no split, or None."""
    key, filename = t.key, t.id.filename()
    if key in lists.listed_twice:
        return f"listed in more than one split list ({', '.join([lists.split_of[key]] + lists.listed_twice[key])})"
    if key not in lists.split_of:
        return excluded.get(filename) or excluded.get(key) or (
            KNOWN_BROKEN_REASON if t.id.is_known_broken else "in no split list")
    return None


def _listed_not_found(split_lists: Mapping[str, Iterable[str]], lists: _SplitLists, tree_keys: set[str]
                      ) -> list[Rejection]:
    out = []
    for split in SPLITS:
        for name in split_lists.get(split, []):
            try:
                key = parse_patch(name).key
            except InputError:
                continue
            if key not in tree_keys and lists.split_of.get(key) == split:
                out.append(Rejection(key, f"listed in the {split} split but not found in the tree", split=split))
    return out


def _in_shard_order(planned: Mapping[str, list[PlanEntry]], inputs: dict[str, int], seed: int
                    ) -> tuple[dict[str, list[PlanEntry]], dict[str, int]]:
    splits: dict[str, list[PlanEntry]] = {}
    for split in SPLITS:
        by_key = {e.key: e for e in planned.get(split, [])}
        splits[split] = [by_key[k] for k in shuffle_order(list(by_key), seed, split)]
    ordered_inputs = {s: inputs.get(s, 0) for s in SPLITS}
    if inputs.get(UNASSIGNED):
        ordered_inputs[UNASSIGNED] = inputs[UNASSIGNED]
    return splits, ordered_inputs


def _scan_outcomes(problems_of: Mapping[str, list[Problem]], keys: set[str], lists: _SplitLists,
                   excluded: Mapping[str, str], inputs: dict[str, int], rejected: list[Rejection],
                   warnings: list[Rejection]) -> None:
    """Inputs that did not become a triplet are rejected (and counted in their split) for what
    the scan found; scan problems of a triplet that still converts (e.g. an lc file in the wrong
    folder) are warnings."""
    for key in sorted(set(problems_of) - keys):
        split = lists.attributed(key, excluded)
        inputs[split] += 1
        ps = problems_of[key]
        rejected.append(Rejection(key, "; ".join(p.reason for p in ps), ps[0].path, split))
    for key in sorted(set(problems_of) & keys):
        for p in problems_of[key]:
            warnings.append(Rejection(key, p.reason, p.path, lists.attributed(key, excluded)))


def build_plan(triplets: Iterable[Triplet], problems: Iterable[Problem],
               labels: Mapping[str, np.ndarray], label_problems: Iterable[Problem],
               split_lists: Mapping[str, Iterable[str]], excluded: Mapping[str, str],
               modalities: tuple[str, ...], seed: int, labels_source: str,
               needed: tuple[str, ...] = (), keep: Callable[[str], bool] | None = None,
               tree_wide: bool = True) -> Plan:
    """Decide the fate of every input that can be decided without reading pixels.

    Inputs are the S2 keys of the tree: the triplets, and the ids of scan problems that did not
    make a triplet (a duplicate id, an s1/lc without its s2). Each lands in exactly one split (or
    UNASSIGNED) and is either planned or rejected: for its missing siblings (`modalities` plus
    `needed`, e.g. lc to derive the label), else for every label and split reason that applies.

    A part of a conversion (`--part`) passes the whole tree and split lists with `keep`, which
    selects its inputs (by key); `tree_wide` says whether this plan also reports what belongs
    to no input (files that are no patch, split list entries not in the tree): one part does.
    """
    triplets = sorted(triplets, key=lambda t: t.key)
    problems, label_problems = list(problems), list(label_problems)
    tree_keys = {t.key for t in triplets} | {p.id for p in problems if p.id}
    if keep is not None:
        triplets = [t for t in triplets if keep(t.key)]
        problems = [p for p in problems if (keep(p.id) if p.id else tree_wide)]
        label_problems = [p for p in label_problems if not p.id or keep(p.id)]
    rejected: list[Rejection] = []
    warnings: list[Rejection] = []
    lists = _SplitLists.read(split_lists, warnings if tree_wide else None)
    problems_of, label_problem_of = _problems_by_key(problems, label_problems, warnings)

    inputs: dict[str, int] = defaultdict(int)
    _scan_outcomes(problems_of, {t.key for t in triplets}, lists, excluded, inputs, rejected, warnings)
    planned: dict[str, list[PlanEntry]] = defaultdict(list)
    for t in triplets:
        split = lists.attributed(t.key, excluded)
        inputs[split] += 1
        missing = [m for m in MODALITIES if (m in modalities or m in needed) and m not in t.paths]
        reasons, path, label = _label_reasons(t, missing, labels.get(t.id.filename()),
                                              label_problem_of.get(t.key), labels_source)
        split_reason = None if missing else _split_reason(t, lists, excluded)
        if split_reason:
            reasons.append(split_reason)
        if reasons:
            rejected.append(Rejection(t.key, "; ".join(reasons), path, split))
        else:
            planned[split].append(PlanEntry(t.key, split, {m: t.paths[m] for m in modalities}, label))

    if tree_wide:
        warnings += _listed_not_found(split_lists, lists, tree_keys)
    splits, ordered_inputs = _in_shard_order(planned, inputs, seed)
    return Plan(splits, rejected, warnings, ordered_inputs)
