"""What a loader is: `LoaderSpec` (what to read and how), the `Loader` protocol and the batch
dict it yields (train.data's docstring), the checks every loader shares, --workers auto."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterator, Protocol

from sen12ms_common.cpus import usable_cpus
from sen12ms_common.errors import DataError
from sen12ms_common.format.manifest import Manifest
from sen12ms_common.vocab.bands import BandRef, modalities_of
from sen12ms_common.vocab.igbp import LabelRule
from sen12ms_common.vocab.inputs import ChannelTransform


class BatchBuffers(Protocol):
    """Where a loader makes its batch tensors instead of its own pools (a DataLoader worker's
    shared slots, `train.data.handover`): `place` takes one, `drop` gives back one whose batch
    was copied elsewhere."""

    def place(self, shape: tuple[int, ...], dtype: Any) -> Any: ...

    def drop(self, tensor: Any) -> None: ...


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
    batch_buffers: BatchBuffers | None = None  # where batches are made (None: the loader's own pools)


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
