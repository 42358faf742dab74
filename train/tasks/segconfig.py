"""What a segmentation checkpoint of ours says about its model: network, input channels, class
scheme and the exact input transform it trained with; and the model built from it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn

from sen12ms_common.errors import CheckpointError
from sen12ms_common.vocab.bands import BandRef, read_input
from sen12ms_common.vocab.dfc import DfcScheme
from sen12ms_common.vocab.inputs import ChannelTransform, channel_transform

from ..run.checkpoint import load_model_weights, stored_input_transform

OUTPUT_STRIDES = (8, 16)


@dataclass(frozen=True)
class SegModelSpec:
    model: str
    input: str
    savanna: bool
    output_stride: int
    stats: str
    transform: ChannelTransform
    bands: tuple[BandRef, ...]  # what `input` names

    @property
    def scheme(self) -> DfcScheme:
        return DfcScheme(self.savanna)

    def build(self, device: torch.device | str = "cpu") -> nn.Module:
        from ..models.registry import build_model  # start-up time: torchvision only when used

        net = build_model(self.model, len(self.bands), self.scheme.num_classes, task="segmentation",
                          **model_options(self.model, self.output_stride))
        return net.to(device)


def model_options(model: str, output_stride: int) -> dict[str, Any]:
    """The builder options a segmentation network takes from the run's options."""
    return {"output_stride": int(output_stride)} if model == "DeepLabV3Plus" else {}


def spec_from_checkpoint(ckpt: Mapping[str, Any], source: str, stats: str | None = None) -> SegModelSpec:
    """Read our checkpoint's `config` (task, model, input, no_savanna, output_stride, stats) and
    `input_transform`; `stats` replaces the stored transform. One-line `CheckpointError`s."""
    from ..models.registry import model_names  # start-up time: torchvision only when used

    cfg = ckpt.get("config")
    if not isinstance(cfg, Mapping):
        raise CheckpointError(f"{source}: holds no configuration of ours (not a checkpoint of `python -m train "
                              "--task segmentation`)")
    if cfg.get("task", "classification") != "segmentation":
        raise CheckpointError(f"{source}: a {str(cfg.get('task', 'classification'))[:40]} checkpoint, not a "
                              "segmentation one (use python -m train.evaluate for classifiers)")
    model = str(cfg.get("model", ""))
    if model not in model_names("segmentation"):
        raise CheckpointError(f"{source}: unknown segmentation model {model[:100]!r}")
    stride = cfg.get("output_stride", 16)
    if stride not in OUTPUT_STRIDES:
        raise CheckpointError(f"{source}: output_stride {str(stride)[:20]} is not 8 or 16")
    try:
        read = read_input(str(cfg.get("input", "")))
        input_spec, bands = read.text, read.bands
        chosen = stats or str(cfg.get("stats", "dfc2020"))
        transform = (None if stats else stored_transform(ckpt, bands, source)) or channel_transform(bands, chosen)
    except ValueError as exc:
        raise CheckpointError(f"{source}: {str(exc).splitlines()[0]}") from None
    return SegModelSpec(model, input_spec, not bool(cfg.get("no_savanna", False)), int(stride), chosen, transform,
                        bands)


def stored_transform(ckpt: Mapping[str, Any], bands: tuple[BandRef, ...], source: str) -> ChannelTransform | None:
    """The exact per-channel transform a checkpoint stores for `bands` (None if absent or for other bands)."""
    return stored_input_transform(ckpt, bands, source)


def load_segmentation_model(ckpt: Mapping[str, Any], source: str, device: torch.device | str,
                            stats: str | None = None) -> tuple[SegModelSpec, nn.Module]:
    spec = spec_from_checkpoint(ckpt, source, stats)
    net = spec.build(device)
    load_model_weights(net, ckpt, strict=True, source=source)
    return spec, net.eval()
