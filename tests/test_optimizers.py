"""--optimizer: Adam (the original's), and the DFC2020 baseline's SGD (DeepLabv3+ head at 10x the
learning rate) and RMSprop, each over every parameter of the model exactly once."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from train.models.segmentation import DeepLabV3Plus, UNet
from train.run.optimizers import HEAD_LR, MOMENTUM, OPTIMIZERS, make_optimizer


def _covered(opt: torch.optim.Optimizer) -> list[int]:
    return sorted(id(p) for g in opt.param_groups for p in g["params"])


def test_sgd_trains_the_deeplab_head_at_ten_times_the_rate_and_covers_every_parameter():
    model = DeepLabV3Plus(12, 9)
    opt = make_optimizer("sgd", model, 0.01, 5e-4)
    assert isinstance(opt, torch.optim.SGD)
    backbone, head = opt.param_groups
    assert backbone["lr"] == 0.01 and head["lr"] == pytest.approx(0.01 * HEAD_LR) == 0.1
    assert all(g["momentum"] == MOMENTUM == 0.9 and g["weight_decay"] == 5e-4 for g in opt.param_groups)
    assert _covered(opt) == sorted(id(p) for p in model.parameters())  # each once


@pytest.mark.parametrize("name, kind", [("adam", torch.optim.Adam), ("rmsprop", torch.optim.RMSprop),
                                        ("sgd", torch.optim.SGD)])
def test_every_optimizer_takes_the_rate_and_decay_over_all_parameters(name, kind):
    model = UNet(4, 3) if name != "adam" else nn.Linear(3, 2)
    opt = make_optimizer(name, model, 0.02, 1e-4)
    assert isinstance(opt, kind) and len(opt.param_groups) == 1
    assert opt.param_groups[0]["lr"] == 0.02 and opt.param_groups[0]["weight_decay"] == 1e-4
    assert _covered(opt) == sorted(id(p) for p in model.parameters())
    with pytest.raises(ValueError, match="unknown optimizer 'lamb'"):
        make_optimizer("lamb", model, 0.1, 0.0)
    assert set(OPTIMIZERS) == {"adam", "sgd", "rmsprop"}

