"""The optimisers a run trains with: Adam (the original classifier's), and the DFC2020 baseline's
SGD with momentum (DeepLabv3+, its head at 10x the learning rate) and RMSprop (UNet)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # OPTIMIZERS is read by --help, which must not load torch
    import torch
    from torch import nn

OPTIMIZERS: tuple[str, ...] = ("adam", "sgd", "rmsprop")
MOMENTUM = 0.9  # the baseline's SGD momentum
HEAD_LR = 10.0  # the baseline trains DeepLabv3+'s ASPP and decoder at this multiple of --lr


def make_optimizer(name: str, model: nn.Module, lr: float, decay: float) -> torch.optim.Optimizer:
    """Optimizer `name` over the model's parameters, learning rate `lr`, weight decay `decay`. For
    sgd, a model with `parameter_groups()` ((backbone, head) parameters) trains its head at
    `HEAD_LR` x lr, as the baseline's DeepLabv3+ does."""
    import torch  # here, not at the top: buys --help its start-up time (OPTIMIZERS is read there)

    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=decay)
    if name == "rmsprop":
        return torch.optim.RMSprop(model.parameters(), lr=lr, weight_decay=decay)
    if name == "sgd":
        groups = getattr(model, "parameter_groups", None)
        if callable(groups):
            backbone, head = groups()
            params: Any = [{"params": backbone, "lr": lr}, {"params": head, "lr": lr * HEAD_LR}]
        else:
            params = model.parameters()
        return torch.optim.SGD(params, lr=lr, momentum=MOMENTUM, weight_decay=decay)
    raise ValueError(f"unknown optimizer {name!r} (choose one of: {', '.join(OPTIMIZERS)})")
