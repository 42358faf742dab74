"""Splits: the official hold-out scenes as test split, and a scene-grouped validation split."""

from __future__ import annotations

import hashlib
import pickle
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import click

from convert.datafiles.labels import expected_sibling, report_problems
from convert.shards.scan import Problem, scan_tree
from sen12ms_common.datafiles.limits import excerpt
from sen12ms_common.datafiles.read import read_source, text_lines
from sen12ms_common.errors import InputError, StorageError, report_errors
from sen12ms_common.progress import no_progress_option
from sen12ms_common.storage import files as storage
from sen12ms_common.storage.outputs import output_folder, writing
from sen12ms_common.vocab.official import HOLDOUT_NAME, OFFICIAL_HOLDOUT
from sen12ms_common.vocab.patches import MODALITIES, SEASONS, PatchId, SceneId, parse_patch, parse_scene

EXCLUDED_NAME = "excluded.txt"
BROKEN_REASON = "known broken triplet (S1 holds NaN): left out of train as in the original"
# The original's pickles are protocol 3 (Python 3.0+), which its Python 3.7 code reads.
PICKLE_PROTOCOL = 3


# --------------------------------------------------------------------------- hold-out list

def load_holdout(path: str) -> list[SceneId]:
    """Scenes of a hold-out list (`ROIs1158_spring/s1_63` per line), in file order, no repeats."""
    source = str(path)
    data = read_source(source, "hold-out list", InputError)
    scenes: list[SceneId] = []
    seen: set[SceneId] = set()
    for number, line in text_lines(data, source, InputError, "one scene per line, e.g. ROIs1158_spring/s1_63"):
        try:
            scene = parse_scene(line)
        except InputError:
            raise InputError(f"{source}:{number}: {excerpt(line)} is not a SEN12MS scene "
                             "(expected e.g. ROIs1158_spring/s1_63)") from None
        if scene not in seen:
            seen.add(scene)
            scenes.append(scene)
    if not scenes:
        raise InputError(f"{source}: the hold-out list names no scene")
    return scenes


def find_holdout(data_root: str, holdout: str | None) -> str:
    """The hold-out list to use: `holdout`, else the one in the tree's root, else the official one."""
    if holdout:
        if not storage.exists(str(holdout)):
            raise InputError(f"{holdout}: no such hold-out list")
        return str(holdout)
    in_tree = storage.join(str(data_root), HOLDOUT_NAME)
    if storage.exists(in_tree):
        return in_tree
    return str(OFFICIAL_HOLDOUT)


# --------------------------------------------------------------------------- making splits

@dataclass
class Splits:
    """S2 file names of each split (sorted), and the names left out of every split, with why."""

    train: list[str]
    val: list[str]
    test: list[str]
    excluded: dict[str, str] = field(default_factory=dict)

    def lists(self) -> dict[str, list[str]]:
        return {"train": self.train, "val": self.val, "test": self.test}


def scene_order_key(scene: SceneId, seed: int) -> str:
    """The seeded order of scenes: SHA-256 of `<seed>:<season>_<scene>` (same on every machine)."""
    return hashlib.sha256(f"{seed}:{scene.key}".encode()).hexdigest()


def choose_val_scenes(patches_per_scene: dict[SceneId, int], val_fraction: float, seed: int) -> set[SceneId]:
    """Whole train scenes for validation, per season, in the seeded order (see splits/README.md).

    Per season: walk the scenes in `scene_order_key` order and take a scene while that brings
    the season's validation patches closer to `val_fraction` of its train patches (a scene is
    taken when at least half of it fits under the target), always leaving the season at least
    one train scene. If that takes nothing at all (small trees: every scene is larger than the
    share) and there are at least two train scenes, the first scene in the seeded order goes to
    validation.
    """
    if val_fraction <= 0 or not patches_per_scene:
        return set()
    chosen: set[SceneId] = set()
    for season in SEASONS:
        scenes = sorted((s for s in patches_per_scene if s.season == season), key=lambda s: scene_order_key(s, seed))
        target = val_fraction * sum(patches_per_scene[s] for s in scenes)
        taken = 0
        for i, scene in enumerate(scenes):
            n = patches_per_scene[scene]
            if taken + n / 2 > target or len(scenes) - i <= 1:
                break
            chosen.add(scene)
            taken += n
    if not chosen and len(patches_per_scene) >= 2:
        chosen.add(min(patches_per_scene, key=lambda s: scene_order_key(s, seed)))
    return chosen


def make_splits(ids: list[PatchId], holdout: list[SceneId], val_fraction: float = 0.1, seed: int = 0) -> Splits:
    """Test = every patch of the hold-out scenes; val = whole train scenes; train = the rest.

    The known broken triplet is left out of train and val (it would stay in test, were its
    scene a hold-out scene). Names are S2 file names, sorted as strings like the official lists.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), not {val_fraction}")
    s2_ids = sorted({pid.with_modality("s2") for pid in ids})
    held = set(holdout)
    test = [p for p in s2_ids if p.scene_id in held]
    rest = [p for p in s2_ids if p.scene_id not in held]
    excluded = {p.filename(): BROKEN_REASON for p in rest if p.is_known_broken}
    pool = [p for p in rest if not p.is_known_broken]
    val_scenes = choose_val_scenes(Counter(p.scene_id for p in pool), val_fraction, seed)
    train = [p for p in pool if p.scene_id not in val_scenes]
    val = [p for p in pool if p.scene_id in val_scenes]
    return Splits(
        train=sorted(p.filename() for p in train),
        val=sorted(p.filename() for p in val),
        test=sorted(p.filename() for p in test),
        excluded=dict(sorted(excluded.items())),
    )


# --------------------------------------------------------------------------- split files

def split_file_contents(splits: Splits) -> dict[str, bytes]:
    """File name -> bytes of the split files (see splits/README.md)."""
    files: dict[str, bytes] = {}
    for split, names in splits.lists().items():
        files[f"{split}_list.txt"] = "".join(f"{n}\n" for n in names).encode()
        files[f"{split}_list.pkl"] = pickle.dumps(list(names), protocol=PICKLE_PROTOCOL)
    files[EXCLUDED_NAME] = "".join(f"{n}: {r}\n" for n, r in sorted(splits.excluded.items())).encode()
    return files


def write_splits(splits: Splits, out_dir: str | Path) -> list[str]:
    """Write `{train,val,test}_list.{txt,pkl}` and `excluded.txt` into a folder or an s3:// prefix;
    each file appears complete or not at all. A folder that cannot be written raises a one-line
    StorageError."""
    with writing(str(out_dir)):
        return storage.write_files(str(out_dir), split_file_contents(splits))


# --------------------------------------------------------------------------- command line

def season_counts(names: list[str]) -> dict[str, int]:
    counts = Counter(parse_patch(n).season for n in names)
    return {s: counts.get(s, 0) for s in SEASONS}


def _is_shipped_folder(out: str) -> bool:
    return not storage.is_remote(out) and Path(out).resolve() == OFFICIAL_HOLDOUT.parent.resolve()


def _summary(splits: Splits, holdout_path: str, holdout: list[SceneId]) -> list[str]:
    scenes = {split: sorted({parse_patch(n).scene_id for n in names}) for split, names in splits.lists().items()}
    present = len(set(holdout) & set(scenes["test"]))
    short = [s.split("_")[1] for s in SEASONS]
    lines = [f"hold-out list: {holdout_path} ({len(holdout)} scenes, {present} of them in this tree)",
             f"{'split':<6}" + "".join(f"{s:>9}" for s in short) + f"{'total':>9}{'scenes':>8}"]
    for split, names in splits.lists().items():
        counts = season_counts(names)
        lines.append(f"{split:<6}" + "".join(f"{counts[s]:>9}" for s in SEASONS)
                     + f"{len(names):>9}{len(scenes[split]):>8}")
    if scenes["val"]:
        lines.append("val scenes: " + ", ".join(s.key for s in scenes["val"]))
    for name, reason in splits.excluded.items():
        lines.append(f"left out: {name}: {reason}")
    return lines


@click.command("splits")
@click.option("--data", required=True, metavar="DIR",
              help="Root of the SEN12MS tree (local folder or URL such as s3://bucket/sen12ms).")
@click.option("--holdout", default=None, metavar="FILE",
              help=f"Hold-out scene list [default: {HOLDOUT_NAME} in the tree's root, else the official "
                   "list shipped with the toolbox].")
@click.option("--val-fraction", default=0.1, show_default=True, type=click.FloatRange(0.0, 1.0, max_open=True),
              help="Share of each season's train patches to move to validation, as whole scenes (0: no val).")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Seed of the scene order for validation; the lists are identical for a seed.")
@click.option("--out", required=True, metavar="DIR|URL",
              help="Folder or s3://bucket/prefix to write {train,val,test}_list.{txt,pkl} into (created if "
                   "missing).")
@no_progress_option
@report_errors
def splits_command(data: str, holdout: str | None, val_fraction: float, seed: int, out: str) -> None:
    """Write train / val / test lists: test = the hold-out scenes, val = whole train scenes.

    Incomplete triplets and files that are not SEN12MS patches are listed at the end (and
    left out of the lists); the lists are still written for the rest.
    """
    out = output_folder(out, "--out")
    if _is_shipped_folder(out):
        raise click.ClickException(f"{out}: holds the official lists shipped with the toolbox; "
                                   "write the splits of a tree to another folder")
    holdout_path = find_holdout(data, holdout)
    scenes = load_holdout(holdout_path)
    scan = scan_tree(data)
    problems = list(scan.problems)
    complete: list[PatchId] = []
    incomplete: dict[str, str] = {}
    for t in scan.triplets:
        missing = scan.missing(t, MODALITIES)
        if missing:
            expected = ", ".join(expected_sibling(t, m) for m in missing)
            problems.append(Problem(t.paths["s2"], f"incomplete triplet: no {' or '.join(missing)} patch "
                                                   f"(expected {expected})", t.key))
            incomplete[t.id.filename()] = f"incomplete triplet: no {' or '.join(missing)} patch"
        else:
            complete.append(t.id)
    if not complete and not problems:
        raise click.ClickException(f"{data}: no SEN12MS patches found")
    splits = make_splits(complete, scenes, val_fraction=val_fraction, seed=seed)
    splits.excluded = dict(sorted({**splits.excluded, **incomplete}.items()))
    try:
        paths = write_splits(splits, out)
    except StorageError as exc:
        raise click.ClickException(f"{exc}; no list was written or replaced there") from None
    for line in _summary(splits, holdout_path, scenes):
        click.echo(line)
    click.echo(f"wrote {len(paths)} files to {out}: " + ", ".join(storage.basename(p) for p in paths))
    report_problems(problems, "the lists were written without them")


__all__ = [
    "OFFICIAL_HOLDOUT", "HOLDOUT_NAME", "Splits", "load_holdout", "find_holdout",
    "make_splits", "choose_val_scenes", "scene_order_key", "write_splits", "splits_command",
]
