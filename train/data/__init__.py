"""Loaders: name -> factory, so that `--loader NAME` picks one and the training loop stays the same."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Protocol

from sen12ms_common.bands import BandRef
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
    verify: bool = True            # check sizes up front and sha256 while streaming
    skip_bad_shards: bool = False  # report unreadable shards / samples and go on
    augment: bool = False          # random flips / transposes of training batches (DALI pipeline)


class Loader(Protocol):
    samples: int
    skipped: list[str]             # "shard: reason" of everything skipped so far

    def __len__(self) -> int: ...

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[dict[str, Any]]: ...

    def close(self) -> None: ...


# name -> "module:factory"; modules are imported only when chosen (DALI is an optional extra).
LOADERS: dict[str, str] = {
    "webdataset": "train.data.webdataset:make_loader",
    "dali": "train.data.dali:make_loader",
}

INSTALL_HINT: dict[str, str] = {
    "dali": "pip install '.[dali]' (nvidia-dali-cuda130 for torch 2.14.1+cu130)",
}


def loader_names() -> list[str]:
    return list(LOADERS)


def get_factory(name: str) -> Callable[[LoaderSpec], Loader]:
    if name not in LOADERS:
        raise DataError(f"unknown loader {name!r} (choose one of: {', '.join(LOADERS)})")
    module_name, attr = LOADERS[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        hint = INSTALL_HINT.get(name, "")
        raise LoaderUnavailable(f"the {name} loader is not available ({exc})" + (f"; install it: {hint}" if hint else "")) from exc
    return getattr(module, attr)


def make_loader(name: str, spec: LoaderSpec) -> Loader:
    return get_factory(name)(spec)
