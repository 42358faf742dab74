"""Segmentation networks: UNet and DeepLabv3+ (ResNet-101), with the DFC2020 baseline's layouts.

Module names and shapes follow the baseline's model classes, so that its checkpoints load with
`load_state_dict(strict=True)`; docs/segmentation.md lists the layouts. Nothing is downloaded:
ImageNet backbone weights are read only from a local file.
"""

from __future__ import annotations

import os
import pickle
from functools import partial
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models as tvm

from sen12ms_common.errors import CheckpointError

__all__ = ["UNet", "DeepLabV3Plus", "SEGMENTATION_MODELS", "imagenet_weights_file"]

# torchvision's file names of the ImageNet ResNet-101 weights the baseline starts from (the older
# name first), looked for in torch's hub cache by `backbone_weights="imagenet"`.
IMAGENET_FILES = ("resnet101-5d3b4d8f.pth", "resnet101-63fe2227.pth")
SMALL_UNET_WIDTH = 8  # SmallUNet: the UNet at 1/8 of the width, 1/64 of the work


# --- UNet ------------------------------------------------------------------------------------

class _TwoConvs(nn.Module):
    """(3x3 convolution with bias, BatchNorm, ReLU) twice."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for a in (cin, cout):
            layers += [nn.Conv2d(a, cout, kernel_size=3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        self.double_conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.double_conv(x)


class _Down(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.maxpool_conv = nn.Sequential(nn.MaxPool2d(2), _TwoConvs(cin, cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool_conv(x)


class _Up(nn.Module):
    """Bilinear x2 upsampling (no weights), padded to the skip's size, concatenated after it."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        self.conv = _TwoConvs(cin, cout)

    def forward(self, deep: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(deep)
        dy, dx = skip.shape[2] - x.shape[2], skip.shape[3] - x.shape[3]
        if dy or dx:  # odd sizes: the pooled map was rounded down
            x = F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        return self.conv(torch.cat([skip, x], dim=1))


class _Head(nn.Module):
    def __init__(self, cin: int, classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class UNet(nn.Module):
    """The classic UNet, 4 down / 4 up, 64..512 channels, bilinear upsampling; PyTorch's default
    initialisation, as the baseline. Logits (B, classes, H, W) for any H, W.

    `width`: channels of the first level (64: the baseline's; smaller for tests and demos)."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 64) -> None:
        super().__init__()
        if int(width) < 1:
            raise ValueError(f"UNet width must be >= 1, not {width}")
        w = int(width)
        self.inc = _TwoConvs(in_channels, w)
        self.down1, self.down2 = _Down(w, 2 * w), _Down(2 * w, 4 * w)
        self.down3, self.down4 = _Down(4 * w, 8 * w), _Down(8 * w, 8 * w)
        self.up1, self.up2 = _Up(16 * w, 4 * w), _Up(8 * w, 2 * w)
        self.up3, self.up4 = _Up(4 * w, w), _Up(2 * w, w)
        self.outc = _Head(w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        x = self.up1(self.down4(x4), x4)
        x = self.up2(x, x3)
        x = self.up3(x, x2)
        return self.outc(self.up4(x, x1))


# --- DeepLabv3+ ------------------------------------------------------------------------------

# Output stride -> (stride, base dilation) of layer3 and layer4. layer4's three blocks multiply
# the base dilation by the multi-grid (1, 2, 4).
_STRIDES = {16: ((2, 1), (1, 2)), 8: ((1, 2), (1, 4))}
_MULTI_GRID = (1, 2, 4)


def _set_atrous(layer: nn.Sequential, stride: int, dilations: tuple[int, ...]) -> None:
    for i, (block, d) in enumerate(zip(layer, dilations)):
        block.conv2.stride = (stride, stride) if i == 0 else (1, 1)
        block.conv2.dilation = block.conv2.padding = (d, d)
        if block.downsample is not None:
            block.downsample[0].stride = (stride, stride)


class ResNet101Backbone(nn.Module):
    """torchvision's ResNet-101 without pooling and head, an n-channel stem, atrous layer3/4.
    Returns the deep features and layer1's (stride 4) for the decoder."""

    def __init__(self, in_channels: int, output_stride: int = 16) -> None:
        super().__init__()
        if output_stride not in _STRIDES:
            raise ValueError(f"DeepLabV3Plus: output stride must be 8 or 16, not {output_stride}")
        net = tvm.resnet101(weights=None)
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")  # as the rest
        self.bn1, self.relu, self.maxpool = net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        (s3, d3), (s4, d4) = _STRIDES[output_stride]
        _set_atrous(self.layer3, s3, (d3,) * len(self.layer3))
        _set_atrous(self.layer4, s4, tuple(d4 * g for g in _MULTI_GRID))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low = self.layer1(self.maxpool(self.relu(self.bn1(self.conv1(x)))))
        return self.layer4(self.layer3(self.layer2(low))), low


def _conv_bn_relu(cin: int, cout: int, k: int, dilation: int = 1) -> list[nn.Module]:
    pad = 0 if k == 1 else dilation
    return [nn.Conv2d(cin, cout, k, padding=pad, dilation=dilation, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class _AtrousBranch(nn.Module):
    def __init__(self, cin: int, k: int, dilation: int) -> None:
        super().__init__()
        conv, bn, relu = _conv_bn_relu(cin, 256, k, dilation)
        self.atrous_conv, self.bn, self.relu = conv, bn, relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.atrous_conv(x)))


class ASPP(nn.Module):
    """Four atrous branches and image pooling, 256 channels each, fused to 256."""

    def __init__(self, output_stride: int, cin: int = 2048) -> None:
        super().__init__()
        rates = (6, 12, 18) if output_stride == 16 else (12, 24, 36)
        self.aspp1 = _AtrousBranch(cin, 1, 1)
        self.aspp2, self.aspp3, self.aspp4 = (_AtrousBranch(cin, 3, r) for r in rates)
        self.global_avg_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), *_conv_bn_relu(cin, 256, 1))
        self.conv1, self.bn1, self.relu = _conv_bn_relu(5 * 256, 256, 1)
        self.dropout = nn.Dropout(0.5)

    def _image_pool(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and x.shape[0] == 1):
            return self.global_avg_pool(x)
        # One sample pooled to 1 x 1 has no batch statistics (a last training batch of one):
        # its BatchNorm normalises with the running ones for this call instead of failing.
        bn = self.global_avg_pool[2]
        bn.eval()
        try:
            return self.global_avg_pool(x)
        finally:
            bn.train()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.interpolate(self._image_pool(x), size=x.shape[2:], mode="bilinear", align_corners=True)
        x = torch.cat([self.aspp1(x), self.aspp2(x), self.aspp3(x), self.aspp4(x), pooled], dim=1)
        return self.dropout(self.relu(self.bn1(self.conv1(x))))


class Decoder(nn.Module):
    """Low-level features cut to 48 channels, joined with the upsampled ASPP output, two 3x3
    convolutions and the 1x1 classifier."""

    def __init__(self, num_classes: int, low_channels: int = 256) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu = _conv_bn_relu(low_channels, 48, 1)
        self.last_conv = nn.Sequential(
            *_conv_bn_relu(256 + 48, 256, 3), nn.Dropout(0.5),
            *_conv_bn_relu(256, 256, 3), nn.Dropout(0.1),
            nn.Conv2d(256, num_classes, kernel_size=1),
        )

    def forward(self, x: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        low = self.relu(self.bn1(self.conv1(low)))
        x = F.interpolate(x, size=low.shape[2:], mode="bilinear", align_corners=True)
        return self.last_conv(torch.cat([x, low], dim=1))


def _init_head(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class DeepLabV3Plus(nn.Module):
    """DeepLabv3+ on ResNet-101, output stride 8 or 16; logits at the input's size.

    `backbone_weights`: None (random), "imagenet" (torchvision's ImageNet file from torch's hub
    cache, never downloaded) or a path to a ResNet-101 state dict; the stem is never loaded, as
    it takes other channels.
    """

    def __init__(self, in_channels: int, num_classes: int, output_stride: int = 16,
                 backbone_weights: str | os.PathLike | None = None) -> None:
        super().__init__()
        self.backbone = ResNet101Backbone(in_channels, output_stride)
        self.aspp = ASPP(output_stride)
        self.decoder = Decoder(num_classes)
        _init_head(self.aspp)
        _init_head(self.decoder)
        if backbone_weights:
            load_backbone_weights(self.backbone, backbone_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        deep, low = self.backbone(x)
        out = self.decoder(self.aspp(deep), low)
        return F.interpolate(out, size=x.shape[2:], mode="bilinear", align_corners=True)

    def parameter_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(backbone, head) parameters: the baseline trains the head at 10 x the learning rate."""
        return list(self.backbone.parameters()), list(self.aspp.parameters()) + list(self.decoder.parameters())


def imagenet_weights_file() -> Path:
    """The ImageNet ResNet-101 file in torch's hub cache; `CheckpointError` when absent."""
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    for name in IMAGENET_FILES:
        if (folder / name).is_file():
            return folder / name
    raise CheckpointError(f"no ImageNet ResNet-101 weights in {folder} (looked for {', '.join(IMAGENET_FILES)}); "
                          "nothing is downloaded: copy the file there or give its path")


def load_backbone_weights(backbone: ResNet101Backbone, source: str | os.PathLike) -> None:
    """Load a torchvision ResNet-101 state dict into `backbone`, all but the stem and the head."""
    path = imagenet_weights_file() if str(source) == "imagenet" else Path(source)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as exc:
        raise CheckpointError(f"{path}: cannot read backbone weights ({exc})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    own = backbone.state_dict()
    wanted = {k for k in own if k != "conv1.weight"}
    missing = sorted(wanted - set(state))
    bad = sorted(k for k in wanted & set(state) if tuple(state[k].shape) != tuple(own[k].shape))
    if missing or bad:
        what = f"{len(missing)} missing, e.g. {missing[0]}" if missing else f"wrong shape of {bad[0]}"
        raise CheckpointError(f"{path}: not a ResNet-101 state dict ({what})")
    backbone.load_state_dict({**own, **{k: state[k] for k in wanted}})


# name -> builder(in_channels, num_classes, **options)
SEGMENTATION_MODELS: dict[str, Callable[..., nn.Module]] = {
    "UNet": UNet,
    "DeepLabV3Plus": DeepLabV3Plus,
    "SmallUNet": partial(UNet, width=SMALL_UNET_WIDTH),  # for tests and demos on a CPU
}
