"""`python -m convert shards`: a SEN12MS tree (and DFC2020 tree) -> WebDataset shards per split,
resumable (the command; the run is `convert.shards.conversion`, the output folder `convert.shards.outfolder`)."""

from __future__ import annotations

import shlex
import sys

import click
from click.core import ParameterSource

from convert.shards.conversion import ShardsOptions, convert_shards
from convert.shards.outlock import STALE_AFTER
from convert.shards.plan import Part, parse_part, parse_size
from convert.shards.summary import summary_lines
from sen12ms_common.cpus import usable_cpus
from sen12ms_common.errors import report_errors
from sen12ms_common.format.sample import CODECS, DEFAULT_LEVEL, SampleLayout
from sen12ms_common.progress import ProgressOptions, progress_options
from sen12ms_common.storage.redaction import redact


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


def _size_text(n: int) -> str:
    for unit, factor in (("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if n % factor == 0:
            return f"{n // factor}{unit}"
    return str(n)


def resume_command(ctx: click.Context) -> str:
    """The command line that continues this run: the options it was given, and --resume."""
    words = ["python", "-m", "convert", "shards"]
    for param in ctx.command.params:
        name = param.name or ""
        if ctx.get_parameter_source(name) in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP, None):
            continue
        value = ctx.params[name]
        if name in ("resume", "break_lock"):
            continue
        if name == "progress":
            words.append("--progress" if value else "--no-progress")
        elif name == "data":
            for root in value:
                words += [param.opts[0], root]
        elif value is not None:
            text = {"shard_size": _size_text, "modalities": ",".join}.get(name, str)(value)  # type: ignore[operator]
            words += [param.opts[0], text]
    return shlex.join(words + ["--resume"])


@click.command("shards")
@click.option("--data", required=True, multiple=True,
              help="The SEN12MS tree (folder holding ROIs1158_spring/ ...). A DFC2020 tree (ROIs0000_validation/, "
                   "ROIs0000_test/) is recognised by its folders and goes into the splits dfc2020_val and "
                   "dfc2020_test; give --data more than once to convert trees together (e.g. SEN12MS and DFC2020).")
@click.option("--out", required=True,
              help="Output folder (or URL): shards, index files, manifest.json, report.json. Empty, or holding "
                   "only this conversion (with --resume).")
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
@click.option("--workers", type=click.IntRange(1, 512), default=usable_cpus, show_default="all CPUs",
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
@click.option("--max-rejected", default=0.05, show_default=True, type=click.FloatRange(0.0, 1.0), metavar="SHARE",
              help="Fail (exit 1, report written, no manifest) when more than this share of the inputs is rejected "
                   "(the known broken triplet aside); a run that converts nothing always fails.")
@click.option("--break-lock", is_flag=True,
              help=f"Take over OUT's lock from a run on another machine that has not refreshed it for "
                   f"{STALE_AFTER / 60:.0f} minutes (a run on this machine that is gone needs no option).")
@progress_options(counted=True)
@click.pass_context
@report_errors
def shards(ctx: click.Context, data: tuple[str, ...], out: str, labels: str | None, splits_dir: str | None, codec: str,
           level: int | None, shard_size: int, workers: int, modalities: tuple[str, ...], seed: int, resume: bool,
           val_fraction: float, part: Part | None, max_rejected: float, break_lock: bool, progress: bool,
           progress_interval: float) -> None:
    """Convert a SEN12MS tree into sharded WebDataset (train, val, test; DFC2020: dfc2020_val, dfc2020_test)
    with manifest and report."""
    if level is not None and codec != "zstd":
        raise click.BadParameter("--level applies to --codec zstd only", param_hint="--level")
    layout = SampleLayout(codec=codec, level=DEFAULT_LEVEL[codec] if level is None else level, modalities=modalities)
    opts = ShardsOptions(data[0] if len(data) == 1 else data, out, labels, splits_dir, layout, shard_size, workers, seed, resume, val_fraction,
                         ProgressOptions(progress, progress_interval), part, max_rejected, break_lock)
    try:
        outcome = convert_shards(opts, echo=lambda s: click.echo(redact(s), err=True))
    except KeyboardInterrupt:
        click.echo(redact(f"Aborted! The finished shards are kept; continue with: {resume_command(ctx)}"), err=True)
        sys.exit(1)
    for line in summary_lines(outcome):
        click.echo(redact(line))
    if part is not None:
        click.echo(f"part {part} done; once all {part.count} parts are: python -m convert merge-manifest {out}")
