"""Whether a checkpoint was trained on the input a run or an evaluation asks for: one line such
as "trained on s2 (10 channels), asked for s1s2 (12)" instead of a tensor-shape mismatch."""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from sen12ms_common.errors import CheckpointError, InputError
from sen12ms_common.vocab.bands import BandRef, resolve_bands

from ..config.trainconfig import canonical_input
from .checkpoint import unwrap_model


def _first_conv_channels(tensors: Mapping[str, Any]) -> int | None:
    """Input channels of the first 4-D weight (the first convolution) in state-dict order."""
    for key, value in tensors.items():
        if isinstance(key, str) and key.endswith("weight") and isinstance(value, torch.Tensor) and value.ndim == 4:
            return int(value.shape[1])
    return None


def trained_input(ckpt: Mapping[str, Any]) -> str | None:
    """The input our checkpoint stores in its configuration (canonical), else None."""
    config = ckpt.get("config")
    value = config.get("input") if isinstance(config, Mapping) else None
    if not isinstance(value, str):
        return None
    try:
        return canonical_input(value)
    except (InputError, ValueError):
        return None


def _band_names(spec: str) -> list[str]:
    return [b.name for b in resolve_bands(spec)]


def _described(name: str | None, channels: int | None) -> str:
    if name is None:
        return f"{channels} input channels"
    return f"{name} ({channels if channels is not None else len(resolve_bands(name))} channels)"


def check_input(ckpt: Mapping[str, Any], model: nn.Module, asked: str, source: str,
                bands: tuple[BandRef, ...] | None = None) -> None:
    """CheckpointError naming `source` when the checkpoint was trained on another input than
    `asked` (canonical; `bands`: what it names, where already read): other bands by its stored
    configuration, or another channel count by its first convolution."""
    asked_bands = bands if bands is not None else resolve_bands(asked)
    state = ckpt.get("model_state_dict")
    theirs = _first_conv_channels(state) if isinstance(state, Mapping) else None
    ours = _first_conv_channels(unwrap_model(model).state_dict())
    name = trained_input(ckpt)
    if name is not None and theirs is not None and len(resolve_bands(name)) != theirs:
        name = None  # a stored configuration that its weights contradict: trust the weights
    other_bands = name is not None and _band_names(name) != [b.name for b in asked_bands]
    if other_bands or (theirs is not None and ours is not None and theirs != ours):
        raise CheckpointError(f"{source}: trained on {_described(name, theirs)}, asked for {asked} "
                              f"({len(asked_bands)})")


__all__ = ["check_input", "trained_input"]
