"""Every option of `python -m train`, declared once: the click options, `TrainConfig`'s fields and
defaults, and the check of a checkpoint's or an arguments file's values all come from `TRAIN`.
`train.evaluate` and `train.predict` take the options they share from here (`EVALUATE`,
`PREDICT`), with their own defaults and help where theirs differ. How to add an option:
docs/DESIGN.md ("Options").

Imports no torch (nor anything that does): `--help` is built from this module alone."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import click

from sen12ms_common.errors import InputError
from sen12ms_common.vocab.bands import InputBands, read_input
from sen12ms_common.vocab.igbp import LABEL_TYPES, SCHEMES
from sen12ms_common.vocab.inputs import STATS_CHOICES
from sen12ms_common.vocab.names import ALL_SPLITS

from ..config.presets import PRESET_HELP, PRESET_NAMES
from ..data import RENAMED, loader_names
from ..run.optimizers import OPTIMIZERS
from ..tasks.registry import task_names
from .optionkinds import _Bad, Choice, Custom, Flag, Int, IntChoice, Option, Optional, Real, Text, shown

DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")  # auto: CUDA when available, else the CPU

# Bounds that keep a run from hanging or allocating without end (documented in --help).
MAX_STREAMS = 1024
MAX_WORKERS = 1024
MAX_THREADS = 256
MAX_INT = 2**31 - 1           # counts: epochs, steps, batch size, shuffle buffer
MAX_SEED = 2**63 - 1
MAX_TB_IMAGES = 64            # validation patches shown in TensorBoard


# --- the kinds that need more than a range ---------------------------------------------------------

def _read_checked_input(v: Any) -> InputBands:
    if not isinstance(v, (str, InputBands)):
        raise _Bad(f"{shown(v)} is not an input set or band names")
    try:
        return read_input(v)
    except (InputError, ValueError) as exc:
        raise _Bad(str(exc).splitlines()[0] if str(exc) else "not an input set or band names") from None


def _model_problem(v: Any) -> str | None:
    from ..models.registry import MODELS_OF, model_names  # the registry imports torch: only when a value is checked

    known = [m for t in MODELS_OF for m in model_names(t)]
    return None if isinstance(v, str) and v in known else f"unknown model {shown(v)}; choose one of: {', '.join(known)}"


def _workers_problem(v: Any) -> str | None:
    ok = v == "auto" or Int(0, MAX_WORKERS).ok(v)
    return None if ok else f"{shown(v)} is not auto or an integer in 0..{MAX_WORKERS}"


class WorkersParam(click.ParamType):
    """`--workers`: auto, or a number of worker processes (0: the process itself reads)."""

    name = "auto|N"

    def convert(self, value: Any, param: Any, ctx: Any) -> int | str:
        text = str(value).strip().lower()
        if text == "auto":
            return "auto"
        try:
            n = int(text) if not isinstance(value, bool) else -1
        except ValueError:
            self.fail(f"{value!r} is neither auto nor a number of processes", param, ctx)
        if not 0 <= n <= MAX_WORKERS:
            self.fail(f"{n} is not in the range 0<=x<={MAX_WORKERS}.", param, ctx)
        return n


INPUT = Custom(reader=_read_checked_input)
MODEL = Custom(_model_problem)
WORKERS = Custom(_workers_problem, clicked=WorkersParam)
PATH = Optional(Text())
SPLIT = Choice(ALL_SPLITS)
FLAG = Flag()

WORKERS_HELP = ("Loader worker processes: auto (one per CPU here, shared among a node's ranks under torchrun, at "
                "most --streams; none on a single CPU), or a number; 0: this process reads, with --threads "
                "threads. Does not change the data order.")


# --- python -m train: the fields of TrainConfig, in their order ------------------------------------

_TRAIN: list[Option] = [
    Option("shards", PATH, "", cli_default=None, metavar="DIR|URL", show_default=False,
           help="Shard set written by `python -m convert shards` (a folder or s3://bucket/prefix). "
                "Required unless --resume names a checkpoint of ours, whose options are the defaults then."),
    Option("task", Choice(tuple(task_names())), "classification",
           help="What is learnt: classification (the original's: IGBP classes of a patch) or segmentation "
                "(a DFC2020 class per pixel from lc/dfc masks; needs shards with masks, see docs/segmentation.md)."),
    Option("model", MODEL, "ResNet50", metavar="NAME",
           help="Network. Classification: VGG16, VGG19, ResNet50, ResNet101, ResNet152, DenseNet121/161/169/201 "
                "(the original's), ResNet18 or SmallCNN (small, for tests and demos). Segmentation: UNet (the "
                "default there), DeepLabV3Plus (ResNet-101) or SmallUNet (small, for tests and demos)."),
    Option("input", INPUT, "s2", metavar="SET|BANDS",
           help="Input channels: rgb (B2,B3,B4), s2 (10 bands), s1 (VV,VH), s1s2 (12), rgbs1 (5), "
                "or band names such as B8,B4,B3,VV, in that channel order."),
    Option("label_type", Choice(LABEL_TYPES), "multi_label",
           help="single_label: argmax class, CrossEntropyLoss; multi_label: classes with "
                "probability >= --threshold, BCEWithLogitsLoss."),
    Option("igbp", Choice(SCHEMES), "simple", help="IGBP scheme: simple (10 classes) or full (17 classes)."),
    Option("threshold", Real(0.0, 1.0), 0.1,
           help="Multi-label: a class is present where its share of the patch is >= this."),
    Option("epochs", Int(1, MAX_INT, click_max=False), 100,
           help="Epochs; an epoch reads every train sample once (see the README for the policy)."),
    Option("batch_size", Int(1, MAX_INT, click_max=False), 64, loader=True,
           help="Samples per batch (training and evaluation); per process under torchrun."),
    Option("lr", Real(0.0, low_open=True), 0.001,
           help="Learning rate (of --optimizer; sgd trains a DeepLabV3Plus head at 10x it)."),
    Option("decay", Real(0.0), 1e-5, help="Weight decay (of --optimizer)."),
    Option("optimizer", Choice(OPTIMIZERS), "adam",
           help="adam: the original classifier's. sgd (momentum 0.9, DeepLabV3Plus head at 10x --lr) and "
                "rmsprop: the DFC2020 baseline's for DeepLabv3+ and UNet (it used --lr 0.01 --decay 5e-4)."),
    Option("workers", WORKERS, "auto", help=WORKERS_HELP, field_type="int | str", loader=True),
    Option("threads", Int(0, MAX_THREADS), 0, loader=True,
           help="Reading and decoding threads per reading process (0: every CPU this process may use "
                "when --workers is 0, else 1 per worker). Does not change the data order."),
    Option("loader", Choice(tuple(loader_names()) + tuple(RENAMED)), "shards",
           help="shards: the ShardDataset of docs/api.md, CPU readers hand uint16 batches to the device "
                "(webdataset: its old name); dali: NVIDIA DALI pipeline (optional extra)."),
    Option("device", Choice(DEVICES), "auto", help="auto: CUDA when available, else CPU."),
    Option("amp", FLAG, False, is_flag=True,
           help="Mixed precision: bfloat16 autocast (float16 + GradScaler on GPUs without bfloat16); on the "
                "CPU bfloat16 autocast."),
    Option("channels_last", FLAG, False, is_flag=True, help="channels_last memory format for model and input."),
    Option("compile", FLAG, False, is_flag=True, help="torch.compile the model (needs a C++ compiler on CPU)."),
    # Where a run writes comes from the command line or from where its checkpoint lies; --resume is
    # the checkpoint itself: neither is taken from a checkpoint's stored options.
    Option("run_dir", PATH, None, metavar="DIR|URL", show_default=False, stored=False, field_type="str | None",
           help="Run directory for logs/, checkpoints/ and test scores: a folder or s3://bucket/prefix "
                "(log and TensorBoard files are uploaded after every epoch). [default: runs/<model>, or the "
                "run of the --resume checkpoint]"),
    Option("resume", PATH, None, metavar="CKPT", show_default=False, stored=False, field_type="str | None",
           help="Continue from a checkpoint (ours: exactly where it stopped; the original's: after its epoch)."),
    Option("max_steps", Optional(Int(0, MAX_INT, click_max=False)), None, show_default=False,
           field_type="int | None",
           help="Stop after this many optimizer steps in all (counting those before a resume), validate, "
                "checkpoint and test; 0: no limit (to lift a resumed run's). [default: no limit]"),
    Option("stats", Choice(tuple(STATS_CHOICES)), "official",
           help="Normalisation: official (the original's training-set mean/std), manifest (computed by the "
                "converter over this train split), none (the original's unnormalised scaling), dfc2020 (the "
                "DFC2020 baseline's: S2 clip 0..10000 / 10000, S1 clip -25..0 dB / 25 + 1)."),
    Option("seed", Int(0, MAX_SEED), 0, loader=True,
           help="Seed of model initialisation and of the data order (a function of seed and epoch)."),
    Option("shuffle_buffer", Int(1, MAX_INT, click_max=False), 1000, loader=True,
           help="Samples held (still compressed) for shuffling, per process, split over the streams."),
    Option("streams", Int(1, MAX_STREAMS), 8, loader=True,
           help=f"Independent read streams per process, at most {MAX_STREAMS} (workers share them out; more "
                "workers than streams idle)."),
    Option("verify", FLAG, True, decls=("--verify/--no-verify",), loader=True,
           help="Check shard sizes and xxh3-128 checksums against the manifest (--no-verify: trust the shards)."),
    Option("skip_bad_shards", FLAG, False, is_flag=True, loader=True,
           help="Report a missing or damaged shard or sample, skip it and go on (counted in the log) "
                "instead of stopping."),
    Option("augment", FLAG, False, is_flag=True, loader=True,
           help="Random flips and 90-degree rotations of the training patches, seeded (a resumed run draws "
                "the same ones); the original trained without augmentation."),
    Option("no_savanna", FLAG, False, decls=("--no-savanna/--savanna",), show_default=False,
           help="Segmentation: ignore savanna pixels, 9 classes (the DFC2020 baseline's --no_savanna). [default: "
                "--no-savanna when --val-split or --test-split is a DFC2020 split (they hold no savanna), else "
                "--savanna]"),
    Option("output_stride", IntChoice((8, 16)), 16, cli_default="16", callback=lambda ctx, param, v: int(v),
           help="Segmentation: output stride of DeepLabV3Plus."),
    Option("val_split", SPLIT, "val",
           help="Split validated after every epoch (e.g. dfc2020_val, the DFC2020 validation set)."),
    Option("test_split", SPLIT, "test",
           help="Split the best checkpoint is scored on (e.g. dfc2020_test); its files are RUN/test_*."),
    # The preset and the starting weights belong to the run's start, which a resumed run has behind it.
    Option("preset", Optional(Choice(PRESET_NAMES)), None, show_default=False, stored=False,
           field_type="str | None", help=PRESET_HELP),
    Option("init_from", PATH, None, metavar="CKPT", show_default=False, stored=False, field_type="str | None",
           help="Start a new run from these weights: a checkpoint of ours, the original toolbox's *_model_best.pth "
                "or the DFC2020 baseline's checkpoint_step_N.pth (every tensor must fit: see --init-partial). "
                "Not a resume: the optimizer, step and epoch start anew."),
    Option("init_partial", FLAG, False, is_flag=True, stored=False,
           help="--init-from loads only the tensors whose name and shape fit (a new head, other input bands) and "
                "prints the ones it did not load."),
    Option("pretrained_backbone", PATH, None, metavar="imagenet|FILE", show_default=False, stored=False,
           field_type="str | None",
           help="Start the backbone from torchvision's ImageNet weights (ResNet, DenseNet, VGG, DeepLabV3Plus): "
                "imagenet reads torchvision's file from $TORCH_HOME/hub/checkpoints (never downloaded), or give "
                "the file; none: no pretrained weights (to turn a preset's off). The input stem and the head keep "
                "their initialisation. [default: none]"),
    Option("val_every_steps", Int(0, MAX_INT, click_max=False), 0,
           help="Also validate every N optimizer steps (scalars and images in TensorBoard at that step); the "
                "best checkpoint is still chosen after each epoch. 0: only after each epoch."),
    Option("tb_images", Int(0, MAX_TB_IMAGES), 4,
           help="Segmentation: the first N validation patches shown in TensorBoard (input, prediction, ground "
                "truth) at each validation; 0: none."),
]
TRAIN: dict[str, Option] = {o.name: o for o in _TRAIN}


# --- python -m train.evaluate and train.predict: the same options where they overlap ---------------

_VERIFY_OFF = Option("no_verify", FLAG, False, is_flag=True, in_config=False,
                     help="Do not check shard sizes and checksums against the manifest.")
_CHECKPOINT = Option("checkpoint", Text(), None, metavar="CKPT", required=True, in_config=False, help="")
_OUT = Option("out", PATH, None, metavar="DIR|URL", in_config=False, show_default=False, help="")

EVALUATE: list[Option] = [
    TRAIN["shards"].but(required=True, help="Shard set written by `python -m convert shards`."),
    _CHECKPOINT.but(help="Checkpoint: ours (<ts>_model_best.pth) or the original toolbox's (dict with "
                         "model_state_dict)."),
    Option("config", PATH, None, metavar="ARGS.txt|args.pkl", in_config=False, show_default=False,
           help="Arguments file of the run (the original's <ts>_arguments.txt or ours: model, input, label rule; "
                "or the DFC2020 baseline's args.pkl, read without running code). [default: the configuration "
                "stored in our checkpoints, else an args.pkl beside the checkpoint; required for the original's]"),
    TRAIN["test_split"].but(name="split", decls=("--split",),
                            help="Split of the shard set to score (dfc2020_val, dfc2020_test: segmentation "
                                 "checkpoints)."),
    _OUT.but(help="Folder or s3://bucket/prefix for <split>_scores.json and <split>_predictions.npz. "
                  "[default: the checkpoint's run directory, else the current directory]"),
    TRAIN["batch_size"].but(help="Samples per batch."),
    TRAIN["workers"],
    TRAIN["threads"].but(help="Decoding threads per reading process (0: every CPU here when --workers is 0, "
                              "else 1 per worker)."),
    TRAIN["device"],
    TRAIN["stats"].but(default=None, show_default=False,
                       help="Normalisation. [default: as the checkpoint was trained; official for the "
                            "original's runs]"),
    _VERIFY_OFF,
    TRAIN["skip_bad_shards"].but(help="Report and skip missing or damaged shards instead of stopping."),
]

PREDICT: list[Option] = [
    _CHECKPOINT.but(help="Checkpoint of `python -m train --task segmentation` (<ts>_model_best.pth)."),
    TRAIN["shards"].but(help="Shard set written by `python -m convert shards`."),
    TRAIN["test_split"].but(name="split", decls=("--split",), help="Split of --shards to predict."),
    Option("data", PATH, None, metavar="DIR", in_config=False, show_default=False,
           help="Folder of S1/S2 GeoTIFFs instead of shards, never converted (names with _s1_/_s2_ tokens or "
                "s1/ s2/ folders; _lc_/_dfc_ files beside them are ground truth for the previews)."),
    _OUT.but(required=True, help="Folder or s3://bucket/prefix for <name>_pred_<...>.tif maps and previews/."),
    TRAIN["batch_size"].but(default=8, help="Patches per forward pass."),
    TRAIN["device"],
    TRAIN["stats"].but(default=None, show_default=False, help="Normalisation. [default: as the checkpoint was "
                                                                 "trained]"),
    Option("previews", Int(0, MAX_INT, click_max=False), 32, in_config=False,
           help="Patches shown in preview pages (S2 RGB | prediction | ground truth); 0: none."),
    Option("preview_rows", Int(1, 64), 8, in_config=False, help="Patches per preview page."),
    _VERIFY_OFF,
    Option("config", PATH, None, metavar="args.pkl", in_config=False, show_default=False,
           help="The DFC2020 baseline's args.pkl for one of its checkpoints (read without running code). "
                "[default: our checkpoint's stored configuration, else an args.pkl beside the checkpoint]"),
    Option("names", Choice(("ours", "baseline")), "ours", in_config=False,
           help="Map file names: ours (_s2_ -> _pred_) or the baseline's predict.py (_s2_ -> _dfc_ for DFC2020 "
                "splits, _lc_ for SEN12MS splits, _pred_ for --data)."),
]


__all__ = ["TRAIN", "EVALUATE", "PREDICT", "DEVICES", "MAX_STREAMS", "MAX_THREADS", "MAX_WORKERS", "MAX_INT",
           "MAX_SEED", "InputBands", "read_input", "WorkersParam", "WORKERS_HELP"]
