"""Segmentation models against the DFC2020 baseline's state-dict layouts (issue 16, item 3).

The expected tables are derived here from reading the baseline's code/models/unet.py,
unet_utils/unet_parts.py, deeplab.py and deeplab_utils/{resnet,aspp,decoder}.py; they do not use
torchvision or our modules.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from train.models.registry import build_model, model_names
from train.models.segmentation import DeepLabV3Plus, UNet, imagenet_weights_file
from sen12ms_common.errors import CheckpointError

Layout = dict[str, tuple[int, ...]]
# get_ninputs: S2 high 4, medium 6, low 3 bands, S1 2; classes 10, or 9 without savanna.
CHANNELS = {"s2hr": 4, "s2hr+s2mr": 10, "s2hr+s2mr+s1": 12, "all": 15}


def _bn(prefix: str, c: int) -> Layout:
    return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
            f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()}


def _double_conv(prefix: str, cin: int, cout: int) -> Layout:
    p = f"{prefix}.double_conv"
    return {f"{p}.0.weight": (cout, cin, 3, 3), f"{p}.0.bias": (cout,), **_bn(f"{p}.1", cout),
            f"{p}.3.weight": (cout, cout, 3, 3), f"{p}.3.bias": (cout,), **_bn(f"{p}.4", cout)}


def baseline_unet(n_in: int, classes: int) -> Layout:
    """UNet(n_channels, n_classes, bilinear=True): DoubleConv has 3x3 convolutions with bias."""
    out = _double_conv("inc", n_in, 64)
    for i, (a, b) in enumerate([(64, 128), (128, 256), (256, 512), (512, 512)], 1):
        out |= _double_conv(f"down{i}.maxpool_conv.1", a, b)
    for i, (a, b) in enumerate([(1024, 256), (512, 128), (256, 64), (128, 64)], 1):
        out |= _double_conv(f"up{i}.conv", a, b)  # bilinear: `up` is nn.Upsample, no weights
    return out | {"outc.conv.weight": (classes, 64, 1, 1), "outc.conv.bias": (classes,)}


def baseline_deeplab(n_in: int, classes: int) -> Layout:
    """DeepLab(backbone='resnet', n_in=...): ResNet101 (blocks 3, 4, 23, and the multi-grid unit
    of 3), ASPP, Decoder."""
    out = {"backbone.conv1.weight": (64, n_in, 7, 7), **_bn("backbone.bn1", 64)}
    inplanes = 64
    for layer, (planes, blocks) in enumerate([(64, 3), (128, 4), (256, 23), (512, 3)], 1):
        for j in range(blocks):
            p = f"backbone.layer{layer}.{j}"
            out |= {f"{p}.conv1.weight": (planes, inplanes, 1, 1), **_bn(f"{p}.bn1", planes),
                    f"{p}.conv2.weight": (planes, planes, 3, 3), **_bn(f"{p}.bn2", planes),
                    f"{p}.conv3.weight": (planes * 4, planes, 1, 1), **_bn(f"{p}.bn3", planes * 4)}
            if j == 0:  # inplanes != planes * 4 in every layer
                out |= {f"{p}.downsample.0.weight": (planes * 4, inplanes, 1, 1),
                        **_bn(f"{p}.downsample.1", planes * 4)}
            inplanes = planes * 4
    for i, k in enumerate((1, 3, 3, 3), 1):
        out |= {f"aspp.aspp{i}.atrous_conv.weight": (256, 2048, k, k), **_bn(f"aspp.aspp{i}.bn", 256)}
    out |= {"aspp.global_avg_pool.1.weight": (256, 2048, 1, 1), **_bn("aspp.global_avg_pool.2", 256),
            "aspp.conv1.weight": (256, 1280, 1, 1), **_bn("aspp.bn1", 256)}
    out |= {"decoder.conv1.weight": (48, 256, 1, 1), **_bn("decoder.bn1", 48),
            "decoder.last_conv.0.weight": (256, 304, 3, 3), **_bn("decoder.last_conv.1", 256),
            "decoder.last_conv.4.weight": (256, 256, 3, 3), **_bn("decoder.last_conv.5", 256),
            "decoder.last_conv.8.weight": (classes, 256, 1, 1), "decoder.last_conv.8.bias": (classes,)}
    return out


def _layout(model: nn.Module) -> Layout:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _meta(name: str, n_in: int, classes: int, **kw) -> nn.Module:
    with torch.device("meta"):
        return build_model(name, n_in, classes, task="segmentation", **kw)


@pytest.mark.parametrize("inputs", list(CHANNELS))
@pytest.mark.parametrize("classes", [10, 9])
def test_state_dicts_equal_the_baselines(inputs, classes):
    n_in = CHANNELS[inputs]
    assert _layout(_meta("UNet", n_in, classes)) == baseline_unet(n_in, classes)
    for stride in (16, 8):
        got = _layout(_meta("DeepLabV3Plus", n_in, classes, output_stride=stride))
        assert got == baseline_deeplab(n_in, classes)
    assert list(_layout(_meta("UNet", n_in, classes))) == list(baseline_unet(n_in, classes))  # order too


def _random_state(layout: Layout) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {k: (torch.tensor(7) if k.endswith("num_batches_tracked") else torch.rand(s, generator=g) + 0.5)
            for k, s in layout.items()}


@pytest.mark.slow
@pytest.mark.parametrize("name, layout", [("UNet", baseline_unet), ("DeepLabV3Plus", baseline_deeplab)])
def test_a_baseline_checkpoint_loads_unchanged(tmp_path, name, layout):
    """A file shaped as the baseline's export_model writes it (model_state_dict, step,
    optimizer_state_dict) for its published S1/S2 model: 12 inputs, 9 classes."""
    state = _random_state(layout(12, 9))
    torch.save({"model_state_dict": state, "step": 5000, "optimizer_state_dict": {"state": {}, "param_groups": []}},
               tmp_path / "checkpoint.pth")
    ck = torch.load(tmp_path / "checkpoint.pth", weights_only=True)
    model = build_model(name, 12, 9, task="segmentation")
    model.load_state_dict(ck["model_state_dict"], strict=True)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


@pytest.mark.slow
def test_forward_shapes_at_256():
    torch.manual_seed(0)
    x = torch.randn(1, 12, 256, 256)
    with torch.no_grad():
        assert UNet(12, 9).eval()(x).shape == (1, 9, 256, 256)
        for stride, deep in ((16, 16), (8, 32)):
            net = DeepLabV3Plus(12, 9, output_stride=stride).eval()
            seen = []
            net.backbone.register_forward_hook(lambda m, i, o: seen.extend(t.shape for t in o))
            out = net(x)
            assert out.shape == (1, 9, 256, 256) and torch.isfinite(out).all()
            assert seen == [(1, 2048, deep, deep), (1, 256, 64, 64)]


@pytest.mark.slow
def test_forward_in_either_memory_format_and_odd_sizes():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 64, 64)
    with torch.no_grad():
        for net in (UNet(4, 10).eval(), DeepLabV3Plus(4, 10).eval()):
            plain = net(x)
            scale = plain.abs().max().item()  # random weights without BN statistics: large logits
            torch.testing.assert_close(net(x.contiguous(memory_format=torch.channels_last)), plain,
                                       rtol=1e-4, atol=1e-5 * scale)
        assert UNet(4, 10).eval()(torch.randn(1, 4, 75, 93)).shape == (1, 10, 75, 93)
        assert DeepLabV3Plus(4, 10).eval()(torch.randn(1, 4, 75, 93)).shape == (1, 10, 75, 93)


@pytest.mark.slow
def test_deeplab_trains_in_train_mode():
    net = DeepLabV3Plus(4, 10).train()
    x, y = torch.randn(2, 4, 32, 32), torch.randint(0, 10, (2, 32, 32))
    y[0, :8] = 255
    loss = nn.CrossEntropyLoss(ignore_index=255)(net(x), y)
    loss.backward()
    backbone, head = net.parameter_groups()
    assert len(backbone) + len(head) == len(list(net.parameters()))
    assert net.backbone.conv1.weight.grad is not None and net.decoder.last_conv[8].bias.grad is not None


# (stride, dilation) of conv2 in each block of layer3 and layer4, from the baseline's resnet.py:
# OS 16: strides 1, 2, 2, 1, dilations 1, 1, 1, 2; OS 8: strides 1, 2, 1, 1, dilations 1, 1, 2, 4;
# layer4 is the multi-grid unit, dilation x (1, 2, 4); every conv2 pads by its dilation.
@pytest.mark.parametrize("stride, layer3, layer4", [
    (16, [(2, 1)] + [(1, 1)] * 22, [(1, 2), (1, 4), (1, 8)]),
    (8, [(1, 2)] * 23, [(1, 4), (1, 8), (1, 16)]),
])
def test_atrous_pattern_of_the_backbone(stride, layer3, layer4):
    net = _meta("DeepLabV3Plus", 4, 10, output_stride=stride)
    for layer, want in ((net.backbone.layer3, layer3), (net.backbone.layer4, layer4)):
        got = [(b.conv2.stride[0], b.conv2.dilation[0]) for b in layer]
        assert got == want
        assert all(b.conv2.padding == b.conv2.dilation for b in layer)
        assert layer[0].downsample[0].stride[0] == want[0][0]
    assert net.backbone.layer2[0].conv2.stride == (2, 2) and net.backbone.layer1[0].conv2.stride == (1, 1)
    rates = [net.aspp.aspp1.atrous_conv.dilation[0]] + [getattr(net.aspp, f"aspp{i}").atrous_conv.dilation[0]
                                                        for i in (2, 3, 4)]
    assert rates == ([1, 6, 12, 18] if stride == 16 else [1, 12, 24, 36])


def test_registry_entry_point():
    assert model_names("segmentation") == ["UNet", "DeepLabV3Plus", "SmallUNet"]
    assert "UNet" not in model_names() and model_names()[0] == "VGG16"
    with pytest.raises(ValueError, match="UNet is a segmentation model"):
        build_model("UNet", 4, 10)
    with pytest.raises(ValueError, match="did you mean DeepLabV3Plus"):
        build_model("DeepLabV3plus", 4, 10, task="segmentation")
    with pytest.raises(ValueError, match="unknown task"):
        model_names("detection")
    with pytest.raises(ValueError, match="output stride must be 8 or 16"):
        _meta("DeepLabV3Plus", 4, 10, output_stride=32)
    with pytest.raises(ValueError, match="take no options"):
        build_model("SmallCNN", 4, 10, output_stride=8)


@pytest.fixture(scope="module")
def resnet101_file(tmp_path_factory) -> tuple:
    """A torchvision ResNet-101 state dict on disk (half precision: half the bytes)."""
    from torchvision import models as tvm

    torch.manual_seed(5)
    state = {k: v.half() if v.is_floating_point() else v for k, v in tvm.resnet101(weights=None).state_dict().items()}
    path = tmp_path_factory.mktemp("weights") / "resnet101-63fe2227.pth"
    torch.save(state, path)
    return path, state


@pytest.mark.slow
def test_backbone_weights_from_a_local_file(resnet101_file, tmp_path, monkeypatch):
    path, state = resnet101_file
    net = DeepLabV3Plus(12, 9, backbone_weights=path)
    got = net.backbone.state_dict()
    assert torch.equal(got["layer3.22.conv2.weight"], state["layer3.22.conv2.weight"].float())
    assert torch.equal(got["bn1.running_var"], state["bn1.running_var"].float())
    assert got["conv1.weight"].shape == (64, 12, 7, 7)  # the stem keeps its own initialisation
    # "imagenet": torch's hub cache only, never a download.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(CheckpointError, match="nothing is downloaded") as err:
        DeepLabV3Plus(4, 10, backbone_weights="imagenet")
    assert str(tmp_path) in str(err.value) and "\n" not in str(err.value)
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "hub" / "checkpoints" / path.name).symlink_to(path)
    assert imagenet_weights_file().name == path.name
    net = DeepLabV3Plus(4, 10, backbone_weights="imagenet")
    assert torch.equal(net.backbone.layer1[0].conv1.weight, state["layer1.0.conv1.weight"].float())


@pytest.mark.slow
def test_backbone_weights_that_do_not_fit(tmp_path):
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, tmp_path / "small.pth")
    with pytest.raises(CheckpointError, match="small.pth: not a ResNet-101 state dict"):
        DeepLabV3Plus(4, 10, backbone_weights=tmp_path / "small.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pth: cannot read"):
        DeepLabV3Plus(4, 10, backbone_weights=tmp_path / "junk.pth")


def test_deeplab_trains_on_a_last_batch_of_one_sample():
    # A train split of 5 in batches of 2 ends with a batch of one: the image-pooling branch's
    # BatchNorm has no batch statistics there and used to stop the run with a traceback.
    model = DeepLabV3Plus(4, 3).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    bn = model.aspp.global_avg_pool[2]
    before = bn.running_mean.clone()
    loss = model(torch.randn(1, 4, 64, 64)).mean()
    loss.backward()
    opt.step()
    assert bn.training and torch.equal(bn.running_mean, before)  # running statistics left alone
    model(torch.randn(2, 4, 64, 64))
    assert not torch.equal(bn.running_mean, before)  # a batch of two updates them as before
