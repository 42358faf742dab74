"""`python -m train`: train one of the original's models on converted shards."""

from __future__ import annotations

import signal
import sys
from typing import Any

import click
from click.core import ParameterSource

from sen12ms_common.errors import InputError, Interrupted, report_errors
from sen12ms_common.storage.redaction import log_warnings_to_stderr, redact, redacting

from ..run.progress import ProgressOptions, progress_options
from .optionkinds import click_options
from .schema import TRAIN

# --help builds from the declarations alone: what the run needs (torch) is imported when it runs.


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click_options(list(TRAIN.values()))
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
    # Here, not at the top: they import torch, which --help does not need (1 s against 10 s).
    from ..run.distributed import Dist, init_from_env, shutdown
    from ..run.loop import fit  # start-up time: the command's work imports torch

    log_warnings_to_stderr()
    d = Dist()
    try:
        cfg, checkpoint = _config(ctx, params)
        d, dev = init_from_env(cfg.device)
        fit(cfg, checkpoint, echo=redacting(click.echo), dist=d, device=str(dev),
            progress=ProgressOptions(params["progress"], params["progress_interval"]))
    except Interrupted as exc:
        # The checkpoint is written: ignore further SIGTERMs (torchrun sends them to the other
        # ranks once one has exited) so that none dies halfway through its exit. Python resets
        # its own handlers while it shuts down, but not SIG_IGN.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        click.echo(redact(str(exc)), err=True)
        sys.exit(128 + int(exc.signum))
    finally:
        shutdown(d)


def _config(ctx: click.Context, params: dict[str, Any]) -> tuple[Any, dict | None]:
    """The run's options (a TrainConfig): the command line, where it left an option at its
    default the stored options of our --resume checkpoint, each read and checked; and the loaded
    checkpoint."""
    from ..run.checkpoint import load_checkpoint  # start-up time: the command's work imports torch
    from ..config.trainconfig import TrainConfig  # start-up time: the command's work imports torch
    from ..run.distributed import ranks_from_env  # start-up time: the command's work imports torch
    from .options import cli_name, read_options  # start-up time: the command's work imports torch
    from ..config.presets import apply_preset, savanna_default  # start-up time: the command's work imports torch
    from ..run.resume import check_resume_order  # start-up time: the command's work imports torch

    given = {name: params[name] for name, option in TRAIN.items() if option.in_config}
    explicit = {k for k in given if ctx.get_parameter_source(k) not in (ParameterSource.DEFAULT, None)}
    rank, world_size, _ = ranks_from_env()
    checkpoint = None
    if given["resume"]:
        checkpoint = load_checkpoint(given["resume"])
        _apply_checkpoint(checkpoint, given["resume"], given, explicit)
    if checkpoint is None:  # a resumed run keeps the options it started with
        say = click.echo if rank == 0 else (lambda msg: None)
        apply_preset(given["preset"], given, explicit, say)
        savanna_default(given, explicit, say)
    if given["task"] == "segmentation" and "model" not in explicit and given["model"] == TRAIN["model"].default:
        given["model"] = "UNet"  # the classification default cannot segment
    if not given["shards"]:
        raise click.ClickException("--shards is required (the output folder of `python -m convert shards`)")
    # The one check of every option, whichever the source (click's types come first on the command
    # line); --input becomes its bands here, once.
    given = read_options(given, cli_name)
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
    from .options import stored_options  # start-up time: the command's work imports torch
    from ..run.outputs import run_dir_of  # start-up time: the command's work imports torch

    saved = checkpoint.get("config")
    if isinstance(saved, dict):
        unset = {k: v for k, v in saved.items() if k not in explicit}
        given.update(stored_options(unset, resume))
    elif saved is not None:
        raise InputError(f"{resume}: stored config is not a dict of options")
    elif "model" not in explicit and checkpoint.get("arch"):
        given["model"] = str(checkpoint["arch"])[:100]
    if "run_dir" not in explicit and isinstance(saved, dict):  # the original's runs are left alone
        given["run_dir"] = run_dir_of(resume)
    if checkpoint.get("arch") and str(checkpoint["arch"]) != given["model"]:
        raise click.ClickException(f"{resume}: a {str(checkpoint['arch'])[:100]} checkpoint, but --model is "
                                   f"{given['model']}")


if __name__ == "__main__":
    main(prog_name="python -m train")
