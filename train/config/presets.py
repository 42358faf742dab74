"""Named sets of training options (`--preset`) that reproduce a published recipe, and the rule
that a segmentation run scored on DFC2020 splits does not learn savanna. Explicit command-line
flags always win over a preset; what a preset set is printed at the start of the run.

Sources (docs/training.md, "Presets"):
- `dfc2020-baseline`: lukasliebel/dfc2020_baseline, code/train.py's argument defaults (SGD
  momentum 0.9, lr 0.01 with the DeepLabv3+ head at 10x, weight decay 5e-4, batch 32, output
  stride 16, 100 epochs, validation every 1000 steps) and the settings of its published models
  (README "Pre-trained Models": DeepLabv3+ with an ImageNet ResNet-101 backbone, S1 + S2 high-
  and mid-resolution bands, no savanna; its inputs scaled as `--stats dfc2020`). Its published
  models were trained at lr 0.001: add `--lr 0.001` to match them exactly.
- `sen12ms-2021`: the original toolbox's classification/main_train.py as its README runs it
  (Adam lr 0.001, weight decay 1e-5, batch 64, 100 epochs, IGBP simple, threshold 0.1, its
  training-set normalisation, no augmentation), ResNet50 multi-label on S2 as the defaults.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, MutableMapping

PRESETS: dict[str, dict[str, Any]] = {
    "dfc2020-baseline": {
        "task": "segmentation", "model": "DeepLabV3Plus", "input": "s2hr+s2mr+s1", "stats": "dfc2020",
        "no_savanna": True, "optimizer": "sgd", "lr": 0.01, "decay": 5e-4, "batch_size": 32, "epochs": 100,
        "output_stride": 16, "pretrained_backbone": "imagenet", "val_split": "dfc2020_val",
        "test_split": "dfc2020_test", "val_every_steps": 1000, "augment": False,
    },
    "sen12ms-2021": {
        "task": "classification", "model": "ResNet50", "input": "s2", "label_type": "multi_label",
        "igbp": "simple", "threshold": 0.1, "stats": "official", "optimizer": "adam", "lr": 0.001,
        "decay": 1e-5, "batch_size": 64, "epochs": 100, "augment": False,
    },
}
PRESET_NAMES: tuple[str, ...] = tuple(PRESETS)
PRESET_HELP = ("Settings of a published recipe, each overridden by an explicit flag: dfc2020-baseline (the DFC2020 "
               "baseline's DeepLabv3+: SGD lr 0.01, weight decay 5e-4, batch 32, ImageNet backbone, --stats dfc2020, "
               "no savanna, DFC2020 val/test) or sen12ms-2021 (the original classifier's main_train.py: Adam lr "
               "1e-3, weight decay 1e-5, batch 64, 100 epochs). The settings used are printed at the start.")

Echo = Callable[[str], None]


def apply_preset(name: str | None, given: MutableMapping[str, Any], explicit: set[str], echo: Echo) -> None:
    """Fill `given` (option -> value) with preset `name`'s values where no flag was given
    explicitly, and print what the run now uses."""
    if not name:
        return
    preset = PRESETS[name]
    kept = sorted(k for k in preset if k in explicit and given[k] != preset[k])
    given.update({k: v for k, v in preset.items() if k not in explicit})
    shown = ", ".join(f"{k}={given[k]}" for k in preset)
    echo(f"preset {name}: {shown}" + (f" (given on the command line: {', '.join(kept)})" if kept else ""))


def is_dfc2020_split(split: str) -> bool:
    return str(split).startswith("dfc2020")


def savanna_default(given: MutableMapping[str, Any], explicit: set[str], echo: Echo) -> None:
    """A segmentation run validated or tested on DFC2020 data leaves savanna out (the DFC2020
    data has no savanna pixel: a model trained on SEN12MS's many savanna pixels otherwise
    predicts a class its scores can never credit). `--savanna` keeps it, with a warning."""
    if given.get("task") != "segmentation":
        return
    dfc = [s for s in (given.get("val_split"), given.get("test_split")) if s and is_dfc2020_split(s)]
    if not dfc:
        return
    if "no_savanna" not in explicit:
        if not given.get("no_savanna"):
            echo(f"{' and '.join(dfc)} hold no savanna: savanna pixels are ignored in training (--no-savanna, 9 "
                 "classes; --savanna keeps the class)")
        given["no_savanna"] = True
    elif not given.get("no_savanna"):
        echo(f"warning: --savanna with {' and '.join(dfc)}, which hold no savanna pixel: what the model predicts "
             "as savanna counts as wrong there")


def preset_values(name: str) -> Mapping[str, Any]:
    return PRESETS[name]


__all__ = ["PRESETS", "PRESET_NAMES", "PRESET_HELP", "apply_preset", "savanna_default", "is_dfc2020_split"]
