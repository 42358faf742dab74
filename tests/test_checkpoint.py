"""Checkpoints (the original's format, safe loading, exact-resume extras) and arguments files."""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from train.config.argsfile import (ORIGINAL_KEYS, options_to_original, original_to_options, read_arguments_file,
                                   write_arguments_file)
from sen12ms_common.errors import CheckpointError, InputError
from train.models.registry import build_model
from train.run.checkpoint import (capture_rng_state, load_checkpoint, load_model_weights, restore_rng_state,
                                  save_checkpoint, unwrap_model)


def _trained_one_step(name: str, n_in: int, classes: int):
    """A model with a real Adam state (one step of its head: cheap even for ResNet50)."""
    torch.manual_seed(0)
    model = build_model(name, n_in, classes)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-5)
    head = model.FC
    nn.functional.cross_entropy(head(torch.randn(2, head.in_features)), torch.tensor([0, 1])).backward()
    opt.step()
    return model.eval(), opt


def _logits(model: nn.Module, seed: int = 5, n_in: int = 10, size: int = 64) -> torch.Tensor:
    x = torch.randn(2, n_in, size, size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model.eval()(x)


# ----------------------------------------------------------------- the original's checkpoints

@pytest.mark.slow
def test_original_checkpoint_loads_weights_only_and_gives_identical_logits(tmp_path):
    model, opt = _trained_one_step("ResNet50", 10, 10)
    path = tmp_path / "20200101_120000_model_best.pth"
    # Exactly what the original's save_checkpoint writes: plain torch.save, numpy best_prec.
    torch.save({"epoch": 41, "arch": "ResNet50", "model_state_dict": model.state_dict(),
                "optimizer_state_dict": opt.state_dict(), "best_prec": np.float64(0.6123)}, path)
    with pytest.raises(pickle.UnpicklingError):  # without the allow-list, weights_only refuses it
        torch.load(path, weights_only=True)

    ckpt = load_checkpoint(str(path))
    assert ckpt["epoch"] == 41 and ckpt["arch"] == "ResNet50"
    assert type(ckpt["best_prec"]) is float and ckpt["best_prec"] == 0.6123
    fresh = build_model("ResNet50", 10, 10)
    load_model_weights(fresh, ckpt, strict=True)
    assert torch.equal(_logits(fresh), _logits(model))
    opt2 = torch.optim.Adam(fresh.parameters())
    opt2.load_state_dict(ckpt["optimizer_state_dict"])
    assert opt2.state_dict()["param_groups"][0]["weight_decay"] == 1e-5


def test_legacy_format_with_numpy1_names_loads(tmp_path):
    """torch < 1.6 wrote the legacy (non-zip) format; numpy 1.x named numpy.core.multiarray."""
    model, opt = _trained_one_step("SmallCNN", 10, 17)
    path = tmp_path / "legacy.pth"
    torch.save({"epoch": 3, "arch": "SmallCNN", "model_state_dict": model.state_dict(),
                "optimizer_state_dict": opt.state_dict(), "best_prec": np.float64(0.25)},
               path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    assert b"numpy._core.multiarray\nscalar" in data
    path.write_bytes(data.replace(b"numpy._core.multiarray\nscalar", b"numpy.core.multiarray\nscalar"))
    ckpt = load_checkpoint(path)
    assert ckpt["best_prec"] == 0.25
    fresh = build_model("SmallCNN", 10, 17)
    load_model_weights(fresh, ckpt)
    assert torch.equal(_logits(fresh), _logits(model))


@pytest.mark.slow
def test_original_resume_key_variants_bare_state_dict_and_wrapper_prefixes(tmp_path):
    model, opt = _trained_one_step("SmallCNN", 10, 10)
    expected = _logits(model)
    variants = {
        # the keys the original's resume code reads
        "resume.pth": {"epoch": 2, "state_dict": model.state_dict(), "optimizer": opt.state_dict(),
                       "best_prec": np.float64(0.5)},
        "bare.pth": model.state_dict(),
        "dataparallel.pth": {"model_state_dict": nn.DataParallel(model).state_dict()},
        "compiled.pth": {"model_state_dict": torch.compile(model).state_dict()},
    }
    for name, obj in variants.items():
        torch.save(obj, tmp_path / name)
        ckpt = load_checkpoint(tmp_path / name)
        assert "model_state_dict" in ckpt, name
        fresh = build_model("SmallCNN", 10, 10)
        load_model_weights(fresh, ckpt)
        assert torch.equal(_logits(fresh), expected), name
    assert set(load_checkpoint(tmp_path / "resume.pth")) == {"epoch", "model_state_dict",
                                                             "optimizer_state_dict", "best_prec"}
    # ... and into a wrapped model
    wrapped = nn.DataParallel(build_model("SmallCNN", 10, 10))
    load_model_weights(wrapped, load_checkpoint(tmp_path / "bare.pth"))
    assert torch.equal(_logits(unwrap_model(wrapped)), expected)


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_that_runs_code_is_refused_naming_the_file(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"epoch": 1, "model_state_dict": {"w": torch.zeros(1)}, "x": _Exploit(marker)}, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    msg = str(err.value)
    assert str(path) in msg and "system" in msg and "\n" not in msg
    assert not marker.exists()
    # The file really is dangerous: an unrestricted load runs the command.
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_unreadable_files_give_one_line_errors(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("model: ResNet50\n")
    truncated = tmp_path / "truncated.pth"
    torch.save({"model_state_dict": {"w": torch.zeros(100)}}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    listed = tmp_path / "list.pth"
    torch.save([1, 2], listed)
    nokeys = tmp_path / "nokeys.pth"
    torch.save({"epoch": 1}, nokeys)
    for path, words in ((tmp_path / "missing.pth", "no such"), (text, "not a readable"),
                        (truncated, "not a readable"), (listed, "not a checkpoint"),
                        (nokeys, "no model weights")):
        with pytest.raises(CheckpointError) as err:
            load_checkpoint(path)
        assert str(path) in str(err.value) and words in str(err.value) and "\n" not in str(err.value)


@pytest.mark.slow
def test_weights_of_another_input_set_do_not_fit_and_say_why(tmp_path):
    with torch.device("meta"):
        ck = {"model_state_dict": build_model("ResNet50", 12, 10).state_dict()}
        model = build_model("ResNet50", 10, 10)
    with pytest.raises(CheckpointError) as err:
        load_model_weights(model, ck, source="best.pth")
    msg = str(err.value)
    assert msg.startswith("best.pth does not fit") and "(64, 12, 7, 7) in the checkpoint" in msg
    with torch.device("meta"):
        other = {"model_state_dict": build_model("DenseNet121", 10, 10).state_dict()}
    with pytest.raises(CheckpointError, match=r"missing \d+ keys \(conv1.weight, .*; unexpected \d+ keys"):
        load_model_weights(model, other)


# ----------------------------------------------------------------- our checkpoints

def test_save_checkpoint_writes_the_original_keys_plus_extras_loadable_without_allow_list(tmp_path):
    model, opt = _trained_one_step("SmallCNN", 5, 10)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    opt.step(), sched.step()
    scaler = torch.amp.GradScaler("cpu", enabled=True)
    path = tmp_path / "ckpt" / "run_checkpoint.pth"
    extra = {"scheduler_state_dict": sched.state_dict(), "rng_state": capture_rng_state(),
             "scaler_state_dict": scaler.state_dict(), "step": 123,
             "config": {"model": "SmallCNN", "input": "rgbs1", "lr": 0.001, "amp": False}}
    save_checkpoint(path, epoch=4, arch="SmallCNN", model_state_dict=model.state_dict(),
                    optimizer_state_dict=opt.state_dict(), best_prec=np.float64(0.75), extra=extra)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left behind
    raw = torch.load(path, weights_only=True)  # plain torch, no allow-list needed
    assert list(raw) == ["epoch", "arch", "model_state_dict", "optimizer_state_dict", "best_prec",
                         "scheduler_state_dict", "rng_state", "scaler_state_dict", "step", "config"]
    assert type(raw["best_prec"]) is float and raw["epoch"] == 4 and raw["config"] == extra["config"]
    sched2 = torch.optim.lr_scheduler.StepLR(torch.optim.Adam(model.parameters()), step_size=1)
    sched2.load_state_dict(raw["scheduler_state_dict"])
    assert sched2.last_epoch == 1 and sched2.step_size == 3

    # Overwriting keeps one file; a DataParallel state dict is saved in the original layout.
    save_checkpoint(path, epoch=5, arch="SmallCNN", model_state_dict=nn.DataParallel(model).state_dict(),
                    optimizer_state_dict=opt.state_dict(), best_prec=0.8)
    again = load_checkpoint(path)
    assert again["epoch"] == 5 and list(again["model_state_dict"]) == list(model.state_dict())
    assert len(list(path.parent.iterdir())) == 1


def test_save_checkpoint_refuses_values_weights_only_cannot_load_and_writes_nothing(tmp_path):
    model, opt = _trained_one_step("SmallCNN", 3, 10)
    path = tmp_path / "c.pth"
    common = dict(epoch=0, arch="SmallCNN", model_state_dict=model.state_dict(),
                  optimizer_state_dict=opt.state_dict(), best_prec=0.1)
    with pytest.raises(TypeError, match=r"\['rng_state'\]\['numpy'\] is a numpy.ndarray"):
        save_checkpoint(path, **common, extra={"rng_state": {"numpy": np.zeros(3)}})
    with pytest.raises(ValueError, match="overwrite"):
        save_checkpoint(path, **common, extra={"best_prec": 1.0})
    assert list(tmp_path.iterdir()) == []
    save_checkpoint(path, **common)
    before = path.read_bytes()
    with pytest.raises(TypeError):
        save_checkpoint(path, **common, extra={"f": lambda: 0})
    assert path.read_bytes() == before  # the previous checkpoint is intact


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    random.random(), np.random.normal(), torch.rand(1)  # move off the seeds; numpy caches a gaussian
    state = capture_rng_state()
    first = (random.random(), np.random.normal(size=3).tolist(), torch.rand(3).tolist())
    model = build_model("SmallCNN", 3, 10)
    save_checkpoint(tmp_path / "r.pth", epoch=0, arch="SmallCNN", model_state_dict=model.state_dict(),
                    optimizer_state_dict={}, best_prec=0.0, extra={"rng_state": state})
    random.seed(99), np.random.seed(99), torch.manual_seed(99)
    restore_rng_state(torch.load(tmp_path / "r.pth", weights_only=True)["rng_state"])
    assert (random.random(), np.random.normal(size=3).tolist(), torch.rand(3).tolist()) == first


# ----------------------------------------------------------------- arguments files

ORIGINAL_DEFAULTS = {
    "exp_name": None, "data_dir": "/data/sen12ms", "label_split_dir": "/data/labels",
    "use_s2": False, "use_s1": False, "use_RGB": False, "IGBP_simple": True,
    "label_type": "multi_label", "threshold": 0.1, "model": "ResNet50", "lr": 0.001,
    "decay": 1e-05, "batch_size": 64, "num_workers": 4, "epochs": 100, "resume": None,
}


def _write_like_the_original(path: Path, args: dict) -> None:
    """The original's write_arguments_to_file on vars(args)."""
    with open(path, "w") as f:
        for key, value in args.items():
            f.write("%s: %s\n" % (key, str(value)))


@pytest.mark.parametrize("use_s2, use_s1, use_rgb, expected", [
    (True, False, False, "s2"), (False, False, True, "rgb"), (True, True, False, "s1s2"),
    (False, True, False, "s1"), (False, True, True, "rgbs1"),
    (True, False, True, "s2"), (True, True, True, "s1s2"),  # S2 wins over RGB, as in the original
])
def test_original_arguments_file_maps_to_our_options(tmp_path, use_s2, use_s1, use_rgb, expected):
    args = dict(ORIGINAL_DEFAULTS, use_s2=use_s2, use_s1=use_s1, use_RGB=use_rgb)
    path = tmp_path / "20200514_093015_arguments.txt"
    _write_like_the_original(path, args)
    d = read_arguments_file(path, known_keys=ORIGINAL_KEYS)
    assert d["use_s2"] == str(use_s2) and d["exp_name"] == "None"
    assert original_to_options(d) == {
        "model": "ResNet50", "label_type": "multi_label", "igbp": "simple", "input": expected,
        "threshold": 0.1, "lr": 0.001, "decay": 1e-05, "batch_size": 64, "epochs": 100,
    }


def test_original_file_single_label_full_scheme_and_other_model(tmp_path):
    args = dict(ORIGINAL_DEFAULTS, use_s2=True, IGBP_simple=False, label_type="single_label",
                model="DenseNet121", threshold=0.2, batch_size=32, exp_name="dn121_s2")
    path = tmp_path / "a.txt"
    _write_like_the_original(path, args)
    opts = original_to_options(read_arguments_file(path))
    assert (opts["model"], opts["label_type"], opts["igbp"], opts["input"]) == \
        ("DenseNet121", "single_label", "full", "s2")
    assert opts["threshold"] == 0.2 and opts["batch_size"] == 32
    assert not {"exp_name", "data_dir", "label_split_dir", "num_workers", "resume"} & set(opts)


def test_our_file_is_the_original_format_and_our_keys_take_precedence(tmp_path):
    ours = {"model": "ResNet18", "label_type": "single_label", "igbp": "full", "input": "s1s2",
            "threshold": 0.1, "lr": 0.001, "decay": 1e-05, "batch_size": 16, "epochs": 4}
    args = {**options_to_original(ours), **ours, "stats": "manifest", "amp": False}
    path = tmp_path / "logs" / "20240101_000000_arguments.txt"
    write_arguments_file(path, args)
    original_style = tmp_path / "orig.txt"
    _write_like_the_original(original_style, args)
    assert path.read_bytes() == original_style.read_bytes()
    # The original's test.py reader (whitespace split, key minus its colon) understands it.
    config = {}
    for line in path.read_text().splitlines():
        key, val = line.split()
        config[key[:-1]] = val
    assert (config["use_s1"], config["use_s2"], config["use_RGB"], config["IGBP_simple"]) == \
        ("True", "True", "False", "False")
    opts = original_to_options(read_arguments_file(path))
    assert opts == {**ours, "stats": "manifest", "amp": "False"}

    # `input` / `igbp` win over contradicting original keys.
    edited = dict(args, use_s1=False, use_s2=False, use_RGB=True, IGBP_simple=True)
    write_arguments_file(path, edited)
    opts = original_to_options(read_arguments_file(path))
    assert (opts["input"], opts["igbp"]) == ("s1s2", "full")


@pytest.mark.parametrize("input_set", ["rgb", "s2", "s1", "s1s2", "rgbs1"])
def test_options_round_trip_through_the_original_keys_alone(tmp_path, input_set):
    ours = {"model": "VGG16", "label_type": "multi_label", "igbp": "simple", "input": input_set}
    path = tmp_path / "a.txt"
    write_arguments_file(path, options_to_original(ours))  # only the original's keys
    assert original_to_options(read_arguments_file(path)) == ours


@pytest.mark.parametrize("content, where, words", [
    ("model: ResNet50\nlabel_type multi_label\n", ":2:", "not a 'key: value' line"),
    ("model: ResNet50\nmodel: VGG16\n", ":2:", "given twice (first on line 1)"),
    ("model: ResNet50\n\nuse_S2: True\n", ":3:", "unknown key 'use_S2'"),
])
def test_garbled_arguments_files_name_file_and_line(tmp_path, content, where, words):
    path = tmp_path / "args.txt"
    path.write_text(content)
    with pytest.raises(InputError) as err:
        read_arguments_file(path, known_keys=ORIGINAL_KEYS)
    msg = str(err.value)
    assert msg.startswith(f"{path}{where}") and words in msg and "\n" not in msg


@pytest.mark.parametrize("change, where, words", [
    ({"use_s2": "yes"}, ":4:", "use_s2 must be True or False"),
    ({"threshold": "abc"}, ":9:", "threshold must be a number"),
    ({"batch_size": "6.4"}, ":13:", "batch_size must be an integer"),
    ({"label_type": "multi"}, ":8:", "label_type must be one of"),
    ({"use_s2": False}, ":", "no input"),
    ({"model": None}, ":", "missing model"),
])
def test_bad_values_in_an_original_file_name_file_and_line(tmp_path, change, where, words):
    args = dict(ORIGINAL_DEFAULTS, use_s2=True)
    args.update(change)
    if args["model"] is None:
        del args["model"]
    path = tmp_path / "args.txt"
    _write_like_the_original(path, args)
    with pytest.raises(InputError) as err:
        original_to_options(read_arguments_file(path))
    msg = str(err.value)
    assert msg.startswith(f"{path}{where}") and words in msg and "\n" not in msg


def test_unknown_keys_of_ours_and_unreadable_files(tmp_path):
    path = tmp_path / "a.txt"
    write_arguments_file(path, {**ORIGINAL_DEFAULTS, "use_s2": True, "stats": "official", "colour": "red"})
    d = read_arguments_file(path)
    assert original_to_options(d, known_extra={"stats", "colour"})["colour"] == "red"
    with pytest.raises(InputError, match=r"a\.txt:18: unknown key 'colour'"):
        original_to_options(d, known_extra={"stats"})
    binary = tmp_path / "model_best.pth"
    torch.save({"epoch": 1}, binary)
    with pytest.raises(InputError, match="not a text arguments file"):
        read_arguments_file(binary)
    with pytest.raises(InputError, match="no such arguments file"):
        read_arguments_file(tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="line break"):
        write_arguments_file(path, {"exp_name": "a\nb"})
