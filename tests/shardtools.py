"""Helpers of the converter tests: run `convert shards` in-process, read a GeoTIFF, and read a
whole shard set back with plain tarfile and the format's decoder (independently of the loaders
under test)."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import rasterio
from click.testing import CliRunner

from convert.cli import cli
from sen12ms_common.format.manifest import load_manifest
from sen12ms_common.format.sample import decode_sample


def run_shards(data: Path, out: Path, *args: str, ok: bool = True):
    result = CliRunner().invoke(cli, ["shards", "--data", str(data), "--out", str(out), "--no-progress", *args])
    if ok:
        assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def read_tif(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read()


def decode_all(out: Path) -> dict[str, dict]:
    """key -> decoded sample, plus its split and shard."""
    manifest = load_manifest(str(out))
    samples: dict[str, dict] = {}
    for split, shards in manifest.splits.items():
        for entry in shards:
            groups: dict[str, dict[str, bytes]] = {}
            with tarfile.open(out / entry.name) as tar:
                for info in tar:
                    key, _, ext = info.name.partition(".")
                    groups.setdefault(key, {})[ext] = tar.extractfile(info).read()
            for key, members in groups.items():
                assert key not in samples
                samples[key] = dict(decode_sample(members, manifest.layout), split=split, shard=entry.name)
    return samples
