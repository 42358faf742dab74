"""The plan of a `convert shards` run from its options: scan the tree(s), read or derive the labels,
read or make the splits, and plan (`convert.shards.plan.build_plan`; DFC2020 patches: `convert.shards.dfcplan`);
for a part, only its scenes."""

from __future__ import annotations

import hashlib
import json
import pickle
import re
from dataclasses import dataclass
from typing import Any, Callable

from convert.datafiles.labels import derive_labels
from convert.datafiles.splits import EXCLUDED_NAME, find_holdout, load_holdout, make_splits
from convert.shards.dfcplan import is_dfc2020_key, plan_dfc2020
from convert.shards.plan import Part, Plan, assign_scenes, build_plan
from convert.shards.scan import ScanResult, scan_tree
from sen12ms_common.datafiles.read import load_labels, load_splits, read_excluded, read_split_list
from sen12ms_common.errors import ConvertError
from sen12ms_common.format.manifest import SPLITS, Rejection
from sen12ms_common.format.sample import SampleLayout
from sen12ms_common.progress import ProgressOptions
from sen12ms_common.storage import files as storage
from sen12ms_common.storage.redaction import redact
from sen12ms_common.vocab.patches import SEASONS, SceneId, parse_any_patch, parse_patch
from sen12ms_common.vocab.synthetic import is_synthetic

_SCENE_FOLDER_RE = re.compile(r"^(?:s1|s2|lc)_\d+$")


@dataclass(frozen=True)
class PlanOptions:
    """What the plan depends on (a part of `convert.shards.conversion.ShardsOptions`)."""

    data: str | tuple[str, ...]  # one tree, or several converted together (SEN12MS and DFC2020)
    labels: str | None
    splits: str | None
    layout: SampleLayout
    shard_size: int
    seed: int
    val_fraction: float
    part: Part | None
    workers: int = 1
    progress: bool | ProgressOptions = False


@dataclass
class Planned:
    plan: Plan
    source: dict[str, Any]  # the manifest's `source` section
    options: dict[str, Any]  # what every run continuing this conversion must have in common
    part_meta: dict[str, Any] | None  # for a part: what its part manifest says about it


def data_roots(data: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    return (data,) if isinstance(data, str) else tuple(data)


def _scan(roots: tuple[str, ...]) -> tuple[Any, str]:
    """All trees' triplets and problems, and the first tree with SEN12MS patches (whose hold-out
    list counts); a DFC2020 tree is recognised by its folder names."""
    whole, sen12ms_root = ScanResult([], []), ""
    for root in roots:
        try:
            scan = scan_tree(root, dfc2020=None)
        except FileNotFoundError as exc:
            raise ConvertError(str(exc)) from exc
        if not scan.triplets:
            _check_data_folder(root, bool(scan.problems))
        whole.triplets += scan.triplets
        whole.problems += scan.problems
        if not sen12ms_root and any(not is_dfc2020_key(t.key) for t in scan.triplets):
            sen12ms_root = root
    seen: dict[str, str] = {}
    for t in whole.triplets:
        if t.key in seen:
            raise ConvertError(f"{t.paths['s2']}: patch {t.key} is also in another --data tree ({seen[t.key]})")
        seen[t.key] = t.paths["s2"]
    return whole, sen12ms_root or roots[0]


def make_plan(opts: PlanOptions) -> Planned:
    """Scan the tree(s), get labels and splits, and plan."""
    roots = data_roots(opts.data)
    whole, sen12ms_root = _scan(roots)
    dfc = ScanResult([t for t in whole.triplets if is_dfc2020_key(t.key)],
                     [p for p in whole.problems if p.id and is_dfc2020_key(p.id)])
    scan = ScanResult([t for t in whole.triplets if not is_dfc2020_key(t.key)],
                      [p for p in whole.problems if not (p.id and is_dfc2020_key(p.id))])
    if opts.part is not None and dfc.triplets + dfc.problems:
        raise ConvertError(f"{dfc.problems[0].path if dfc.problems else dfc.triplets[0].paths['s2']}: a DFC2020 "
                           "patch; a conversion in parts (--part) takes SEN12MS trees only: convert the DFC2020 "
                           "tree in one run")
    source: dict[str, Any] = {"data": redact(opts.data) if isinstance(opts.data, str) else [redact(d) for d in opts.data],
                              "seed": opts.seed}
    if any(is_synthetic(root) for root in roots):
        source["synthetic"] = True  # written by `convert synth`: the overview of the shards says so
    needed = opts.layout.modalities + (() if opts.labels else ("lc",))
    sizes = scene_sizes(scan)
    part, keep, own_triplets, mine = opts.part, None, scan.triplets, None
    if part is not None:
        # The scenes come from the whole tree, so every part computes the same assignment; labels
        # are derived only for the part's own triplets.
        mine = assign_scenes(sizes, part.count)[part.index - 1]
        keep = _scene_filter(set(mine))
        own_triplets = [t for t in scan.triplets if t.id.scene_id in set(mine)]
    labels, label_problems, labels_source, label_notes = _labels(opts, own_triplets, source)
    split_lists, excluded = _splits(opts, scan, needed, source, sen12ms_root)
    plan = build_plan(scan.triplets, scan.problems, labels, label_problems, split_lists, excluded,
                      opts.layout.modalities, opts.seed, labels_source, needed,
                      keep=keep, tree_wide=part is None or part.index == 1)
    if dfc.triplets or dfc.problems:
        extra = plan_dfc2020(dfc.triplets, dfc.problems, opts.layout, opts.seed)
        plan.splits.update(extra.splits)
        plan.rejected += extra.rejected
        plan.warnings += extra.warnings
        plan.inputs = {**{s: plan.inputs[s] for s in SPLITS}, **extra.inputs,
                       **{s: n for s, n in plan.inputs.items() if s not in SPLITS}}
        sizes = scene_sizes(whole)
    if label_notes and "lc" not in opts.layout.modalities:  # a stored lc is checked (and warned) when encoded
        split_of = {e.key: split for split, entries in plan.splits.items() for e in entries}
        plan.warnings += [Rejection(n.id, n.reason, n.path, split_of[n.id]) for n in label_notes if n.id in split_of]
    options = run_options(opts, split_lists, excluded, sizes)
    if part is None or mine is None:
        return Planned(plan, source, options, None)
    part_meta = {"index": part.index, "count": part.count, "scenes": [s.key for s in mine],
                 "inputs": sum(sizes[s] for s in mine), "options": options}
    return Planned(plan, source, options, part_meta)


def _scene_filter(scenes: set[SceneId]) -> Callable[[str], bool]:
    return lambda key: parse_patch(key).scene_id in scenes


def _check_data_folder(data: str, found_files: bool) -> None:
    """No triplet in --data: say which folder to give when it is a season or scene folder."""
    name = storage.basename(data)
    parent = data.rstrip("/").rpartition("/")[0] or "."
    if name in SEASONS:
        raise ConvertError(f"{data}: is a season folder of a SEN12MS tree, not the tree; give the folder that holds "
                           f"the season folders: --data {parent}")
    if _SCENE_FOLDER_RE.match(name) and storage.basename(parent) in SEASONS:
        tree = parent.rpartition("/")[0] or "."
        raise ConvertError(f"{data}: is a scene folder of a SEN12MS tree, not the tree; give the folder that holds "
                           f"the season folders: --data {tree}")
    if not found_files:
        raise ConvertError(f"{data}: no SEN12MS patches found (expected <season>/s2_<scene>/*.tif)")


def _labels(opts: PlanOptions, own_triplets: list, source: dict[str, Any]) -> tuple[Any, list, str, list]:
    """(labels, label problems, where they come from, no-data notes of derived labels)."""
    if opts.labels:
        labels = _load_labels(opts.labels)
        source["labels"] = redact(opts.labels)
        return labels, [], opts.labels, []

    notes: list = []  # no-data pixels in lc patches that gave a label
    labels, problems = derive_labels(own_triplets, workers=opts.workers, progress=opts.progress, warnings=notes)
    source["labels"] = "derived from the lc patches"
    return labels, problems, "the labels derived from the lc patches", notes


def _load_labels(path: str) -> Any:
    try:
        return user_input(load_labels, path)
    except ConvertError:
        try:
            names = read_split_list(path)
        except (OSError, ValueError, pickle.UnpicklingError):
            names = []
        if names:
            raise ConvertError(f"{path}: is a split list ({len(names)} S2 file names), not a label file; give its "
                               "folder to --splits, and to --labels the IGBP_probability_labels.json of `convert "
                               "labels` (or the original's .pkl)") from None
        raise


def _splits(opts: PlanOptions, scan: Any, needed: tuple[str, ...], source: dict[str, Any], root: str
            ) -> tuple[dict[str, Any], dict[str, str]]:
    """(split lists, excluded file name -> why) from --splits, else made as `convert splits` makes them."""
    if opts.splits:
        source["splits"] = redact(opts.splits)
        return user_input(load_splits, opts.splits), excluded_of(opts.splits)

    holdout_path = user_input(lambda data: find_holdout(data, None), root)
    # As `convert splits` does: only triplets with every member this run needs take part.
    complete = [t.id for t in scan.triplets if all(m in t.paths for m in needed)]
    made = make_splits(complete, user_input(load_holdout, holdout_path), val_fraction=opts.val_fraction,
                       seed=opts.seed)
    source["splits"] = {"holdout": holdout_path, "val_fraction": opts.val_fraction, "seed": opts.seed}
    return {"train": made.train, "val": made.val, "test": made.test}, dict(made.excluded)


def scene_sizes(scan: Any) -> dict[SceneId, int]:
    """Inputs (S2 keys: triplets, and ids of scan problems) per scene of the whole tree."""
    keys = {t.key for t in scan.triplets} | {p.id for p in scan.problems if p.id}
    sizes: dict[SceneId, int] = {}
    for key in keys:
        scene = parse_any_patch(key).scene_id
        sizes[scene] = sizes.get(scene, 0) + 1
    return sizes


def _digest(obj: Any) -> str:
    return "sha256:" + hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def run_options(opts: PlanOptions, split_lists: Any, excluded: dict[str, str],
                sizes: dict[SceneId, int]) -> dict[str, Any]:
    """What every run of one conversion (and every part of it) must have in common; `--resume` and
    `convert merge-manifest` compare it. Paths are left out (each machine may mount the data
    elsewhere); the split lists, labels and tree enter by content."""
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


# How a difference in `run_options` reads, in the order they are compared.
OPTION_TEXTS: dict[str, str] = {
    "codec": "--codec {value} (this run: {mine})",
    "level": "--level {value} (this run: {mine})",
    "modalities": "--modalities {value} (this run: {mine})",
    "shard_size": "--shard-size {value} bytes (this run: {mine})",
    "seed": "--seed {value} (this run: {mine})",
    "labels": "other labels (another --labels file, or derived vs given)",
    "splits": "other split lists (another --splits, --val-fraction or --seed)",
    "tree": "another tree (other scenes or patches under --data)",
    "layout": "another sample layout (another version of the converter?)",
}


def options_difference(theirs: dict[str, Any], mine: dict[str, Any]) -> str | None:
    """The first option in which two runs differ, as a user reads it; None if they agree."""
    for key, text in OPTION_TEXTS.items():
        if theirs.get(key) != mine.get(key):
            return text.format(value=theirs.get(key), mine=mine.get(key))
    return None


def excluded_of(split_dir: str) -> dict[str, str]:
    """`excluded.txt` of a `convert splits` folder (`<S2 file name>: <reason>` per line), if there is one:
    the reasons why patches are in no list."""
    url = storage.join(split_dir, EXCLUDED_NAME)
    if not storage.exists(url):
        return {}
    return user_input(read_excluded, url)


def user_input(fn: Callable, arg: str) -> Any:
    """Call a loader of a user-given file; its errors become one-line messages."""
    try:
        return fn(arg)
    except (OSError, ValueError, KeyError, pickle.UnpicklingError) as exc:
        text = str(exc) if isinstance(exc, (OSError, ValueError, pickle.UnpicklingError)) else repr(exc)
        raise ConvertError(text if arg in text else f"{arg}: {text}") from exc
