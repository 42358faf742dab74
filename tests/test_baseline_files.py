"""The DFC2020 baseline's run files, written as its code writes them (code/train.py: `pickle.dump`
of its argparse Namespace into `args.pkl`, `torch.save` of `{"model_state_dict", "step",
"optimizer_state_dict"}` as `checkpoint_step_N.pth`), read by `train.evaluate` and `train.predict`;
the restricted Namespace reader refuses anything else."""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sen12ms_common.datafiles.namespacepickle import loads_namespace
from sen12ms_common.errors import InputError, UnsafePickleError
from train.config.baseline_files import baseline_prediction_name, read_baseline_args
from weightsdata import seg_sample  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parents[1]


def baseline_args(checkpoint_dir: Path, **changes) -> argparse.Namespace:
    """The Namespace of the baseline's train.py after parsing (its defaults) plus what main() sets."""
    values = dict(experiment_name="experiment", seed=None, val_freq=1000, save_freq=1000, log_freq=100,
                  use_s2hr=True, use_s2mr=True, use_s2lr=False, use_s1=True, no_savanna=True, lr=0.01,
                  momentum=0.9, weight_decay=5e-4, batch_size=32, workers=4, max_epochs=100, model="unet",
                  pretrained_backbone=False, out_stride=16, data_dir_train="/data/sen12ms", dataset_val="dfc2020_val",
                  data_dir_val="/data/dfc2020", log_dir="logs", use_gpu=False, checkpoint_dir=str(checkpoint_dir))
    values.update(changes)
    return argparse.Namespace(**values)


def write_baseline_run(folder: Path, net: torch.nn.Module, step: int = 5, **changes) -> Path:
    """args.pkl and checkpoint_step_N.pth as the baseline's train.py writes them."""
    folder.mkdir(parents=True, exist_ok=True)
    args = baseline_args(folder, **changes)
    pickle.dump(args, open(folder / "args.pkl", "wb"))  # as train.py: default protocol
    optimizer = torch.optim.RMSprop(net.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    data = {"model_state_dict": net.state_dict(), "step": step, "optimizer_state_dict": optimizer.state_dict()}
    torch.save(data, folder / f"checkpoint_step_{step}.pth")
    return folder / f"checkpoint_step_{step}.pth"


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_namespace_read_at_every_protocol(tmp_path: Path, protocol: int) -> None:
    ns = baseline_args(tmp_path)
    assert loads_namespace(pickle.dumps(ns, protocol=protocol)) == vars(ns)
    opts = read_baseline_args(pickle.dumps(ns, protocol=protocol), "args.pkl")
    assert opts == {"task": "segmentation", "model": "UNet", "input": "s2hr+s2mr+s1", "no_savanna": True,
                    "output_stride": 16, "stats": "dfc2020", "optimizer": "rmsprop", "lr": 0.01, "decay": 5e-4,
                    "batch_size": 32, "epochs": 100}
    changed = baseline_args(tmp_path, model="deeplab", use_s1=False, out_stride=8)
    deeplab = read_baseline_args(pickle.dumps(changed), "a")
    assert (deeplab["model"], deeplab["input"], deeplab["output_stride"], deeplab["optimizer"]) == \
        ("DeepLabV3Plus", "s2hr+s2mr", 8, "sgd")


class Evil:
    def __reduce__(self):
        return (os.system, ("echo owned",))


@pytest.mark.parametrize("obj, message", [
    (Evil(), "refused to load: the pickle asks for posix.system"),
    ({"model": "unet"}, "refused to load: it holds a dict, not an argparse.Namespace"),
    (argparse.Namespace(model=Evil()), "refused to load: the pickle asks for posix.system"),
])
def test_namespace_reader_refuses_anything_else(obj, message: str) -> None:
    with pytest.raises(UnsafePickleError) as err:
        loads_namespace(pickle.dumps(obj), "x/args.pkl")
    assert str(err.value).startswith("x/args.pkl: " + message) and "\n" not in str(err.value)


def test_baseline_args_that_do_not_map_are_one_line(tmp_path: Path) -> None:
    for changes, message in (({"model": "fcn"}, "model 'fcn' is not the baseline's deeplab or unet"),
                             ({"use_s2hr": False, "use_s2mr": False, "use_s1": False}, "no input"),
                             ({"no_savanna": "yes"}, "no_savanna is 'yes', not True or False")):
        with pytest.raises(InputError, match=message):
            read_baseline_args(pickle.dumps(baseline_args(tmp_path, **changes)), "args.pkl")


def test_baseline_prediction_names() -> None:
    assert baseline_prediction_name("ROIs0000_test_s2_0_p12", "dfc2020_test") == "ROIs0000_test_dfc_0_p12.tif"
    assert baseline_prediction_name("ROIs1158_spring_s2_1_p30", "test") == "ROIs1158_spring_lc_1_p30.tif"
    assert baseline_prediction_name("x_s2_7.tif", None) == "x_pred_7.tif"


def _run(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True)


@pytest.mark.slow
def test_baseline_run_files_in_evaluate_and_predict(seg_sample: Path, tmp_path: Path) -> None:
    """The baseline's UNet checkpoint and args.pkl score exactly as the same weights in a checkpoint of ours."""
    from segtools import write_seg_checkpoint
    from train.models.registry import build_model

    torch.manual_seed(1)
    net = build_model("UNet", 12, 9, task="segmentation")
    ckpt = write_baseline_run(tmp_path / "logs" / "experiment" / "checkpoints", net)
    ours = write_seg_checkpoint(tmp_path / "ours.pth", model="UNet", net=net)
    shards = str(seg_sample)
    common = ["--shards", shards, "--split", "dfc2020_val", "--device", "cpu", "--no-progress"]
    given = _run("train.evaluate", "--checkpoint", str(ckpt), "--config", str(ckpt.parent / "args.pkl"),
                 "--out", str(tmp_path / "given"), *common)
    assert given.returncode == 0, given.stderr
    assert "UNet (after step 5), input s2hr+s2mr+s1, segmentation, stats dfc2020" in given.stdout
    mine = _run("train.evaluate", "--checkpoint", str(ours), "--out", str(tmp_path / "ours"), *common)
    assert mine.returncode == 0, mine.stderr
    scores = [json.loads((tmp_path / d / "dfc2020_val_scores.json").read_text()) for d in ("given", "ours")]
    assert scores[0]["confusion"] == scores[1]["confusion"]
    assert sum(map(sum, scores[0]["confusion"])) > 0

    # Without --config: the args.pkl beside the checkpoint, as the baseline keeps it.
    maps = tmp_path / "maps"
    pr = _run("train.predict", "--checkpoint", str(ckpt), "--shards", shards, "--split", "dfc2020_test", "--out",
              str(maps), "--device", "cpu", "--names", "baseline", "--previews", "0")
    assert pr.returncode == 0, pr.stderr
    assert "the DFC2020 baseline's options from" in pr.stdout
    names = sorted(p.name for p in maps.glob("*.tif"))
    assert names and all(n.startswith("ROIs0000_test_dfc_0_p") for n in names), names

    # A text file given as args.pkl, and a pickle that is not the baseline's, are one line each.
    (tmp_path / "notes.txt").write_text("model: UNet\n")
    bad = _run("train.predict", "--checkpoint", str(ckpt), "--config", str(tmp_path / "notes.txt"), "--shards",
               shards, "--split", "dfc2020_test", "--out", str(tmp_path / "m2"), "--device", "cpu")
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1 and "args.pkl" in bad.stderr
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(Evil()))
    evil = _run("train.evaluate", "--checkpoint", str(ckpt), "--config", str(tmp_path / "evil.pkl"), *common)
    assert evil.returncode == 1 and evil.stderr.strip().splitlines() == [
        f"Error: {tmp_path / 'evil.pkl'}: refused to load: the pickle asks for posix.system, which is not a "
        "container, string, number or numpy array"]


@pytest.mark.parametrize("data, message", [
    (b"\x80\x02cargparse\nNamespace\n)R.", "argparse.Namespace is called with REDUCE"),
    (b"\x80\x02cargparse\nNamespace\n)\x81}b}b.", "BUILD of argparse.Namespace without one dict of attributes"),
    (b"\x80\x02cargparse\nNamespace\nK\x01\x85\x81}b.", "argparse.Namespace is built with arguments"),
])
def test_namespace_built_otherwise_is_refused(data: bytes, message: str) -> None:
    with pytest.raises(UnsafePickleError, match=message):
        loads_namespace(data, "args.pkl")
