"""`python -m convert ...`: the converter's commands."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from convert.sample.dfc2020 import synthesize_dfc2020
from convert.sample.sen12ms import synthesize
from sen12ms_common.errors import report_errors
from sen12ms_common.progress import ProgressOptions, progress_options


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def cli() -> None:
    """SEN12MS GeoTIFF triplets -> sharded WebDataset, and the tools around it."""


@cli.command()
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder to write the SEN12MS tree into (created if missing).")
@click.option("--layout", type=click.Choice(["sen12ms", "dfc2020"]), default="sen12ms", show_default=True,
              help="sen12ms: the SEN12MS tree; dfc2020: the DFC2020 contest's validation and test subsets "
                   "(s1, s2, lc and 10 m dfc masks), with the same class spectra.")
@click.option("--scenes", default=12, show_default=True, type=click.IntRange(1, 500),
              help="Number of scenes; about a quarter are official hold-out scenes (dfc2020: regions, "
                   "alternately validation and test).")
@click.option("--patches-per-scene", default=24, show_default=True, type=click.IntRange(1, 840),
              help="Triplets per scene (overlapping 256 px patches on a 128 px stride; dfc2020: not overlapping).")
@click.option("--seed", default=0, show_default=True, type=int, help="Random seed; the tree is identical for a seed.")
@click.option("--broken", is_flag=True,
              help="Also plant the known broken triplet ROIs1868_summer_s1_146_p202 (NaN in S1; sen12ms only).")
@progress_options(counted=True)
@report_errors
def synth(out: Path, layout: str, scenes: int, patches_per_scene: int, seed: int, broken: bool, progress: bool,
          progress_interval: float) -> None:
    """Write the sample dataset: a small, learnable SEN12MS (or DFC2020) tree in the real format."""
    shown = ProgressOptions(progress, progress_interval)
    if layout == "dfc2020":
        if broken:
            raise click.UsageError("--broken plants a SEN12MS triplet: not with --layout dfc2020")
        ids = synthesize_dfc2020(out, regions=scenes, patches_per_region=patches_per_scene, seed=seed, progress=shown)
        click.echo(f"wrote {len(ids)} DFC2020 patches under {out}")
        return

    ids = synthesize(out, scenes=scenes, patches_per_scene=patches_per_scene, seed=seed, broken=broken, progress=shown)
    click.echo(f"wrote {len(ids)} triplets under {out}")


def main() -> None:
    try:
        cli(standalone_mode=True)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)


from convert.datafiles.labels import labels_command  # noqa: E402
from convert.datafiles.splits import splits_command  # noqa: E402
from convert.overview.command import overview as overview_command  # noqa: E402

cli.add_command(labels_command)
cli.add_command(splits_command)
cli.add_command(overview_command)

from convert.shards.command import shards as shards_command  # noqa: E402
from convert.shards.verify import verify as verify_command  # noqa: E402

cli.add_command(shards_command)
cli.add_command(verify_command)

from convert.shards.merge import merge_manifest as merge_manifest_command  # noqa: E402

cli.add_command(merge_manifest_command)

from convert.s3local.command import s3_local as s3_local_command  # noqa: E402

cli.add_command(s3_local_command)
