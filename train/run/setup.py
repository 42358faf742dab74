"""What a run or an evaluation is built from: the model on its device, its input, the label rule
and the task, and the loader of a split."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
import torch
from torch import nn

from sen12ms_common.format.manifest import Manifest, load_manifest
from sen12ms_common.vocab.bands import BandRef, resolve_bands
from sen12ms_common.vocab.igbp import LabelRule
from sen12ms_common.vocab.inputs import ChannelTransform, channel_transform

from ..data import Loader, LoaderSpec, canonical_loader, check_modalities, make_loader, resolve_workers
from ..data.dataset import ShardDataset
from ..tasks.registry import Task, make_task
from .device import InputTransform, Precision, configure_backends, precision, prepare_model, resolve_device

if TYPE_CHECKING:
    from ..config.trainconfig import TrainConfig
    from .distributed import Dist


@dataclass
class Setup:
    """The model, its input, label rule and task, and the device, as a run or an evaluation needs."""

    manifest: Manifest
    bands: tuple[BandRef, ...]
    rule: LabelRule
    transform: ChannelTransform
    device: torch.device
    model: nn.Module      # owns the state dict
    forward: nn.Module    # what is called (compiled or the model itself)
    precision: Precision
    input_fn: InputTransform
    task: Task
    train_forward: nn.Module | None = None  # DistributedDataParallel(forward) under torchrun

    @property
    def loss_fn(self) -> nn.Module:
        return self.task.loss_fn

    @property
    def step_forward(self) -> nn.Module:
        return self.train_forward if self.train_forward is not None else self.forward


def make_setup(*, shards: str, model_name: str, input_spec: str | tuple[BandRef, ...], label_type: str, igbp: str,
               threshold: float, stats: str, device: str = "auto", amp: bool = False,
               channels_last: bool = False, compile: bool = False, task: str = "classification",
               task_options: Mapping[str, Any] | None = None,
               transform: ChannelTransform | None = None, manifest: Manifest | None = None) -> Setup:
    """`input_spec`: an input set or band list, or the bands already read from one."""
    manifest = manifest or load_manifest(shards)
    bands = input_spec if isinstance(input_spec, tuple) else resolve_bands(input_spec)
    rule = LabelRule(label_type, igbp, threshold)
    the_task = make_task(task, rule, **(task_options or {}))
    if transform is None:
        transform = channel_transform(bands, stats, manifest.stats)
    dev = resolve_device(device)
    configure_backends(dev)
    model = the_task.build_model(model_name, len(bands))
    model, forward = prepare_model(model, dev, channels_last=channels_last, compile=compile)
    return Setup(manifest, bands, rule, transform, dev, model, forward, precision(dev, amp),
                 InputTransform(transform, dev, channels_last, reuse=True), the_task)


def loader_spec(setup: Setup, root: str, split: str, *, train: bool, workers: int | str = "auto",
                augment: bool = False, rank: int = 0, world_size: int = 1, **reading: Any) -> LoaderSpec:
    """The LoaderSpec of `split`: what the setup fixes (manifest, bands, label rule, transform,
    device, targets), and `reading`, the options of the same names (`TrainConfig.loader_options()`:
    batch_size, seed, threads, streams, shuffle_buffer, verify, skip_bad_shards). `workers` may be
    auto; `augment` applies to training only."""
    task = setup.task
    return LoaderSpec(root=root, manifest=setup.manifest, split=split, bands=setup.bands, rule=setup.rule,
                      transform=setup.transform, train=train, augment=augment and train,
                      workers=resolve_workers(workers, reading.get("streams", LoaderSpec.streams)),
                      rank=rank, world_size=world_size, pin_memory=setup.device.type == "cuda",
                      device=str(setup.device), targets=task.targets,
                      no_savanna=task.targets == "mask" and not getattr(task, "scheme").savanna, **reading)


def split_loader_of(setup: Setup, loader: str, root: str, split: str, *, train: bool, workers: int | str = "auto",
                    augment: bool = False, rank: int = 0, world_size: int = 1, **reading: Any) -> Loader:
    """The loader of `split` as `--loader` names it: `shards` is the public `ShardDataset` (its
    native uint16 batches, `ShardDataset.epoch`), other loaders (dali) come from `make_loader`.
    `reading` as for `loader_spec`."""
    if canonical_loader(loader) != "shards":
        return make_loader(loader, loader_spec(setup, root, split, train=train, workers=workers, augment=augment,
                                               rank=rank, world_size=world_size, **reading))
    segmentation = setup.task.targets == "mask"
    return ShardDataset(root, split, input=tuple(b.name for b in setup.bands), label_type=setup.rule.label_type,
                        igbp=setup.rule.scheme, threshold=setup.rule.threshold,
                        task="segmentation" if segmentation else "classification",
                        no_savanna=segmentation and not getattr(setup.task, "scheme").savanna, normalize=None,
                        shuffle=train, augment=augment and train, workers=workers, rank=rank, world_size=world_size,
                        manifest=setup.manifest, pin_memory=setup.device.type == "cuda", **reading)

def run_loader(cfg: TrainConfig, setup: Setup, d: Dist, split: str) -> Loader:
    """The loader of `split` on this rank, as the run's options say."""
    return split_loader_of(setup, cfg.loader, cfg.shards, split, train=split == "train", rank=d.rank,
                           world_size=d.world_size, **cfg.loader_options())


def seed_everything(seed: int) -> None:
    """Python's, numpy's and torch's generators from one seed (model initialisation, dropout)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)

def has_split(manifest: Manifest, split: str) -> bool:
    return split in manifest.splits and manifest.samples(split) > 0


__all__ = ["Setup", "make_setup", "loader_spec", "split_loader_of", "run_loader", "seed_everything", "has_split",
           "check_modalities"]
