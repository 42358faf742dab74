"""Loaders: name -> factory, so that `--loader NAME` picks one and the training loop stays the same.

The public front door is `ShardDataset` (a torch IterableDataset over the `shards` loader, in
`train.data.dataset`) and `ShardDataModule` (Lightning, `train.data.datamodule`): docs/api.md.

A factory takes a `LoaderSpec` and returns a `Loader`:

    loader = make_loader("shards", spec)
    len(loader)                # batches per epoch on this rank (defined before reading)
    loader.samples             # samples per epoch on this rank
    for batch in loader.epoch(epoch, start_batch=0): ...

Every batch is a dict:
- `image`: tensor (B, C, H, W). `torch.uint16` = stored values (S2 reflectance, S1 codes) that
  the training loop turns into model input with the spec's `ChannelTransform` on the device;
  a floating tensor is already model input (a loader that normalises itself, e.g. DALI on GPU).
- `target`: int64 (B,) class indices (single-label) or float32 (B, classes) 0/1 (multi-label).
- `prob`: float32 (B, 17) the stored IGBP probability vectors (metrics derive true labels).
- `key`: list of B sample keys (the S2 stem, `ROIs1158_spring_s2_1_p30`).
- `shard` (optional): list of B shard URLs the samples came from (error messages name them).
- `symmetry` (with `augment`): uint8 (B,) codes of the symmetry of the square each sample is to
  be moved by, applied where the batch becomes model input (`train.data.symmetry`); the image
  itself is as stored. A loader that augments on its own (DALI) hands no codes.

With `LoaderSpec(targets="mask")` (segmentation; shards loader only) a batch holds `image`,
`mask`, `key` and `shard`, no `target` or `prob`:
- `mask`: torch.uint8 (B, H, W), 0-based DFC2020 training classes, 255 = ignore: from a dfc
  member (DFC2020 splits) as `sen12ms_common.dfc.dfc_to_train` maps it, else from lc band 1
  (IGBP) as `igbp_to_dfc` maps it; `no_savanna` folds savanna away (9 classes). The `symmetry`
  codes move the mask with its image.

`epoch(e, start_batch=s)` yields batches s, s+1, ... of epoch e; the order of an epoch is a
function of the spec (seed, batch size, streams, rank, world size) and e, not of the number of
worker processes (see `train.data.plan`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Protocol

from sen12ms_common.bands import BandRef, modalities_of
from sen12ms_common.cpus import usable_cpus
from sen12ms_common.errors import DataError
from sen12ms_common.igbp import LabelRule
from sen12ms_common.inputs import ChannelTransform
from sen12ms_common.manifest import Manifest


class LoaderUnavailable(DataError):
    """A loader whose optional dependency is not installed."""


@dataclass(frozen=True)
class LoaderSpec:
    root: str                      # shard set: local folder or URL (s3://bucket/prefix)
    manifest: Manifest
    split: str                     # train | val | test
    bands: tuple[BandRef, ...]     # model input channels, in order
    rule: LabelRule
    batch_size: int
    transform: ChannelTransform    # stored uint16 -> model input (for loaders that normalise)
    train: bool = False            # shuffle shards and samples; equal share per rank
    seed: int = 0
    workers: int = 0               # worker processes (0: this process reads)
    threads: int = 0               # decoding threads per reading process (0: every CPU here, 1 per worker)
    streams: int = 8               # independent read streams per rank (order depends on it)
    shuffle_buffer: int = 1000     # samples held for shuffling per rank (split over streams)
    rank: int = 0
    world_size: int = 1
    pin_memory: bool = False
    device: str = "cpu"
    verify: bool = True            # check sizes up front and each shard's xxh3-128 while streaming
    skip_bad_shards: bool = False  # report unreadable shards / samples and go on
    augment: bool = False          # random flips / 90-degree rotations of training batches
    targets: str = "labels"        # labels: scene labels (target, prob); mask: pixel masks (segmentation)
    no_savanna: bool = False       # masks: savanna ignored (255), the classes above it shift down (9 classes)
    part: int = 0                  # this reader's block of the rank's batches (DataLoader worker id) ...
    parts: int = 1                 # ... of this many (`plan.part_range`; 1: the rank's every batch)
    shared_memory: bool = False    # batches in shared memory of their own (a DataLoader worker sends them as they are)


TARGETS: tuple[str, ...] = ("labels", "mask")


def mask_source(spec: LoaderSpec) -> str | None:
    """The member a spec's masks come from (`dfc` or `lc`), None for scene labels; a split that
    cannot give the spec's targets is one DataError."""
    layout = spec.manifest.layout_of(spec.split)
    if spec.targets not in TARGETS:
        raise DataError(f"unknown targets {spec.targets!r} (choose one of: {', '.join(TARGETS)})")
    if spec.targets == "mask":
        if layout.mask is None:
            raise DataError(f"{spec.root}: the {spec.split} split holds no masks (they hold "
                            f"{', '.join(layout.modalities)}); convert with --modalities s1,s2,lc, or add a DFC2020 tree")
        return layout.mask
    if not layout.labels:
        raise DataError(f"{spec.root}: the {spec.split} split holds no scene labels (DFC2020 samples carry dfc "
                        "masks only): use it for segmentation")
    return None


def check_modalities(manifest: Manifest, bands: tuple[BandRef, ...], root: str, split: str, advice: str = "") -> None:
    """DataError naming `root` when the shards of `split` lack a modality the input needs (the one
    check, for every loader and command); `advice` says what the caller's user can do about it."""
    held = manifest.layout_of(split).modalities
    missing = [m for m in modalities_of(bands) if m not in held]
    if missing:
        raise DataError(f"{root}: these shards hold no {', '.join(missing)} (they hold {', '.join(held)})"
                        + (f"; {advice}" if advice else ""))


class Loader(Protocol):
    samples: int
    skipped: list[str]             # "shard: reason" of everything skipped so far

    def __len__(self) -> int: ...

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[dict[str, Any]]: ...

    def close(self) -> None: ...


def _shards(spec: LoaderSpec) -> Loader:
    # Here, not at the top: the loader imports torch, and this registry is read by --help; it
    # also imports this package back.
    from .webdataset import make_loader as webdataset_loader

    return webdataset_loader(spec)


def _dali(spec: LoaderSpec) -> Loader:
    try:  # here, not at the top: DALI is an optional extra (and takes a second to import)
        from .dali import make_loader as dali_loader
    except ImportError as exc:
        raise LoaderUnavailable(f"the dali loader is not available ({exc}); install it: "
                                "pip install '.[dali]' (nvidia-dali-cuda130 for torch 2.14.1+cu130)") from exc
    return dali_loader(spec)


# --loader NAME -> the factory that makes it.
LOADERS: dict[str, Callable[[LoaderSpec], Loader]] = {"shards": _shards, "dali": _dali}

# Old name -> its name now: `--loader webdataset` still works (it never used the webdataset
# library; the run configuration says so once, `train.config`).
RENAMED: dict[str, str] = {"webdataset": "shards"}


def canonical_loader(name: str) -> str:
    """The loader's name now (`webdataset` -> `shards`); any other name as given."""
    return RENAMED.get(name, name)


AUTO = "auto"  # --workers auto: worker processes where there are cores for them


def resolve_workers(workers: int | str, streams: int = 8) -> int:
    """`auto`: a worker process per CPU this process may use (shared among a node's ranks under
    torchrun), at most one per read stream; 0 (this process reads, with threads) where that
    makes one or none: a lone worker would only add the crossing. Measured in
    docs/performance.md (worker processes scale over cores, reading threads share one GIL)."""
    if workers != AUTO:
        return int(workers)
    n = min(usable_cpus() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)), streams)
    return n if n > 1 else 0


def loader_names() -> list[str]:
    return list(LOADERS)


def get_factory(name: str) -> Callable[[LoaderSpec], Loader]:
    name = canonical_loader(name)
    if name not in LOADERS:
        raise DataError(f"unknown loader {name!r} (choose one of: {', '.join(LOADERS)})")
    return LOADERS[name]


def make_loader(name: str, spec: LoaderSpec) -> Loader:
    return get_factory(name)(spec)


def __getattr__(name: str) -> Any:
    # The front door (docs/api.md), imported when first used: `import train.data` needs neither
    # the readers nor Lightning.
    if name in ("ShardDataset", "ShardDatasetError"):
        from . import dataset

        return getattr(dataset, name)
    if name == "ShardDataModule":
        from .datamodule import ShardDataModule

        return ShardDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
