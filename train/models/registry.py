"""The model registry: the original toolbox's nine networks, plus two small ones; and, by task,
the segmentation networks of `segmodels.py` (UNet, DeepLabV3Plus)."""

from __future__ import annotations

import difflib
from functools import partial
from typing import Any, Callable

import torch
from torch import nn
from torchvision import models as tvm

from .segmentation import SEGMENTATION_MODELS

__all__ = ["MODELS", "SEGMENTATION_MODELS", "MODELS_OF", "build_model", "model_names", "ResNetClassifier",
           "DenseNetClassifier", "VGGClassifier", "SmallCNN"]


def _kaiming_init(model: nn.Module) -> None:
    """The original's init: kaiming_normal_ (defaults) on every Conv2d and Linear weight."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight)


def _flat_features(x: torch.Tensor, expected: int, arch: str) -> torch.Tensor:
    # flatten (not view) so that channels_last tensors work; the element order is NCHW's either way.
    x = torch.flatten(x, 1)
    if x.shape[1] != expected:
        raise ValueError(f"{arch} needs 256 x 256 input patches: its classifier takes {expected} "
                         f"features, the encoder gave {x.shape[1]}")
    return x


class ResNetClassifier(nn.Module):
    """A torchvision ResNet with an n-channel first convolution, in the original's layout."""

    def __init__(self, backbone: Callable[..., nn.Module], in_channels: int, num_classes: int) -> None:
        super().__init__()
        resnet = backbone(weights=None)
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.encoder = nn.Sequential(
            self.conv1, resnet.bn1, resnet.relu, resnet.maxpool,
            resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4, resnet.avgpool,
        )
        self.FC = nn.Linear(resnet.fc.in_features, num_classes)
        _kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.FC(torch.flatten(self.encoder(x), 1))


class DenseNetClassifier(nn.Module):
    """A torchvision DenseNet with an n-channel stem; the 8 x 8 map goes flat into the classifier."""

    def __init__(self, backbone: Callable[..., nn.Module], in_channels: int, num_classes: int) -> None:
        super().__init__()
        densenet = backbone(weights=None)
        stem = densenet.features[0]  # 64 channels (96 for DenseNet161)
        self.encoder = nn.Sequential(
            nn.Conv2d(in_channels, stem.out_channels, kernel_size=7, stride=2, padding=3, bias=False),
            *densenet.features[1:],
        )
        # 256 px / 32 (stem, pool and three transitions halve the size) = an 8 x 8 map.
        self.classifier = nn.Linear(densenet.classifier.in_features * 8 * 8, num_classes)
        self._arch = type(densenet).__name__
        _kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _flat_features(self.encoder(x), self.classifier.in_features, self._arch)
        return self.classifier(x)


class VGGClassifier(nn.Module):
    """A torchvision VGG with an n-channel first convolution and the original's classifier."""

    def __init__(self, backbone: Callable[..., nn.Module], in_channels: int, num_classes: int) -> None:
        super().__init__()
        vgg = backbone(weights=None)
        self.encoder = nn.Sequential(
            nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=True),
            *vgg.features[1:],
        )
        self.classifier = nn.Sequential(
            nn.Linear(8 * 8 * 512, 4096), nn.ReLU(inplace=True), nn.Dropout(),
            nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(),
            nn.Linear(4096, num_classes),
        )
        _kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _flat_features(self.encoder(x), 8 * 8 * 512, "VGG")
        return self.classifier(x)


class SmallCNN(nn.Module):
    """Four strided convolutions and global average pooling: trains in minutes on a CPU.

    A 4 x 4 stride-4 stem first, so that a 256 x 256 patch costs about 70 MMAC (ResNet18:
    about 2.4 GMAC). Same conventions as the big models: `encoder` (whose first module is the
    input convolution) and head `FC`.
    """

    def __init__(self, in_channels: int, num_classes: int, width: int = 32) -> None:
        super().__init__()

        def block(cin: int, cout: int, k: int, s: int, p: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, k, stride=s, padding=p, bias=False),
                    nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        w = width
        self.encoder = nn.Sequential(
            *block(in_channels, w, 4, 4, 0),
            *block(w, 2 * w, 3, 2, 1),
            *block(2 * w, 4 * w, 3, 2, 1),
            *block(4 * w, 4 * w, 3, 2, 1),
            nn.AdaptiveAvgPool2d(1),
        )
        self.FC = nn.Linear(4 * w, num_classes)
        _kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.FC(torch.flatten(self.encoder(x), 1))


# name -> builder(in_channels, num_classes). The first nine are the original's choices.
MODELS: dict[str, Callable[[int, int], nn.Module]] = {
    "VGG16": partial(VGGClassifier, tvm.vgg16),
    "VGG19": partial(VGGClassifier, tvm.vgg19),
    "ResNet50": partial(ResNetClassifier, tvm.resnet50),
    "ResNet101": partial(ResNetClassifier, tvm.resnet101),
    "ResNet152": partial(ResNetClassifier, tvm.resnet152),
    "DenseNet121": partial(DenseNetClassifier, tvm.densenet121),
    "DenseNet161": partial(DenseNetClassifier, tvm.densenet161),
    "DenseNet169": partial(DenseNetClassifier, tvm.densenet169),
    "DenseNet201": partial(DenseNetClassifier, tvm.densenet201),
    "ResNet18": partial(ResNetClassifier, tvm.resnet18),
    "SmallCNN": SmallCNN,
}


# The models of each task (train.tasks.registry names the tasks).
MODELS_OF: dict[str, dict[str, Callable[..., nn.Module]]] = {"classification": MODELS,
                                                               "segmentation": SEGMENTATION_MODELS}


def _registry(task: str) -> dict[str, Callable[..., nn.Module]]:
    if task not in MODELS_OF:
        raise ValueError(f"unknown task {task!r}; choices: {', '.join(MODELS_OF)}")
    return MODELS_OF[task]


def model_names(task: str = "classification") -> list[str]:
    """Registered model names of a task; for classification the original's nine first."""
    return list(_registry(task))


def build_model(name: str, in_channels: int, num_classes: int, task: str = "classification",
                **options: Any) -> nn.Module:
    """A freshly initialised model of `task`; `ValueError` for an unknown name or bad sizes.

    `options` go to segmentation models (DeepLabV3Plus: `output_stride`, `backbone_weights`).
    """
    registry = _registry(task)
    builder = registry.get(name)
    if builder is None:
        other = next((t for t in MODELS_OF if t != task and name in _registry(t)), None)
        hint = difflib.get_close_matches(name, registry, n=1, cutoff=0.6)
        hint_text = (f" ({name} is a {other} model)" if other else f" (did you mean {hint[0]}?)" if hint else "")
        raise ValueError(f"unknown model {name!r}{hint_text}; choices: {', '.join(registry)}")
    if int(in_channels) < 1 or int(num_classes) < 1:
        raise ValueError(f"{name}: in_channels and num_classes must be >= 1, "
                         f"got {in_channels} and {num_classes}")
    if options and task == "classification":
        raise ValueError(f"{name}: classification models take no options, got {', '.join(options)}")
    return builder(int(in_channels), int(num_classes), **options)
