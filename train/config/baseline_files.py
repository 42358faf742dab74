"""The DFC2020 baseline's run files (lukasliebel/dfc2020_baseline): its `args.pkl`, the
training options `pickle.dump`ed as an argparse.Namespace into the checkpoint folder and read
here without running code (`sen12ms_common.datafiles.namespacepickle`), mapped to our options; and its
prediction file names. Its checkpoints (`checkpoint_step_N.pth`: `{"model_state_dict",
"step", "optimizer_state_dict"}`) load as they are: their keys are our models' (docs/segmentation.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

from sen12ms_common.datafiles.namespacepickle import loads_namespace
from sen12ms_common.datafiles.read import read_source
from sen12ms_common.errors import InputError, UnsafePickleError
from sen12ms_common.storage import files as storage


ARGS_FILE = "args.pkl"  # the name the baseline gives it, beside its checkpoints
MODELS = {"deeplab": "DeepLabV3Plus", "unet": "UNet"}
GROUPS = ("s2hr", "s2mr", "s2lr", "s1")  # its use_<group> flags, in our input-set names
PICKLE_START = b"\x80"  # PROTO: every pickle of protocol 2 or later starts so; a text file never does

Echo = Callable[[str], None]


def _flag(args: Mapping[str, Any], key: str, source: str, default: bool = False) -> bool:
    value = args.get(key, default)
    if not isinstance(value, bool):
        raise InputError(f"{source}: {key} is {str(value)[:40]!r}, not True or False")
    return value


def baseline_options(args: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Our options of the baseline's training arguments: task, model, input, savanna, output
    stride, its scaling (`--stats dfc2020`) and, where present, its optimiser settings."""
    model = args.get("model")
    if model not in MODELS:
        raise InputError(f"{source}: model {str(model)[:40]!r} is not the baseline's deeplab or unet")
    groups = [g for g in GROUPS if _flag(args, f"use_{g}", source)]
    if not groups:
        raise InputError(f"{source}: no input: use_s2hr, use_s2mr, use_s2lr and use_s1 are all False")
    stride = args.get("out_stride", 16)
    if stride not in (8, 16) or isinstance(stride, bool):
        raise InputError(f"{source}: out_stride {str(stride)[:20]!r} is not 8 or 16")
    out: dict[str, Any] = {"task": "segmentation", "model": MODELS[model], "input": "+".join(groups),
                           "no_savanna": _flag(args, "no_savanna", source), "output_stride": stride,
                           "stats": "dfc2020", "optimizer": "sgd" if model == "deeplab" else "rmsprop"}
    for ours, theirs in (("lr", "lr"), ("decay", "weight_decay"), ("batch_size", "batch_size"),
                         ("epochs", "max_epochs")):
        value = args.get(theirs)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[ours] = value
    return out


def read_baseline_args(data: bytes, source: str) -> dict[str, Any]:
    """Our options of an `args.pkl`'s bytes; one-line InputError otherwise."""
    try:
        args = loads_namespace(data, source)
    except UnsafePickleError as exc:
        raise InputError(str(exc)) from None
    return baseline_options(args, source)


def attach_config(ckpt: Mapping[str, Any], checkpoint: str, config: str | None,
                  echo: Echo = print) -> tuple[dict[str, Any], str | None]:
    """The checkpoint with a configuration from the baseline's args.pkl: `config` when it is one
    (a pickle), else, for a checkpoint holding none, the `args.pkl` beside it. Returns the
    checkpoint and what is left of `config` (a text arguments file, read by the caller)."""
    out = dict(ckpt)
    if config:
        data = read_source(config, "arguments file", InputError)
        if not data.startswith(PICKLE_START):
            return out, config
        out["config"] = read_baseline_args(data, config)
        return out, None
    if isinstance(ckpt.get("config"), Mapping):
        return out, None
    beside = _beside(checkpoint)
    if storage.exists(beside):
        out["config"] = read_baseline_args(read_source(beside, "arguments file", InputError), beside)
        echo(f"{checkpoint}: the DFC2020 baseline's options from {beside}")
    return out, None


def _beside(checkpoint: str) -> str:
    """`args.pkl` in the checkpoint's folder (local or s3://)."""
    text = str(checkpoint)
    if storage.is_remote(text):
        return text.rsplit("/", 1)[0] + "/" + ARGS_FILE
    return str(Path(text).parent / ARGS_FILE)


def baseline_prediction_name(key: str, split: str | None) -> str:
    """The baseline's predict.py name of a patch's map: its S2 file name with `_s2_` replaced by
    `_dfc_` (DFC2020 data), `_lc_` (SEN12MS hold-out) or `_pred_` (a folder of GeoTIFFs)."""
    token = "pred" if split is None else "dfc" if split.startswith("dfc2020") else "lc"
    stem = key[:-4] if key.lower().endswith(".tif") else key
    if "_s2_" in stem:
        head, _, tail = stem.rpartition("_s2_")
        return f"{head}_{token}_{tail}.tif"
    return f"{stem}_{token}.tif"


__all__ = ["ARGS_FILE", "attach_config", "baseline_options", "baseline_prediction_name", "read_baseline_args"]
