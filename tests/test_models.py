"""The model registry: the original's layouts (state-dict keys and shapes), init, forward."""

from __future__ import annotations

import math
from functools import lru_cache

import pytest
import torch
from torch import nn
from torchvision import models as tvm

from sen12ms_common.vocab.bands import INPUT_SETS
from train.models.registry import MODELS, build_model, model_names

ORIGINAL_NINE = ["VGG16", "VGG19", "ResNet50", "ResNet101", "ResNet152",
                 "DenseNet121", "DenseNet161", "DenseNet169", "DenseNet201"]

# (torchvision builder, family, head in_features of OUR model per SPEC.md)
FAMILY = {
    "VGG16": (tvm.vgg16, "vgg", 8 * 8 * 512), "VGG19": (tvm.vgg19, "vgg", 8 * 8 * 512),
    "ResNet18": (tvm.resnet18, "resnet", 512), "ResNet50": (tvm.resnet50, "resnet", 2048),
    "ResNet101": (tvm.resnet101, "resnet", 2048), "ResNet152": (tvm.resnet152, "resnet", 2048),
    "DenseNet121": (tvm.densenet121, "densenet", 65536), "DenseNet161": (tvm.densenet161, "densenet", 141312),
    "DenseNet169": (tvm.densenet169, "densenet", 106496), "DenseNet201": (tvm.densenet201, "densenet", 122880),
}
# Parameter counts of the torchvision models (3 inputs, 1000 classes) as torchvision documents them.
PUBLISHED_PARAMS = {
    "VGG16": 138_357_544, "VGG19": 143_667_240, "ResNet18": 11_689_512, "ResNet50": 25_557_032,
    "ResNet101": 44_549_160, "ResNet152": 60_192_808, "DenseNet121": 7_978_856,
    "DenseNet161": 28_681_000, "DenseNet169": 14_149_480, "DenseNet201": 20_013_928,
}
# (input set, classes): every input set once, both class counts for every model.
CASES = [("rgb", 10), ("s2", 17), ("s1", 10), ("s1s2", 17), ("rgbs1", 10)]


def meta_model(name: str, n_in: int, classes: int) -> nn.Module:
    with torch.device("meta"):  # shapes only: no memory, no init cost
        return build_model(name, n_in, classes)


@lru_cache(maxsize=None)
def torchvision_shapes(name: str) -> tuple[dict[str, tuple[int, ...]], nn.Module]:
    with torch.device("meta"):
        tv = FAMILY[name][0](weights=None)
    return {k: tuple(v.shape) for k, v in tv.state_dict().items()}, tv


def expected_layout(name: str, n_in: int, classes: int) -> dict[str, tuple[int, ...]]:
    """The original's state dict, derived from torchvision's by SPEC.md's renaming rules."""
    shapes, tv = torchvision_shapes(name)
    family, head_in = FAMILY[name][1], FAMILY[name][2]
    out: dict[str, tuple[int, ...]] = {}
    if family == "resnet":
        index = {"conv1": 0, "bn1": 1, "layer1": 4, "layer2": 5, "layer3": 6, "layer4": 7}
        for k, s in shapes.items():
            top, rest = k.split(".", 1)
            if top == "fc":
                continue
            if top == "conv1":
                s = (64, n_in, 7, 7)
                out[f"conv1.{rest}"] = s
            out[f"encoder.{index[top]}.{rest}"] = s
        out["FC.weight"], out["FC.bias"] = (classes, head_in), (classes,)
    elif family == "densenet":
        names = list(tv.features._modules)
        for k, s in shapes.items():
            if k.startswith("classifier."):
                continue
            _, sub, rest = k.split(".", 2)
            if sub == "conv0":
                s = (s[0], n_in, 7, 7)
            out[f"encoder.{names.index(sub)}.{rest}"] = s
        out["classifier.weight"], out["classifier.bias"] = (classes, head_in), (classes,)
    else:
        for k, s in shapes.items():
            if k.startswith("classifier."):
                continue
            _, idx, rest = k.split(".", 2)
            if idx == "0" and rest == "weight":
                s = (64, n_in, 3, 3)
            out[f"encoder.{idx}.{rest}"] = s
        out.update({"classifier.0.weight": (4096, head_in), "classifier.0.bias": (4096,),
                    "classifier.3.weight": (4096, 4096), "classifier.3.bias": (4096,),
                    "classifier.6.weight": (classes, 4096), "classifier.6.bias": (classes,)})
    return out


def test_registry_holds_the_original_nine_first_then_the_small_models():
    assert model_names() == ORIGINAL_NINE + ["ResNet18", "SmallCNN"]
    assert isinstance(MODELS, dict) and list(MODELS) == model_names()


def test_unknown_model_names_every_choice():
    with pytest.raises(ValueError) as err:
        build_model("resnet50", 12, 10)
    msg = str(err.value)
    assert "did you mean ResNet50" in msg and "\n" not in msg
    for name in model_names():
        assert name in msg
    with pytest.raises(ValueError, match="in_channels"):
        build_model("ResNet50", 0, 10)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in ORIGINAL_NINE + ["ResNet18"]])
@pytest.mark.parametrize("input_set, classes", CASES)
def test_state_dict_keys_and_shapes_match_the_original_layout(name, input_set, classes):
    n_in = len(INPUT_SETS[input_set])
    model = meta_model(name, n_in, classes)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == expected_layout(name, n_in, classes)


@pytest.mark.parametrize("name", ORIGINAL_NINE + ["ResNet18"])
def test_first_conv_head_and_parameter_count_against_spec(name):
    n_in, classes = 12, 17
    model = meta_model(name, n_in, classes)
    sd = model.state_dict()
    family, head_in = FAMILY[name][1], FAMILY[name][2]
    first = sd["encoder.0.weight"]
    if family == "vgg":
        conv = model.encoder[0]
        assert (conv.kernel_size, conv.stride, conv.padding, conv.bias is not None) == ((3, 3), (1, 1), (1, 1), True)
        assert tuple(first.shape) == (64, n_in, 3, 3)
        linears = [m for m in model.classifier if isinstance(m, nn.Linear)]
        assert [(m.in_features, m.out_features) for m in linears] == [(32768, 4096), (4096, 4096), (4096, classes)]
        assert [type(m).__name__ for m in model.classifier] == ["Linear", "ReLU", "Dropout"] * 2 + ["Linear"]
        old_first, old_head = 3 * 64 * 9, (25088 * 4096 + 4096) + (4096 * 4096 + 4096) + (4096 * 1000 + 1000)
        new_first, new_head = n_in * 64 * 9, (head_in * 4096 + 4096) + (4096 * 4096 + 4096) + (4096 * classes + classes)
    else:
        conv = model.encoder[0]
        assert (conv.kernel_size, conv.stride, conv.padding, conv.bias) == ((7, 7), (2, 2), (3, 3), None)
        stem = 96 if name == "DenseNet161" else 64
        assert tuple(first.shape) == (stem, n_in, 7, 7)
        head = model.FC if family == "resnet" else model.classifier
        assert (head.in_features, head.out_features) == (head_in, classes)
        tv_head_in = {"ResNet18": 512, "DenseNet121": 1024, "DenseNet161": 2208,
                      "DenseNet169": 1664, "DenseNet201": 1920}.get(name, 2048)
        old_first, old_head = 3 * stem * 49, tv_head_in * 1000 + 1000
        new_first, new_head = n_in * stem * 49, head_in * classes + classes
    if family == "resnet":
        assert model.conv1 is model.encoder[0]
        assert "conv1.weight" in sd and "encoder.0.weight" in sd
    if family == "densenet":
        # No ReLU and no pooling after the last BatchNorm: the 8 x 8 map goes straight in.
        assert isinstance(model.encoder[-1], nn.BatchNorm2d)
        assert head_in == model.encoder[-1].num_features * 64
    n_params = sum(p.numel() for p in model.parameters())  # the shared conv1 counts once
    assert n_params == PUBLISHED_PARAMS[name] - old_first - old_head + new_first + new_head


def test_resnet_conv1_and_encoder0_are_one_tensor_and_kaiming_initialised():
    torch.manual_seed(0)
    model = build_model("ResNet50", 12, 10)
    sd = model.state_dict()
    assert torch.equal(sd["conv1.weight"], sd["encoder.0.weight"])
    assert sd["conv1.weight"].data_ptr() == sd["encoder.0.weight"].data_ptr()
    # kaiming_normal_ defaults (fan_in, gain sqrt(2)); torchvision's own ResNet init uses fan_out
    # (std 0.025 here) and nn.Linear's default is uniform (std 0.0128): both would fail.
    assert sd["conv1.weight"].std().item() == pytest.approx(math.sqrt(2 / (12 * 49)), rel=0.05)
    assert sd["FC.weight"].std().item() == pytest.approx(math.sqrt(2 / 2048), rel=0.05)
    layer = model.encoder[7][2].conv3.weight  # 1x1 conv 512 -> 2048 inside layer4
    assert layer.std().item() == pytest.approx(math.sqrt(2 / 512), rel=0.05)


def _resnet_reference(model: nn.Module, n_in: int, classes: int) -> nn.Module:
    """A plain torchvision ResNet50 carrying the same weights (its own forward())."""
    tv = tvm.resnet50(weights=None, num_classes=classes)
    tv.conv1 = nn.Conv2d(n_in, 64, 7, 2, 3, bias=False)
    names = {0: "conv1", 1: "bn1", 4: "layer1", 5: "layer2", 6: "layer3", 7: "layer4"}
    mapped = {}
    for k, v in model.state_dict().items():
        if k.startswith("encoder."):
            _, idx, rest = k.split(".", 2)
            mapped[f"{names[int(idx)]}.{rest}"] = v
        elif k.startswith("FC."):
            mapped["fc." + k[3:]] = v
    tv.load_state_dict(mapped, strict=True)
    return tv


@pytest.mark.slow
def test_resnet50_logits_equal_torchvision_forward_with_the_same_weights():
    torch.manual_seed(1)
    model = build_model("ResNet50", 10, 10).eval()
    reference = _resnet_reference(model, 10, 10).eval()
    x = torch.randn(2, 10, 64, 64)
    with torch.no_grad():
        expected = reference(x)
        scale = expected.abs().max().item()  # untrained logits reach 1e3: compare relative to that
        assert (model(x) - expected).abs().max().item() <= 1e-6 * scale
        # channels_last gives the same logits
        got = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    assert (got - expected).abs().max().item() <= 1e-5 * scale


@pytest.mark.slow
def test_densenet121_flattens_the_8x8_map_without_relu_or_pooling_in_nchw_order():
    torch.manual_seed(2)
    model = build_model("DenseNet121", 3, 10).eval()
    tv = tvm.densenet121(weights=None)
    tv.features.conv0 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
    names = list(tv.features._modules)
    tv.features.load_state_dict({f"{names[int(k.split('.')[1])]}.{k.split('.', 2)[2]}": v
                                 for k, v in model.state_dict().items() if k.startswith("encoder.")})
    tv.eval()
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        fmap = tv.features(x)  # (1, 1024, 8, 8), ends with norm5
        assert fmap.shape == (1, 1024, 8, 8)
        expected = fmap.reshape(1, -1) @ model.classifier.weight.T + model.classifier.bias
        assert torch.allclose(model(x), expected, atol=1e-4, rtol=1e-4)
        cl = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    assert torch.allclose(cl, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["DenseNet121", "VGG16"])
def test_fixed_size_models_name_the_input_size_they_need(name):
    with torch.device("meta"):  # shapes are all this needs
        model = build_model(name, 3, 10).eval()
        assert model(torch.zeros(1, 3, 256, 256)).shape == (1, 10)
        with pytest.raises(ValueError, match="256 x 256"):
            model(torch.zeros(1, 3, 128, 128))


@pytest.mark.parametrize("name", ["SmallCNN", "ResNet18"])
def test_small_models_take_any_size_and_channels_last(name):
    torch.manual_seed(3)
    model = build_model(name, 5, 17).eval()
    x = torch.randn(3, 5, 96, 80)
    with torch.no_grad():
        a = model(x)
        b = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    assert a.shape == (3, 17)
    assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_smallcnn_learns_a_spectral_rule_in_a_few_steps():
    """Gradients reach every layer: four classes told apart by their mean spectrum only."""
    g = torch.Generator().manual_seed(4)
    classes = torch.arange(64) % 4
    spectra = torch.randn(4, 12, generator=g)
    x = spectra[classes][:, :, None, None] + 0.8 * torch.randn(64, 12, 32, 32, generator=g)
    torch.manual_seed(4)
    model = build_model("SmallCNN", 12, 4)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(40):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), classes)
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        test_classes = torch.arange(32) % 4
        xt = spectra[test_classes][:, :, None, None] + 0.8 * torch.randn(32, 12, 32, 32, generator=g)
        acc = (model(xt).argmax(1) == test_classes).float().mean().item()
    assert acc >= 0.9
