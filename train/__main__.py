"""`python -m train`: train one of the original's models on converted shards."""

from __future__ import annotations

import logging
import os
import signal
import sys
from dataclasses import fields
from typing import Any

import click
from click.core import ParameterSource

from sen12ms_common.errors import report_errors
from sen12ms_common.igbp import LABEL_TYPES, SCHEMES
from sen12ms_common.inputs import STATS_CHOICES
from sen12ms_common.names import ALL_SPLITS

from .config import TrainConfig
from .data import loader_names
from .optimizers import OPTIMIZERS
from .options import DEVICES, MAX_STREAMS, MAX_THREADS, WORKERS_HELP, WorkersParam
from .presets import PRESET_HELP, PRESET_NAMES
from .progress import ProgressOptions, progress_options
from .tasks import task_names

_D = TrainConfig()  # the defaults, in one place


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--shards", default=None, metavar="DIR|URL",
              help="Shard set written by `python -m convert shards` (a folder or s3://bucket/prefix). "
                   "Required unless --resume names a checkpoint of ours, whose options are the defaults then.")
@click.option("--task", type=click.Choice(task_names()), default=_D.task, show_default=True,
              help="What is learnt: classification (the original's: IGBP classes of a patch) or segmentation "
                   "(a DFC2020 class per pixel from lc/dfc masks; needs shards with masks, see docs/segmentation.md).")
@click.option("--model", default=_D.model, show_default=True, metavar="NAME",
              help="Network. Classification: VGG16, VGG19, ResNet50, ResNet101, ResNet152, DenseNet121/161/169/201 "
                   "(the original's), ResNet18 or SmallCNN (small, for tests and demos). Segmentation: UNet (the "
                   "default there), DeepLabV3Plus (ResNet-101) or SmallUNet (small, for tests and demos).")
@click.option("--input", "input", default=_D.input, show_default=True, metavar="SET|BANDS",
              help="Input channels: rgb (B2,B3,B4), s2 (10 bands), s1 (VV,VH), s1s2 (12), rgbs1 (5), "
                   "or band names such as B8,B4,B3,VV, in that channel order.")
@click.option("--label-type", type=click.Choice(LABEL_TYPES), default=_D.label_type,
              show_default=True, help="single_label: argmax class, CrossEntropyLoss; multi_label: classes with "
                                      "probability >= --threshold, BCEWithLogitsLoss.")
@click.option("--igbp", type=click.Choice(SCHEMES), default=_D.igbp, show_default=True,
              help="IGBP scheme: simple (10 classes) or full (17 classes).")
@click.option("--threshold", type=click.FloatRange(0, 1), default=_D.threshold, show_default=True,
              help="Multi-label: a class is present where its share of the patch is >= this.")
@click.option("--epochs", type=click.IntRange(1), default=_D.epochs, show_default=True,
              help="Epochs; an epoch reads every train sample once (see the README for the policy).")
@click.option("--batch-size", type=click.IntRange(1), default=_D.batch_size, show_default=True,
              help="Samples per batch (training and evaluation); per process under torchrun.")
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=_D.lr, show_default=True,
              help="Learning rate (of --optimizer; sgd trains a DeepLabV3Plus head at 10x it).")
@click.option("--decay", type=click.FloatRange(0), default=_D.decay, show_default=True,
              help="Weight decay (of --optimizer).")
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), default=_D.optimizer, show_default=True,
              help="adam: the original classifier's. sgd (momentum 0.9, DeepLabV3Plus head at 10x --lr) and "
                   "rmsprop: the DFC2020 baseline's for DeepLabv3+ and UNet (it used --lr 0.01 --decay 5e-4).")
@click.option("--workers", type=WorkersParam(), default=_D.workers, show_default=True, help=WORKERS_HELP)
@click.option("--threads", type=click.IntRange(0, MAX_THREADS), default=_D.threads, show_default=True,
              help="Reading and decoding threads per reading process (0: every CPU this process may use "
                   "when --workers is 0, else 1 per worker). Does not change the data order.")
@click.option("--loader", type=click.Choice(loader_names()), default=_D.loader, show_default=True,
              help="webdataset: CPU workers hand uint16 batches to the device; dali: NVIDIA DALI pipeline "
                   "(optional extra).")
@click.option("--device", type=click.Choice(DEVICES), default=_D.device, show_default=True,
              help="auto: CUDA when available, else CPU.")
@click.option("--amp", is_flag=True, help="Mixed precision: bfloat16 autocast (float16 + GradScaler on GPUs "
                                          "without bfloat16); on the CPU bfloat16 autocast.")
@click.option("--channels-last", is_flag=True, help="channels_last memory format for model and input.")
@click.option("--compile", is_flag=True, help="torch.compile the model (needs a C++ compiler on CPU).")
@click.option("--run-dir", default=None, metavar="DIR|URL",
              help="Run directory for logs/, checkpoints/ and test scores: a folder or s3://bucket/prefix "
                   "(log and TensorBoard files are uploaded after every epoch). [default: runs/<model>, or the "
                   "run of the --resume checkpoint]")
@click.option("--resume", default=None, metavar="CKPT",
              help="Continue from a checkpoint (ours: exactly where it stopped; the original's: after its epoch).")
@click.option("--max-steps", type=click.IntRange(0), default=None,
              help="Stop after this many optimizer steps in all (counting those before a resume), validate, "
                   "checkpoint and test; 0: no limit (to lift a resumed run's). [default: no limit]")
@click.option("--stats", type=click.Choice(list(STATS_CHOICES)), default=_D.stats, show_default=True,
              help="Normalisation: official (the original's training-set mean/std), manifest (computed by the "
                   "converter over this train split), none (the original's unnormalised scaling), dfc2020 (the "
                   "DFC2020 baseline's: S2 clip 0..10000 / 10000, S1 clip -25..0 dB / 25 + 1).")
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=_D.seed, show_default=True,
              help="Seed of model initialisation and of the data order (a function of seed and epoch).")
@click.option("--shuffle-buffer", type=click.IntRange(1), default=_D.shuffle_buffer, show_default=True,
              help="Samples held (still compressed) for shuffling, per process, split over the streams.")
@click.option("--streams", type=click.IntRange(1, MAX_STREAMS), default=_D.streams, show_default=True,
              help=f"Independent read streams per process, at most {MAX_STREAMS} (workers share them out; more "
                   "workers than streams idle).")
@click.option("--verify/--no-verify", default=_D.verify, show_default=True,
              help="Check shard sizes and xxh3-128 checksums against the manifest (--no-verify: trust the shards).")
@click.option("--skip-bad-shards", is_flag=True,
              help="Report a missing or damaged shard or sample, skip it and go on (counted in the log) "
                   "instead of stopping.")
@click.option("--augment", is_flag=True,
              help="Random flips and 90-degree rotations of the training patches, seeded (a resumed run draws "
                   "the same ones); the original trained without augmentation.")
@click.option("--no-savanna/--savanna", default=_D.no_savanna,
              help="Segmentation: ignore savanna pixels, 9 classes (the DFC2020 baseline's --no_savanna). [default: "
                   "--no-savanna when --val-split or --test-split is a DFC2020 split (they hold no savanna), else "
                   "--savanna]")
@click.option("--output-stride", type=click.Choice(["8", "16"]), default=str(_D.output_stride), show_default=True,
              callback=lambda ctx, param, v: int(v), help="Segmentation: output stride of DeepLabV3Plus.")
@click.option("--val-split", default=_D.val_split, show_default=True, type=click.Choice(ALL_SPLITS),
              help="Split validated after every epoch (e.g. dfc2020_val, the DFC2020 validation set).")
@click.option("--test-split", default=_D.test_split, show_default=True, type=click.Choice(ALL_SPLITS),
              help="Split the best checkpoint is scored on (e.g. dfc2020_test); its files are RUN/test_*.")
@click.option("--preset", type=click.Choice(PRESET_NAMES), default=None, help=PRESET_HELP)
@click.option("--init-from", default=None, metavar="CKPT",
              help="Start a new run from these weights: a checkpoint of ours, the original toolbox's *_model_best.pth "
                   "or the DFC2020 baseline's checkpoint_step_N.pth (every tensor must fit: see --init-partial). "
                   "Not a resume: the optimizer, step and epoch start anew.")
@click.option("--init-partial", is_flag=True,
              help="--init-from loads only the tensors whose name and shape fit (a new head, other input bands) and "
                   "prints the ones it did not load.")
@click.option("--pretrained-backbone", default=None, metavar="imagenet|FILE",
              help="Start the backbone from torchvision's ImageNet weights (ResNet, DenseNet, VGG, DeepLabV3Plus): "
                   "imagenet reads torchvision's file from $TORCH_HOME/hub/checkpoints (never downloaded), or give "
                   "the file; none: no pretrained weights (to turn a preset's off). The input stem and the head keep "
                   "their initialisation. [default: none]")
@click.option("--val-every-steps", type=click.IntRange(0), default=_D.val_every_steps, show_default=True,
              help="Also validate every N optimizer steps (scalars and images in TensorBoard at that step); the "
                   "best checkpoint is still chosen after each epoch. 0: only after each epoch.")
@click.option("--tb-images", type=click.IntRange(0, 64), default=_D.tb_images, show_default=True,
              help="Segmentation: the first N validation patches shown in TensorBoard (input, prediction, ground "
                   "truth) at each validation; 0: none.")
@progress_options
@click.pass_context
@report_errors
def main(ctx: click.Context, **params: Any) -> None:
    """Train a SEN12MS classifier on the train shards, validate every epoch on the val shards,
    keep the best checkpoint by validation micro-F1 and score it on the test shards.

    Writes the original's run layout: RUN/logs/<ts>_arguments.txt, RUN/checkpoints/<ts>_checkpoint.pth
    (every epoch) and <ts>_model_best.pth, TensorBoard scalars under RUN/logs/runs/<ts>/, and
    RUN/test_scores.json + RUN/test_predictions.npz.

    Several GPUs or nodes: start it with `torchrun --nproc_per_node N -m train ...`
    (DistributedDataParallel; --batch-size is per process; rank 0 writes the run directory).
    """
    from .distributed import Dist, init_from_env, shutdown
    from .run import fit
    from .signals import Interrupted

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    d = Dist()
    try:
        cfg, checkpoint = _config(ctx, params)
        d, dev = init_from_env(cfg.device)
        fit(cfg, checkpoint, echo=click.echo, dist=d, device=str(dev),
            trace_keys=os.environ.get("SEN12MS_TRACE_KEYS") or None,
            progress=ProgressOptions(params["progress"], params["progress_interval"]))
    except Interrupted as exc:
        # The checkpoint is written: ignore further SIGTERMs (torchrun sends them to the other
        # ranks once one has exited) so that none dies halfway through its exit. Python resets
        # its own handlers while it shuts down, but not SIG_IGN.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        click.echo(str(exc), err=True)
        sys.exit(128 + int(exc.signum))
    finally:
        shutdown(d)


def _config(ctx: click.Context, params: dict[str, Any]) -> tuple[TrainConfig, dict | None]:
    """The run's options: the command line, where it left an option at its default the stored
    options of our --resume checkpoint, each checked; and the loaded checkpoint."""
    from .checkpoint import load_checkpoint
    from .distributed import ranks_from_env
    from .options import check_options, cli_name
    from .resume import check_resume_order

    given = {f.name: params[f.name] for f in fields(TrainConfig)}
    explicit = {k for k in given if ctx.get_parameter_source(k) not in (ParameterSource.DEFAULT, None)}
    rank, world_size, _ = ranks_from_env()
    checkpoint = None
    if given["resume"]:
        checkpoint = load_checkpoint(given["resume"])
        _apply_checkpoint(checkpoint, given["resume"], given, explicit)
    if checkpoint is None:  # a resumed run keeps the options it started with
        from .presets import apply_preset, savanna_default

        say = click.echo if rank == 0 else (lambda msg: None)
        apply_preset(given["preset"], given, explicit, say)
        savanna_default(given, explicit, say)
    if given["task"] == "segmentation" and "model" not in explicit and given["model"] == _D.model:
        given["model"] = "UNet"  # the classification default cannot segment
    if not given["shards"]:
        raise click.ClickException("--shards is required (the output folder of `python -m convert shards`)")
    # The one check of every option, whichever the source (click's types come first on the command line).
    check_options(given, cli_name)
    if given["max_steps"] == 0:
        given["max_steps"] = None
    cfg = TrainConfig(**given)
    if checkpoint is not None and rank == 0:
        changed = check_resume_order(cfg, checkpoint, world_size)
        if changed:
            click.echo("warning: resuming with options that change the data order (" + "; ".join(changed)
                       + "): the run will not match an uninterrupted one", err=True)
    return cfg, checkpoint


def _apply_checkpoint(checkpoint: dict, resume: str, given: dict, explicit: set[str]) -> None:
    """Our checkpoint's stored options, each checked, fill what the command line left at its
    defaults; never where the run writes: that is --run-dir, else the run our checkpoint lies in,
    else runs/<model>."""
    from .options import OptionError, stored_options
    from .outputs import run_dir_of

    saved = checkpoint.get("config")
    if isinstance(saved, dict):
        unset = {k: v for k, v in saved.items() if k not in explicit}
        given.update(stored_options(unset, resume))
    elif saved is not None:
        raise OptionError(f"{resume}: stored config is not a dict of options")
    elif "model" not in explicit and checkpoint.get("arch"):
        given["model"] = str(checkpoint["arch"])[:100]
    if "run_dir" not in explicit and isinstance(saved, dict):  # the original's runs are left alone
        given["run_dir"] = run_dir_of(resume)
    if checkpoint.get("arch") and str(checkpoint["arch"]) != given["model"]:
        raise click.ClickException(f"{resume}: a {str(checkpoint['arch'])[:100]} checkpoint, but --model is "
                                   f"{given['model']}")


if __name__ == "__main__":
    main(prog_name="python -m train")
