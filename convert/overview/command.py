"""`python -m convert overview`: class distributions and a map of the scenes of a dataset."""

from __future__ import annotations

import json
import os
import tarfile

import click
import numpy as np

from convert.shards.geotiff import read_patch
from sen12ms_common.cpus import usable_cpus
from sen12ms_common.errors import InputError, ShardError, report_errors
from sen12ms_common.format import tarstream
from sen12ms_common.format.manifest import load_manifest
from sen12ms_common.format.sample import (LABEL_EXT, META_EXT, SampleLayout, check_member_name, decode_array,
                                          decode_label)
from sen12ms_common.progress import Counter, ProgressOptions, as_options, progress_options
from sen12ms_common.storage import files as storage
from sen12ms_common.vocab.igbp import check_probability, igbp_counts
from sen12ms_common.vocab.patches import PatchId, SceneId, parse_patch
from sen12ms_common.vocab.synthetic import is_synthetic

from convert.datafiles.splits import OFFICIAL_HOLDOUT, find_holdout, load_holdout
from convert.overview.data import FROM_LC, Collection, PatchInfo, Problem, from_label
from convert.overview.report import write_report
from convert.shards.scan import scan_tree
from convert.workers import WorkerPool


def patch_centre(transform: tuple[float, ...] | list[float], size: int) -> tuple[float, float]:
    """Centre of a size x size patch from its affine transform (a, b, c, d, e, f)."""
    a, b, c, d, e, f = (float(v) for v in list(transform)[:6])
    half = size / 2.0
    return (c + a * half + b * half, f + d * half + e * half)


def counts_from_probability(prob: np.ndarray, pixels: int) -> np.ndarray:
    """Pixel counts that a probability label stands for, summing to exactly `pixels`.

    A SEN12MS label is a share of 256 x 256 = 65536 pixels, k / 65536, which float32 holds
    exactly, so rounding gives back the counts; the remainder method keeps the sum exact when
    a label was rounded on its way (e.g. through JSON).
    """
    raw = np.asarray(prob, dtype=np.float64) * pixels
    counts = np.floor(raw + 1e-9).astype(np.int64)
    short = int(pixels - counts.sum())
    if short > 0:
        order = np.argsort(-(raw - counts), kind="stable")
        counts[order[:short]] += 1
    elif short < 0:
        order = np.argsort(raw - counts, kind="stable")
        for i in order:
            if short == 0:
                break
            if counts[i] > 0:
                counts[i] -= 1
                short += 1
    return counts


# --- hold-out list -------------------------------------------------------------------------------

def holdout_scenes(data: str | None, holdout: str | None) -> tuple[str, set[SceneId]]:
    """(path, scenes) of the hold-out list: `holdout`, else the tree's own, else the official one."""
    path = find_holdout(data, holdout) if data is not None else str(holdout or OFFICIAL_HOLDOUT)
    if holdout and data is None and not storage.exists(path):
        raise InputError(f"{path}: no such hold-out list")
    return path, set(load_holdout(path))


# --- GeoTIFF tree ---------------------------------------------------------------------------------

def _read_lc(path: str) -> tuple[np.ndarray, str, tuple[float, float]] | str:
    """Counts, CRS and centre of one lc patch, or the reason it cannot be used (worker side)."""
    try:
        patch = read_patch(path, "lc")
    except InputError as exc:  # it names the file
        return str(exc)
    try:
        counts = igbp_counts(patch.data[0])
    except InputError as exc:
        return f"{path}: {exc}"
    if counts.sum() == 0:
        return f"{path}: no valid IGBP pixel (all 0 = no data)"
    return counts.astype(np.int64), patch.crs, patch_centre(patch.transform, patch.data.shape[-1])


def collect_tree(root: str, workers: int = 1, progress: bool | ProgressOptions = True) -> Collection:
    """Count the IGBP band of every lc patch of a SEN12MS tree (parallel over `workers`)."""
    scan = scan_tree(root)
    problems = [Problem(p.path, p.reason) for p in scan.problems]
    jobs: list[tuple[PatchId, str]] = []
    for t in scan.triplets:
        if "lc" in t.paths:
            jobs.append((t.id, t.paths["lc"]))
        else:
            problems.append(Problem(storage.join(root, t.id.relpath("lc")),
                                    f"no lc patch beside {t.id.filename('s2')}: its land cover cannot be counted"))
    patches: list[PatchInfo] = []
    paths = [p for _, p in jobs]
    # The workers fork before the progress bar starts its monitor thread.
    with WorkerPool(_read_lc, min(workers, len(jobs))) as pool, \
            Counter(as_options(progress), "overview", len(jobs), "patch") as bar:
        for (pid, path), res in zip(jobs, bar.iterate(pool.map(paths))):
            if isinstance(res, str):
                problems.append(Problem(path, res))
                continue
            counts, crs, centre = res
            patches.append(PatchInfo(pid, counts, counts / counts.sum(), crs, centre))
    return Collection(patches, problems, str(root), "geotiff", FROM_LC, is_synthetic(root))


# --- shards ---------------------------------------------------------------------------------------

def _shard_samples(url: str, wanted: tuple[str, ...]) -> list[tuple[str, dict[str, bytes]]]:
    """(key, {ext: bytes}) of every sample of one tar, reading only the `wanted` members (a
    seekable file skips the others); a tar cut between two samples gives the samples before the cut."""
    out: list[tuple[str, dict[str, bytes]]] = []
    with storage.open_read(url) as f:
        try:
            # A path-like member makes the shard bad (check_member_name); nothing is extracted.
            for key, members in tarstream.iter_samples(f, frozenset(wanted), until_cut=True,
                                                       check_name=check_member_name):
                out.append((key, {ext: bytes(data) for ext, data in members.items()}))
        except ShardError:
            raise
        except ValueError as exc:  # a member twice in a sample
            raise ShardError(str(exc)) from None
    return out


def _sample_info(key: str, members: dict[str, bytes], layout: SampleLayout,
                 use_lc: bool) -> PatchInfo:
    pid = parse_patch(key).with_modality("s2")
    if LABEL_EXT not in members:
        raise ShardError(f"member .{LABEL_EXT} is missing")
    prob = check_probability(decode_label(members[LABEL_EXT]))
    if META_EXT not in members:
        raise ShardError(f"member .{META_EXT} is missing")
    try:
        meta = json.loads(members[META_EXT])
        crs, transform = str(meta["crs"]), meta["transform"]
        if len(transform) < 6:
            raise ValueError(f"transform has {len(transform)} values")
    except (ValueError, KeyError, TypeError) as exc:
        raise ShardError(f"member .{META_EXT} lacks a usable crs/transform ({exc})") from exc
    pixels = layout.size * layout.size
    if use_lc:
        counts = igbp_counts(decode_array(members, "lc", layout)[0]).astype(np.int64)
    else:
        counts = counts_from_probability(prob, pixels)
    return PatchInfo(pid, counts, prob, crs, patch_centre(transform, layout.size))


def collect_shards(root: str, progress: bool | ProgressOptions = True) -> Collection:
    """Every sample of a shard set (all splits with labels) from its labels and metadata; no GeoTIFF."""
    manifest = load_manifest(root)
    layout = manifest.layout
    use_lc = "lc" in layout.modalities
    wanted = (LABEL_EXT, META_EXT)
    if use_lc:
        wanted += (layout.ext("lc"),) + ((layout.sizes_ext("lc"),) if layout.chunked else ())
    # The DFC2020 splits carry no labels and another class scheme: the overview counts SEN12MS.
    shards = [(split, s) for split, entries in manifest.splits.items() for s in entries
              if manifest.layout_of(split).labels]
    patches: list[PatchInfo] = []
    problems: list[Problem] = []
    seen: dict[str, str] = {}
    with Counter(as_options(progress), "overview", len(shards), "shard") as bar:
        for split, entry in bar.iterate(shards):
            _collect_shard(root, entry, wanted, layout, use_lc, seen, patches, problems)
    patches.sort(key=lambda p: p.id)
    source = from_label(layout.size * layout.size) if not use_lc else FROM_LC
    return Collection(patches, problems, str(root), "shards", source, bool(manifest.source.get("synthetic")))


def _collect_shard(root: str, entry, wanted: tuple[str, ...], layout: SampleLayout, use_lc: bool,
                   seen: dict[str, str], patches: list[PatchInfo], problems: list[Problem]) -> None:
    """The samples of one shard into `patches`, what is wrong with it into `problems`."""
    url = storage.join(root, entry.name)
    try:
        samples = _shard_samples(url, wanted)
    except FileNotFoundError:
        problems.append(Problem(url, "shard listed in the manifest is missing"))
        return
    except (tarfile.TarError, OSError) as exc:
        problems.append(Problem(url, f"not a readable tar ({exc})"))
        return
    except ShardError as exc:
        problems.append(Problem(url, str(exc)))
        return
    for key, members in samples:
        where = f"{url}:{key}"
        if key in seen:
            problems.append(Problem(where, f"sample also in {seen[key]}"))
            continue
        seen[key] = url
        try:
            patches.append(_sample_info(key, members, layout, use_lc))
        except (InputError, ShardError) as exc:
            problems.append(Problem(where, str(exc)))



# --- the command ----------------------------------------------------------------------------------

def default_workers() -> int:
    return min(8, usable_cpus())


@click.command("overview")
@click.option("--data", "data", default=None, metavar="DIR",
              help="SEN12MS GeoTIFF tree (local folder or URL) to read the lc patches of.")
@click.option("--shards", "shards", default=None, metavar="OUT",
              help="Shard set (the --out of `convert shards`): uses its stored labels and metadata.")
@click.option("--out", required=True, metavar="DIR",
              help="Folder for the report: CSV tables, PNG charts, scenes.geojson, index.html.")
@click.option("--holdout", default=None, metavar="FILE",
              help="Hold-out scene list to mark on the map [default: the tree's SEN12MS_holdOutScenes.txt, "
                   "else the official list shipped with the toolbox].")
@click.option("--workers", default=default_workers(), show_default=True, type=click.IntRange(1, 256),
              help="Processes reading lc patches (GeoTIFF path); the output is the same for any number.")
@progress_options(counted=True)
@report_errors
def overview(data: str | None, shards: str | None, out: str, holdout: str | None, workers: int,
             progress: bool, progress_interval: float) -> None:
    """Class distributions and a world map of the scenes, as CSV, PNG, GeoJSON and index.html."""
    if (data is None) == (shards is None):
        raise click.UsageError("give exactly one of --data DIR or --shards OUT")
    holdout_path, held_out = holdout_scenes(data, holdout)
    progress = ProgressOptions(progress, progress_interval)
    if data is not None:
        if not storage.is_remote(data) and not os.path.isdir(data):
            raise click.ClickException(f"{data}: no such folder")
        collection = collect_tree(data, workers=workers, progress=progress)
    else:
        collection = collect_shards(shards, progress=progress)
    if not collection.patches:
        for p in collection.problems:
            click.echo(f"  {p.path}: {p.reason}", err=True)
        raise click.ClickException(f"{data or shards}: no patch could be counted, no report written")
    written = write_report(collection, held_out, out, holdout_path)
    scenes = len({p.id.scene_id for p in collection.patches})
    kind = " (synthetic sample data)" if collection.synthetic else ""
    click.echo(f"overview of {len(collection.patches)} patches in {scenes} scenes{kind}: {len(written)} files "
               f"in {out} (open {storage.join(out, 'index.html')})")
    if collection.problems:
        for p in collection.problems:
            click.echo(f"  {p.path}: {p.reason}", err=True)
        raise click.ClickException(
            f"{len(collection.problems)} inputs could not be counted (listed above and in "
            f"{storage.join(out, 'problems.csv')}); the report covers the rest")


__all__ = [
    "Collection", "PatchInfo", "Problem", "collect_shards", "collect_tree", "counts_from_probability",
    "holdout_scenes", "overview", "patch_centre",
]
