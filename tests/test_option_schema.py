"""One declaration per option (train.cli.schema): the command line, TrainConfig and the checks of
stored options all follow it, and `--input` is read into bands once, where it enters."""

from __future__ import annotations

import dataclasses

import pytest

from sen12ms_common.errors import InputError
from sen12ms_common.vocab.bands import resolve_bands
from train.cli.options import read_options, stored_options
from train.cli.schema import EVALUATE, PREDICT, TRAIN, read_input
from train.config.trainconfig import TrainConfig


def _params(command) -> dict:
    return {p.name: p for p in command.params}


def test_the_command_line_and_the_config_are_the_declarations():
    from train.cli.train import main

    params = _params(main)
    fields = [f for f in dataclasses.fields(TrainConfig) if f.init]
    assert [f.name for f in fields] == [name for name, o in TRAIN.items() if o.in_config]
    for f in fields:
        option = TRAIN[f.name]
        assert f.default == option.default, f.name
        assert params[f.name].help == option.help, f.name
    assert set(TRAIN) <= set(params) and set(params) - set(TRAIN) == {"progress", "progress_interval"}
    assert params["verify"].opts == ["--verify"] and params["verify"].secondary_opts == ["--no-verify"]


@pytest.mark.parametrize("module, declared", [("train.evaluate", EVALUATE), ("train.predict", PREDICT)])
def test_evaluate_and_predict_share_the_declarations(module: str, declared):
    import importlib

    params = _params(importlib.import_module(module).main)
    for option in declared:
        assert params[option.name].help == option.help and params[option.name].default == option.command_default
    # Where they overlap, the kind (type and range) is the trainer's.
    for name in ("workers", "threads", "device", "batch_size"):
        if name in params:
            assert type(params[name].type) is type(_params(importlib.import_module("train.__main__").main)[name].type)


def test_input_is_read_once_into_text_and_bands():
    read = read_input("B8, b4,VV")
    assert read.text == "B8,B4,VV" and read.bands == resolve_bands("B8,B4,VV")
    assert read_input("RGB").text == "rgb"
    checked = read_options({"input": "s1s2", "streams": 4}, lambda k: k)
    cfg = TrainConfig(shards="x", **checked)
    assert cfg.input == "s1s2" and cfg.bands == resolve_bands("s1s2") and len(cfg.bands) == 12
    # The checkpoint and the arguments file keep the text, never the bands.
    assert "bands" not in cfg.to_dict() and cfg.to_dict()["input"] == "s1s2"
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg and TrainConfig.from_dict(cfg.to_dict()).bands == cfg.bands


def test_stored_options_follow_the_declarations():
    saved = {"run_dir": "/elsewhere", "resume": "x.pth", "batch_size": 3, "input": "rgb", "unknown": 1}
    out = stored_options(saved, "ckpt.pth")
    assert set(out) == {"batch_size", "input"} and out["input"].bands == resolve_bands("rgb")
    with pytest.raises(InputError, match=r"^ckpt.pth: stored option 'input': unknown band 'B99'"):
        stored_options({"input": "B2,B99"}, "ckpt.pth")
    with pytest.raises(InputError, match=r"^--output-stride: 4 is not 8 or 16$"):
        read_options({"output_stride": 4}, lambda k: TRAIN[k].flag)


def test_loader_options_are_the_loader_spec_fields():
    from train.data import LoaderSpec

    spec_fields = {f.name for f in dataclasses.fields(LoaderSpec)}
    cfg = TrainConfig(shards="x", batch_size=5, streams=3, augment=True)
    options = cfg.loader_options()
    assert set(options) <= spec_fields and options["batch_size"] == 5 and options["streams"] == 3
    assert {"batch_size", "seed", "workers", "threads", "streams", "shuffle_buffer", "verify", "skip_bad_shards",
            "augment"} == set(options)


def test_loaders_are_factories():
    from train.data import LOADERS, get_factory

    # No "module:factory" strings: the registry holds the callables (the DALI one imports its
    # optional extra when called: tests/test_dali.py, "without DALI").
    assert list(LOADERS)[:2] == ["shards", "dali"]
    assert all(callable(f) and get_factory(name) is f for name, f in LOADERS.items())
