"""Where a new run's weights start: --init-from (ours, the original toolbox's published layout,
the DFC2020 baseline's), --init-partial, --pretrained-backbone from torchvision's cache folder;
the presets and the no-savanna default; the per-step TensorBoard log and validation images."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from train.config.presets import PRESETS, apply_preset, savanna_default
from train.models.registry import build_model
from sen12ms_common.errors import CheckpointError
from train.run.checkpoint import save_checkpoint
from train.run.init_weights import _our_key, init_from, pretrained_backbone, start_weights
from weightsdata import seg_sample  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parents[1]


def _net(name: str, channels: int, classes: int, seed: int, task: str = "classification") -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(name, channels, classes, task=task)


def _same(a: torch.nn.Module, b: torch.nn.Module) -> list[str]:
    sa, sb = a.state_dict(), b.state_dict()
    return [k for k in sa if k in sb and sa[k].shape == sb[k].shape and torch.equal(sa[k], sb[k])]


def test_init_from_the_original_toolbox_layout_and_ours(tmp_path: Path) -> None:
    src = _net("SmallCNN", 10, 10, seed=1)
    # The original's main_train.py: torch.save of epoch, arch, model_state_dict, optimizer_state_dict and
    # best_prec, sklearn's micro-F1 as a numpy float64.
    opt = torch.optim.Adam(src.parameters(), lr=0.001, weight_decay=1e-5)
    torch.save({"epoch": 3, "arch": "SmallCNN", "model_state_dict": src.state_dict(),
                "optimizer_state_dict": opt.state_dict(), "best_prec": np.float64(0.61)},
               tmp_path / "20201019_000519_model_best.pth")
    save_checkpoint(str(tmp_path / "ours.pth"), epoch=0, arch="SmallCNN", model_state_dict=src.state_dict(),
                    optimizer_state_dict={}, best_prec=0.5)
    for name in ("20201019_000519_model_best.pth", "ours.pth"):
        dst = _net("SmallCNN", 10, 10, seed=2)
        lines: list[str] = []
        assert init_from(dst, str(tmp_path / name), echo=lines.append) == []
        assert len(_same(src, dst)) == len(src.state_dict())
        assert lines == [f"weights from {tmp_path / name}: all {len(src.state_dict())} tensors loaded"]


def test_init_partial_loads_what_fits_and_names_the_rest(tmp_path: Path) -> None:
    src = _net("SmallCNN", 10, 10, seed=1)
    save_checkpoint(str(tmp_path / "ours.pth"), epoch=0, arch="SmallCNN", model_state_dict=src.state_dict(),
                    optimizer_state_dict={}, best_prec=0.5)
    other = _net("SmallCNN", 12, 17, seed=2)  # other input bands, a new head
    with pytest.raises(CheckpointError) as err:
        init_from(other, str(tmp_path / "ours.pth"))
    assert "encoder.0.weight is (32, 10, 4, 4) in the checkpoint" in str(err.value)
    assert "(--init-partial loads the tensors that fit)" in str(err.value) and "\n" not in str(err.value)
    lines: list[str] = []
    not_loaded = init_from(other, str(tmp_path / "ours.pth"), partial=True, echo=lines.append)
    assert not_loaded == ["encoder.0.weight", "FC.weight", "FC.bias"]
    assert "not loaded (kept as initialised): encoder.0.weight, FC.weight, FC.bias" in lines[0]
    assert set(_same(src, other)) == set(src.state_dict()) - set(not_loaded)
    with pytest.raises(CheckpointError, match="no tensor of it fits the model"):
        init_from(_net("SmallUNet", 10, 9, 0, "segmentation"), str(tmp_path / "ours.pth"), partial=True)


def test_init_from_the_baseline_checkpoint(tmp_path: Path) -> None:
    src = _net("SmallUNet", 12, 9, 1, "segmentation")
    opt = torch.optim.SGD(src.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    # The baseline's export_model: {"model_state_dict", "step", "optimizer_state_dict"}.
    torch.save({"model_state_dict": src.state_dict(), "step": 1000, "optimizer_state_dict": opt.state_dict()},
               tmp_path / "checkpoint_step_1000.pth")
    dst = _net("SmallUNet", 12, 9, 2, "segmentation")
    init_from(dst, str(tmp_path / "checkpoint_step_1000.pth"), echo=lambda m: None)
    assert len(_same(src, dst)) == len(src.state_dict())


def _torchvision_file(torch_home: Path, arch: str, name: str) -> torch.nn.Module:
    """A file of torchvision's format (its model's state dict, other values) in a cache folder."""
    from torchvision import models as tvm

    torch.manual_seed(7)
    net = getattr(tvm, arch)(weights=None)
    folder = torch_home / "hub" / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), folder / name)
    return net


def test_imagenet_backbone_from_the_torch_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    model = _net("ResNet18", 12, 10, seed=0)
    with pytest.raises(CheckpointError) as err:
        pretrained_backbone("ResNet18", model, "imagenet")
    assert str(err.value) == (f"no ImageNet weights of ResNet18 in {tmp_path / 'torch' / 'hub' / 'checkpoints'} "
                              "(looked for resnet18-f37072fd.pth, from https://download.pytorch.org/models/"
                              "resnet18-f37072fd.pth); nothing is downloaded: copy the file there or give its path")
    tv = _torchvision_file(tmp_path / "torch", "resnet18", "resnet18-f37072fd.pth")
    stem, head = model.conv1.weight.clone(), model.FC.weight.clone()
    n = pretrained_backbone("ResNet18", model, "imagenet", echo=lambda m: None)
    assert n == len(tv.state_dict()) - 3  # all but conv1.weight, fc.weight, fc.bias
    assert torch.equal(model.encoder[4][0].conv1.weight, tv.layer1[0].conv1.weight)
    assert torch.equal(model.encoder[7][1].bn2.running_var, tv.layer4[1].bn2.running_var)
    assert torch.equal(model.encoder[1].weight, tv.bn1.weight)
    assert torch.equal(model.conv1.weight, stem) and torch.equal(model.FC.weight, head)  # 12 channels, own head
    with pytest.raises(CheckpointError, match="SmallCNN has no ImageNet backbone"):
        pretrained_backbone("SmallCNN", _net("SmallCNN", 3, 10, 0), "imagenet")
    with pytest.raises(CheckpointError, match="not torchvision's resnet50 weights"):
        pretrained_backbone("ResNet50", _net("ResNet50", 3, 10, 0),
                            tmp_path / "torch/hub/checkpoints/resnet18-f37072fd.pth")


def test_densenet_keys_of_torchvisions_old_files() -> None:
    # torchvision's DenseNet files keep `norm.1` names (torchvision renames them when it loads).
    assert _our_key("DenseNet121", "features.denseblock1.denselayer1.norm.1.weight") == \
        "encoder.4.denselayer1.norm1.weight"
    assert _our_key("DenseNet121", "features.norm5.running_mean") == "encoder.11.running_mean"
    assert _our_key("DenseNet121", "features.conv0.weight") is None
    assert _our_key("DenseNet121", "classifier.weight") is None
    assert _our_key("VGG16", "features.2.weight") == "encoder.2.weight" and _our_key("VGG16", "features.0.bias") is None


def test_presets_fill_only_what_is_not_given() -> None:
    given = {"task": "classification", "model": "SmallUNet", "lr": 0.001, "batch_size": 2, "no_savanna": False,
             "val_split": "val", "test_split": "test"}
    lines: list[str] = []
    apply_preset("dfc2020-baseline", given, {"model", "batch_size"}, lines.append)
    assert given["model"] == "SmallUNet" and given["batch_size"] == 2  # explicit flags win
    assert (given["optimizer"], given["lr"], given["decay"], given["stats"]) == ("sgd", 0.01, 5e-4, "dfc2020")
    assert given["pretrained_backbone"] == "imagenet" and given["no_savanna"] is True
    assert lines[0].startswith("preset dfc2020-baseline: task=segmentation, model=SmallUNet, input=s2hr+s2mr+s1")
    assert lines[0].endswith("(given on the command line: batch_size, model)")
    assert PRESETS["sen12ms-2021"]["optimizer"] == "adam" and PRESETS["sen12ms-2021"]["decay"] == 1e-5


def test_segmentation_on_dfc2020_splits_leaves_savanna_out() -> None:
    lines: list[str] = []
    given = {"task": "segmentation", "no_savanna": False, "val_split": "dfc2020_val", "test_split": "test"}
    savanna_default(given, set(), lines.append)
    assert given["no_savanna"] is True and "dfc2020_val hold no savanna" in lines[0]
    given = {"task": "segmentation", "no_savanna": False, "val_split": "dfc2020_val", "test_split": "dfc2020_test"}
    savanna_default(given, {"no_savanna"}, lines.append)  # --savanna given: kept, with a warning
    assert given["no_savanna"] is False and lines[-1].startswith("warning: --savanna with dfc2020_val and dfc2020_test")
    given = {"task": "segmentation", "no_savanna": False, "val_split": "val", "test_split": "test"}
    savanna_default(given, set(), lines.append)
    assert given["no_savanna"] is False


def _run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-m", "train", *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


@pytest.mark.slow
def test_preset_init_from_and_tensorboard_images(seg_sample: Path, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    shards = str(seg_sample)
    run = tmp_path / "first"
    first = _run("--preset", "dfc2020-baseline", "--model", "SmallUNet", "--pretrained-backbone", "none",
                 "--batch-size", "2", "--max-steps", "2", "--val-every-steps", "1", "--tb-images", "2",
                 "--shards", shards, "--device", "cpu", "--workers", "0", "--run-dir", str(run), "--no-progress")
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("preset dfc2020-baseline: task=segmentation, model=SmallUNet, input=s2hr+s2mr+s1, "
                                   "stats=dfc2020, no_savanna=True, optimizer=sgd, lr=0.01, decay=0.0005, batch_size=2")
    assert "step 1: val loss" in first.stdout
    (ckpt,) = (run / "checkpoints").glob("*_checkpoint.pth")
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    cfg = saved["config"]
    assert (cfg["optimizer"], cfg["lr"], cfg["decay"], cfg["stats"], cfg["no_savanna"], cfg["val_split"]) == \
        ("sgd", 0.01, 5e-4, "dfc2020", True, "dfc2020_val")
    # TensorBoard: the loss of every step, the validation of step 1, images of two fixed patches.
    (events,) = (run / "logs" / "runs").iterdir()
    loss = EventAccumulator(str(events / "training"))
    loss.Reload()
    assert [e.step for e in loss.Scalars("loss_step")] == [1, 2]
    steps = EventAccumulator(str(events / "val_steps"))
    steps.Reload()
    assert [e.step for e in steps.Scalars("mIoU")] == [1]
    images = EventAccumulator(str(events / "images"), size_guidance={"images": 0})
    images.Reload()
    assert set(images.Tags()["images"]) == {"images/input", "images/prediction", "images/ground_truth"}
    shown = images.Images("images/prediction")
    assert [e.step for e in shown] == [1, 2] and (shown[0].width, shown[0].height) == (512, 256)

    # A new run from those weights: other input bands need --init-partial, which names the stem.
    other = ["--task", "segmentation", "--model", "SmallUNet", "--input", "s2hr", "--stats", "dfc2020",
             "--val-split", "dfc2020_val", "--test-split", "dfc2020_test", "--batch-size", "2", "--max-steps", "1",
             "--shards", shards, "--device", "cpu", "--workers", "0", "--no-progress", "--init-from", str(ckpt)]
    strict = _run(*other, "--run-dir", str(tmp_path / "strict"))
    assert strict.returncode == 1 and len(strict.stderr.strip().splitlines()) == 1
    assert "inc.double_conv.0.weight is (8, 12, 3, 3) in the checkpoint, (8, 4, 3, 3) in the model" in strict.stderr
    part = _run(*other, "--init-partial", "--run-dir", str(tmp_path / "partial"))
    assert part.returncode == 0, part.stderr
    assert "not loaded (kept as initialised): inc.double_conv.0.weight" in part.stdout
    (new,) = (tmp_path / "partial" / "checkpoints").glob("*_checkpoint.pth")
    assert torch.load(new, map_location="cpu", weights_only=True)["step"] == 1  # a new run, not a resume
