"""Where a new run's weights start (`--init-from`, `--init-partial`, `--pretrained-backbone`):
a checkpoint of ours, of the original toolbox (`*_model_best.pth`) or of the DFC2020 baseline
(`checkpoint_step_N.pth`), loaded strictly or as far as it fits; or torchvision's ImageNet
weights for the backbone of a model that has one. Nothing is ever downloaded."""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from sen12ms_common.errors import CheckpointError

from ..models.segmentation import imagenet_weights_file, load_backbone_weights
from .checkpoint import _strip_wrapper_prefixes, load_checkpoint, load_model_weights, unwrap_model

Echo = Callable[[str], None]

# Our model -> torchvision's name: the ImageNet files are those of its IMAGENET1K_V1 weights.
_TORCHVISION = {"ResNet18": "resnet18", "ResNet50": "resnet50", "ResNet101": "resnet101", "ResNet152": "resnet152",
                "DenseNet121": "densenet121", "DenseNet161": "densenet161", "DenseNet169": "densenet169",
                "DenseNet201": "densenet201", "VGG16": "vgg16", "VGG19": "vgg19"}
BACKBONE_MODELS: tuple[str, ...] = (*_TORCHVISION, "DeepLabV3Plus")
_DENSENET_PARTS = ("conv0", "norm0", "relu0", "pool0", "denseblock1", "transition1", "denseblock2", "transition2",
                   "denseblock3", "transition3", "denseblock4", "norm5")
# torchvision's DenseNet files keep the old names `denselayerN.norm.1.weight` (torchvision renames on load).
_OLD_DENSE = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.([12]\.(?:weight|bias|running_mean|running_var))$")


def _shown_keys(keys: list[str], n: int = 6) -> str:
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def init_from(model: nn.Module, source: str, partial: bool = False, echo: Echo = print) -> list[str]:
    """Copy the weights of checkpoint `source` into `model`. Strict: every tensor must be there
    with its shape (a one-line CheckpointError otherwise). `partial`: the tensors whose name and
    shape fit are loaded, the rest keep their initialisation; returns (and prints) their names."""
    ckpt = load_checkpoint(source)
    if not partial:
        try:
            load_model_weights(model, ckpt, strict=True, source=source)
        except CheckpointError as exc:
            raise CheckpointError(f"{exc} (--init-partial loads the tensors that fit)") from None
        echo(f"weights from {source}: all {len(unwrap_model(model).state_dict())} tensors loaded")
        return []
    target = unwrap_model(model)
    own = target.state_dict()
    state = _strip_wrapper_prefixes(ckpt["model_state_dict"])
    fits = {k: v for k, v in state.items()
            if k in own and isinstance(v, torch.Tensor) and tuple(v.shape) == tuple(own[k].shape)}
    if not any(k in fits for k in own if own[k].is_floating_point()):
        raise CheckpointError(f"{source}: no tensor of it fits the model (another network?)")
    target.load_state_dict({**own, **{k: v.to(own[k].dtype) for k, v in fits.items()}})
    not_loaded = [k for k in own if k not in fits]
    unused = [k for k in state if k not in fits]
    echo(f"weights from {source}: {len(fits)} of {len(own)} tensors loaded"
         + (f"; not loaded (kept as initialised): {_shown_keys(not_loaded)}" if not_loaded else "")
         + (f"; in the checkpoint but not used: {_shown_keys(unused)}" if unused else ""))
    return not_loaded


def imagenet_file(model_name: str) -> Path:
    """torchvision's ImageNet weights file of `model_name`'s backbone in torch's hub cache
    (`$TORCH_HOME/hub/checkpoints`); CheckpointError naming the folder and files when absent."""
    if model_name == "DeepLabV3Plus":
        return imagenet_weights_file()
    from torchvision import models as tvm  # start-up time: torch only when used

    weights = tvm.get_model_weights(_TORCHVISION[model_name]).IMAGENET1K_V1
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    name = weights.url.rsplit("/", 1)[1]
    if (folder / name).is_file():
        return folder / name
    raise CheckpointError(f"no ImageNet weights of {model_name} in {folder} (looked for {name}, from "
                          f"{weights.url}); nothing is downloaded: copy the file there or give its path")


def _our_key(model_name: str, key: str) -> str | None:
    """The name in our model of a torchvision backbone tensor; None for its stem and head."""
    if model_name.startswith("ResNet"):
        m = re.match(r"^(bn1|layer[1-4])\.(.+)$", key)
        return None if m is None else f"encoder.{1 if m[1] == 'bn1' else 3 + int(m[1][-1])}.{m[2]}"
    if model_name.startswith("DenseNet"):
        key = _OLD_DENSE.sub(r"\1\2", key)
        m = re.match(r"^features\.([a-z]+\d)\.(.+)$", key)
        if m is None or m[1] not in _DENSENET_PARTS[1:]:
            return None
        return f"encoder.{_DENSENET_PARTS.index(m[1])}.{m[2]}"
    m = re.match(r"^features\.(\d+)\.(.+)$", key)  # VGG
    return None if m is None or m[1] == "0" else f"encoder.{m[1]}.{m[2]}"


def _read_state(path: Path) -> Mapping[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: cannot read backbone weights ({first})") from None
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: not a state dict")
    return state


def pretrained_backbone(model_name: str, model: nn.Module, source: str | os.PathLike, echo: Echo = print) -> int:
    """Load torchvision ImageNet weights ("imagenet": from torch's hub cache; else a file path)
    into the backbone of `model`, all but the input stem (other channels) and the head; the
    number of tensors loaded. CheckpointError for a model without one or a file that does
    not fit."""
    if model_name not in BACKBONE_MODELS:
        raise CheckpointError(f"--pretrained-backbone: {model_name} has no ImageNet backbone (models with one: "
                              f"{', '.join(BACKBONE_MODELS)})")
    path = imagenet_file(model_name) if str(source) == "imagenet" else Path(source)
    target = unwrap_model(model)
    if model_name == "DeepLabV3Plus":
        load_backbone_weights(target.backbone, path)
        n = len(target.backbone.state_dict()) - 1
    else:
        own = target.state_dict()
        mapped = {_our_key(model_name, k): v for k, v in _read_state(path).items()}
        wanted = [k for k in own if k.startswith("encoder.") and not k.startswith("encoder.0.")]
        missing = [k for k in wanted if k not in mapped]
        bad = [k for k in wanted if k in mapped and tuple(mapped[k].shape) != tuple(own[k].shape)]
        if missing or bad:
            what = f"{len(missing)} tensors missing, e.g. {missing[0]}" if missing else f"wrong shape of {bad[0]}"
            raise CheckpointError(f"{path}: not torchvision's {_TORCHVISION[model_name]} weights ({what})")
        target.load_state_dict({**own, **{k: mapped[k].to(own[k].dtype) for k in wanted}})
        n = len(wanted)
    echo(f"ImageNet backbone of {model_name}: {n} tensors from {path} (the input stem and the head keep their "
         "initialisation)")
    return n


def start_weights(cfg: Any, model: nn.Module, echo: Echo = print) -> None:
    """A new run's weights: --pretrained-backbone first, then --init-from over it."""
    backbone = getattr(cfg, "pretrained_backbone", None)
    if backbone and str(backbone).lower() != "none":  # none: a preset's backbone turned off
        pretrained_backbone(cfg.model, model, backbone, echo)
    if getattr(cfg, "init_from", None):
        init_from(model, cfg.init_from, bool(getattr(cfg, "init_partial", False)), echo)


__all__ = ["BACKBONE_MODELS", "init_from", "imagenet_file", "pretrained_backbone", "start_weights"]
