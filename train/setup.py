"""What a run or an evaluation is built from: the model on its device, its input, the label rule
and the task, and the loader of a split."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn

from sen12ms_common.bands import BandRef, modalities_of, resolve_bands
from sen12ms_common.igbp import LabelRule
from sen12ms_common.inputs import ChannelTransform, channel_transform
from sen12ms_common.manifest import Manifest, load_manifest

from .data import DataError, LoaderSpec, resolve_workers
from .device import InputTransform, Precision, configure_backends, precision, prepare_model, resolve_device
from .tasks import Task, make_task


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


def make_setup(*, shards: str, model_name: str, input_spec: str, label_type: str, igbp: str,
               threshold: float, stats: str, device: str = "auto", amp: bool = False,
               channels_last: bool = False, compile: bool = False, task: str = "classification",
               task_options: Mapping[str, Any] | None = None,
               transform: ChannelTransform | None = None, manifest: Manifest | None = None) -> Setup:
    manifest = manifest or load_manifest(shards)
    bands = resolve_bands(input_spec)
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


def loader_spec(setup: Setup, root: str, split: str, *, batch_size: int, train: bool, seed: int = 0,
                workers: int | str = "auto", threads: int = 0, streams: int = 8, shuffle_buffer: int = 1000,
                verify: bool = True,
                skip_bad_shards: bool = False, rank: int = 0, world_size: int = 1,
                augment: bool = False) -> LoaderSpec:
    return LoaderSpec(root=root, manifest=setup.manifest, split=split, bands=setup.bands, rule=setup.rule,
                      batch_size=batch_size, transform=setup.transform, train=train, seed=seed,
                      workers=resolve_workers(workers, streams), threads=threads, streams=streams,
                      shuffle_buffer=shuffle_buffer, rank=rank,
                      world_size=world_size, pin_memory=setup.device.type == "cuda", device=str(setup.device),
                      verify=verify, skip_bad_shards=skip_bad_shards, augment=augment and train,
                      targets=setup.task.targets,
                      no_savanna=setup.task.targets == "mask" and not getattr(setup.task, "scheme").savanna)


def check_modalities(manifest: Manifest, bands: tuple[BandRef, ...], root: str, split: str, advice: str) -> None:
    """DataError naming `root` when the shards of `split` lack a modality the input needs;
    `advice` says what the caller's user can do about it."""
    held = manifest.layout_of(split).modalities
    missing = [m for m in modalities_of(bands) if m not in held]
    if missing:
        raise DataError(f"{root}: these shards hold no {', '.join(missing)} (they hold {', '.join(held)}); {advice}")


def has_split(manifest: Manifest, split: str) -> bool:
    return split in manifest.splits and manifest.samples(split) > 0


__all__ = ["Setup", "make_setup", "loader_spec", "has_split", "check_modalities"]
