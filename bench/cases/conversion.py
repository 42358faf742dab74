"""The conversion rows: `convert shards` of the subset, per codec, timed as the command runs it.

Labels and split lists are given (`--labels`, `--splits`), so the time is reading the GeoTIFFs,
encoding and writing the shards (plus the scan and plan of the tree, as every run has them).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from bench.inputs.dataset import BenchDataset, preread, shard_options
from bench.measure.timing import Repeat, pinned
from convert.shards.conversion import convert_shards


def conversion_repeat(ds: BenchDataset, out: Path, codec: str, workers: int, cpu: int | None,
                      shard_size: int) -> Repeat:
    if out.exists():
        shutil.rmtree(out)
    preread(ds.files(ds.subset_keys))
    with pinned(cpu):
        outcome = convert_shards(shard_options(ds, out, codec, workers, subset=True, shard_size=shard_size))
    return Repeat(outcome.processed, outcome.seconds)
