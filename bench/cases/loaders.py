"""The loader rows: one repeat of each way of turning stored patches into training batches."""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.measure.timing import Repeat, steady_rate, warm_up
from sen12ms_common.format.manifest import load_manifest
from sen12ms_common.vocab.bands import resolve_bands
from sen12ms_common.vocab.igbp import LabelRule
from sen12ms_common.vocab.inputs import channel_transform
from train.data import LoaderSpec, make_loader, resolve_workers

STATS = "official"  # the original's statistics, in both ways, so that the float batches agree


@dataclass(frozen=True)
class LoaderSettings:
    input_spec: str = "s1s2"
    batch_size: int = 32
    label_type: str = "multi_label"


def original_repeat(tree: str, names: list[str], labels: dict, settings: LoaderSettings, workers: int,
                    seed: int) -> Repeat:
    """One shuffled epoch of the original's way over `names` (S2 file names)."""
    from bench.originals.geotiff import GeoTiffDataset, original_loader  # start-up time: torch only when used

    ds = GeoTiffDataset(tree, names, labels, input_spec=settings.input_spec, label_type=settings.label_type)
    loader = original_loader(ds, batch_size=settings.batch_size, workers=workers, shuffle=True, seed=seed)
    return steady_rate(loader, lambda b: len(b["id"]))


def webdataset_spec(root: str, settings: LoaderSettings, workers: int | str, seed: int, batch_size: int | None = None,
                    verify: bool = True, threads: int = 0, augment: bool = False):
    """`workers`: a number, or auto (the training default, resolved for the CPUs this process may use)."""
    manifest = load_manifest(root)
    bands = resolve_bands(settings.input_spec)
    return LoaderSpec(root=root, manifest=manifest, split="train", bands=bands, rule=LabelRule(settings.label_type),
                      batch_size=batch_size or settings.batch_size, transform=channel_transform(bands, STATS),
                      train=True, seed=seed, workers=resolve_workers(workers), threads=threads, device="cpu",
                      verify=verify,
                      augment=augment)


def webdataset_repeat(root: str, settings: LoaderSettings, workers: int | str, seed: int, to_float: bool,
                      verify: bool = True, threads: int = 0, augment: bool = False, epochs: int = 1) -> Repeat:
    """The second epoch of our loader over the train split (the first warms its reused buffers,
    as the first thousand samples of a real epoch do); `to_float`: normalised float32 batches;
    `verify`: checksums checked while streaming (the training default); `augment`: --augment;
    `epochs`: timed epochs (the second, third, ...)."""
    import torch  # start-up time: torch only when used

    from train.run.device import InputTransform  # start-up time: torch only when used

    spec = webdataset_spec(root, settings, workers, seed, verify=verify, threads=threads, augment=augment)
    loader = make_loader("webdataset", spec)
    to_input = InputTransform(spec.transform, torch.device("cpu"), reuse=True)
    consume = (lambda b: to_input(b["image"], b.get("symmetry"))) if to_float else (lambda b: None)
    try:
        warm_up(loader.epoch(seed))
        timed = itertools.chain.from_iterable(loader.epoch(seed + 1 + i) for i in range(epochs))
        return steady_rate(timed, lambda b: len(b["key"]), consume)
    finally:
        loader.close()


def seg_original_repeat(tree: str, keys: list[str], settings: LoaderSettings, workers: int, seed: int) -> Repeat:
    """One shuffled epoch of the baseline's way: image + mask per sample from GeoTIFFs."""
    from bench.originals.geotiff import original_loader  # start-up time: torch only when used
    from bench.originals.seggeotiff import SegGeoTiffDataset  # start-up time: torch only when used

    ds = SegGeoTiffDataset(tree, keys, input_spec=settings.input_spec)
    loader = original_loader(ds, batch_size=settings.batch_size, workers=workers, shuffle=True, seed=seed)  # type: ignore[arg-type]
    return steady_rate(loader, lambda b: len(b["id"]))


def seg_webdataset_repeat(root: str, settings: LoaderSettings, seed: int) -> Repeat:
    """The second epoch of our loader's image + mask batches (as `webdataset_repeat`), the image
    turned into float model input as the baseline scales it."""
    import torch  # start-up time: torch only when used

    from train.run.device import InputTransform  # start-up time: torch only when used

    spec = dataclasses.replace(webdataset_spec(root, settings, "auto", seed), targets="mask",
                               transform=channel_transform(resolve_bands(settings.input_spec), "dfc2020"))
    loader = make_loader("webdataset", spec)
    to_input = InputTransform(spec.transform, torch.device("cpu"), reuse=True)
    try:
        warm_up(loader.epoch(seed))
        return steady_rate(loader.epoch(seed + 1), lambda b: len(b["key"]), lambda b: to_input(b["image"]))
    finally:
        loader.close()


def first_batch_check(tree: str, names: list[str], labels: dict, shard_root: str, settings: LoaderSettings
                      ) -> dict[str, Any]:
    """Both ways give the same model input for the same patch (up to S1 quantisation): a sanity
    check of the bench itself, run once on a few samples."""
    import torch  # start-up time: torch only when used

    from bench.originals.geotiff import GeoTiffDataset  # start-up time: torch only when used
    from train.run.device import InputTransform  # start-up time: torch only when used

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
