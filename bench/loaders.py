"""The loader rows: one repeat of each way of turning stored patches into training batches.

- the original's way: `train.data.geotiff` (rasterio per sample, float, normalisation) through a
  torch DataLoader, shuffled, as the original toolbox trains;
- our webdataset loader (`train.data.webdataset`, the training defaults: shuffled, 8 read
  streams, sha256 verification) into uint16 batches, and into normalised float batches
  (`train.device.InputTransform` on the CPU, as the training loop does on its device);
- the limit of a codec: the shard bytes read from the page cache and every sample's arrays
  decoded (`shardformat.decode_array`), nothing around it, in one process.

"1 core" pins the whole process tree (main process and its one worker) to one CPU with torch on
one thread; "all cores" runs as many workers as there are CPUs, unpinned. DALI runs in its own
process (`bench.daliworker`), see `bench.dali`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.measure import Repeat, steady_rate
from sen12ms_common.bands import resolve_bands
from sen12ms_common.igbp import LabelRule
from sen12ms_common.inputs import channel_transform
from sen12ms_common.manifest import index_name, load_manifest
from sen12ms_common.shardformat import SampleLayout, decode_array

STATS = "official"  # the original's statistics, in both ways, so that the float batches agree


@dataclass(frozen=True)
class LoaderSettings:
    input_spec: str = "s1s2"
    batch_size: int = 32
    label_type: str = "multi_label"


def original_repeat(tree: str, names: list[str], labels: dict, settings: LoaderSettings, workers: int,
                    seed: int) -> Repeat:
    """One shuffled epoch of the original's way over `names` (S2 file names)."""
    from train.data.geotiff import GeoTiffDataset, original_loader

    ds = GeoTiffDataset(tree, names, labels, input_spec=settings.input_spec, label_type=settings.label_type)
    loader = original_loader(ds, batch_size=settings.batch_size, workers=workers, shuffle=True, seed=seed)
    return steady_rate(loader, lambda b: len(b["id"]))


def webdataset_spec(root: str, settings: LoaderSettings, workers: int, seed: int, batch_size: int | None = None,
                    verify: bool = True):
    from train.data import LoaderSpec

    manifest = load_manifest(root)
    bands = resolve_bands(settings.input_spec)
    return LoaderSpec(root=root, manifest=manifest, split="train", bands=bands, rule=LabelRule(settings.label_type),
                      batch_size=batch_size or settings.batch_size, transform=channel_transform(bands, STATS),
                      train=True, seed=seed, workers=workers, device="cpu", verify=verify)


def webdataset_repeat(root: str, settings: LoaderSettings, workers: int, seed: int, to_float: bool,
                      verify: bool = True) -> Repeat:
    """One epoch of our loader over the train split; `to_float`: normalised float32 batches;
    `verify`: sha256 of every shard checked while streaming (the training default)."""
    import torch

    from train.data import make_loader
    from train.device import InputTransform

    spec = webdataset_spec(root, settings, workers, seed, verify=verify)
    loader = make_loader("webdataset", spec)
    to_input = InputTransform(spec.transform, torch.device("cpu"))
    consume = (lambda b: to_input(b["image"])) if to_float else (lambda b: None)
    try:
        return steady_rate(loader.epoch(seed), lambda b: len(b["key"]), consume)
    finally:
        loader.close()


def read_index(path: Path) -> list[dict[str, tuple[int, int]]]:
    """A wds2idx (v1.2) index: per sample, member ext -> (offset, size)."""
    lines = path.read_text().splitlines()
    out = []
    for line in lines[1:]:
        parts = line.split()
        out.append({parts[i]: (int(parts[i + 1]), int(parts[i + 2])) for i in range(0, len(parts), 4)})
    return out


def limit_repeat(root: str, modalities: tuple[str, ...] = ("s2", "s1")) -> Repeat:
    """Read every train shard from the page cache and decode every sample's arrays, nothing else."""
    import time

    manifest = load_manifest(root)
    layout: SampleLayout = manifest.layout
    wanted = {layout.ext(m) for m in modalities}
    if layout.chunked:
        wanted |= {layout.sizes_ext(m) for m in modalities}
    shards = [(Path(root) / e.name, read_index(Path(root) / index_name(e.name))) for e in manifest.shards("train")]
    n, t0 = 0, time.perf_counter()
    checksum = 0
    for path, index in shards:
        with open(path, "rb") as f:
            data = memoryview(f.read())
        for members in index:
            got = {ext: data[off:off + size] for ext, (off, size) in members.items() if ext in wanted}
            for m in modalities:
                checksum += int(decode_array(got, m, layout)[0, 0, 0])
            n += 1
    seconds = time.perf_counter() - t0
    if checksum < 0:  # keeps the decoded arrays observable
        raise AssertionError
    return Repeat(n, seconds)


def first_batch_check(tree: str, names: list[str], labels: dict, shard_root: str, settings: LoaderSettings
                      ) -> dict[str, Any]:
    """Both ways give the same model input for the same patch (up to S1 quantisation): a sanity
    check of the bench itself, run once on a few samples."""
    import torch

    from train.data import make_loader
    from train.data.geotiff import GeoTiffDataset
    from train.device import InputTransform

    spec = dataclasses.replace(webdataset_spec(shard_root, settings, 0, 0, batch_size=4), train=False)
    loader = make_loader("webdataset", spec)
    batch = next(iter(loader.epoch(0)))
    ours = InputTransform(spec.transform, torch.device("cpu"))(batch["image"]).numpy()
    ds = GeoTiffDataset(tree, [k + ".tif" for k in batch["key"]], labels, input_spec=settings.input_spec,
                        label_type=settings.label_type)
    theirs = np.stack([ds[i]["image"].numpy() for i in range(len(ds))])
    order = [ds.ids[i].key for i in range(len(ds))]
    theirs = theirs[[order.index(k) for k in batch["key"]]]
    n_s2 = sum(1 for b in spec.bands if b.modality == "s2")
    return {"s2_max_abs_diff": float(np.abs(ours[:, :n_s2] - theirs[:, :n_s2]).max()),
            "s1_max_abs_diff": float(np.abs(ours[:, n_s2:] - theirs[:, n_s2:]).max()) if n_s2 < ours.shape[1] else 0.0}
