"""`python -m train.evaluate`: score a checkpoint (ours or the original toolbox's) on a split."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import click

from sen12ms_common.errors import DataError, report_errors
from sen12ms_common.storage.redaction import log_warnings_to_stderr, redacting
from sen12ms_common.vocab.inputs import ChannelTransform

from ..run.progress import ProgressOptions, progress_options
from .optionkinds import click_options
from .schema import EVALUATE, TRAIN

if TYPE_CHECKING:
    from sen12ms_common.vocab.bands import BandRef

    from ..run.distributed import Dist

# --help builds from the declarations alone: what scoring needs (torch) is imported when it runs.


@dataclass
class EvalOptions:
    task: str
    model: str
    input: str
    label_type: str
    igbp: str
    threshold: float
    stats: str
    transform: ChannelTransform | None  # exact transform stored in our checkpoints
    task_options: dict[str, Any] = field(default_factory=dict)  # segmentation: savanna, output stride
    bands: tuple[BandRef, ...] = ()     # what `input` names


def _typed(key: str, value: Any) -> Any:
    """An option of ours as an arguments file holds it (text: `False`, `16`) in its TrainConfig type."""
    default = TRAIN[key].default if key in TRAIN else None
    if isinstance(value, str) and isinstance(default, bool):
        return {"True": True, "False": False}.get(value, value)
    if isinstance(value, str) and isinstance(default, int) and value.isdigit():
        return int(value)
    return value


def options_for(ckpt: Mapping[str, Any], checkpoint_path: str, config: str | None, stats: str | None) -> EvalOptions:
    """What to build, from the arguments file or our checkpoint's stored configuration."""
    from ..config.argsfile import original_to_options, read_arguments_file  # start-up time: the command's work imports torch
    from ..run.checkpoint import stored_input_transform  # start-up time: the command's work imports torch
    from .options import read_options  # start-up time: the command's work imports torch
    from ..tasks.registry import task_options  # start-up time: the command's work imports torch

    if config:
        opts: dict[str, Any] = {k: _typed(k, v) for k, v in original_to_options(read_arguments_file(config)).items()}
        source = config
    elif isinstance(ckpt.get("config"), Mapping):
        opts = dict(ckpt["config"])
        source = checkpoint_path
    else:
        raise click.ClickException(
            f"{checkpoint_path}: holds no configuration (a checkpoint of the original toolbox?): "
            "pass its arguments file with --config")
    # The options used here pass the trainer's own checks (the same function as its command line).
    keys = ("task", "model", "input", "label_type", "igbp", "threshold", "stats", "no_savanna", "output_stride")
    used = {k: opts[k] for k in keys if k in opts}
    needed = ("model", "input") if used.get("task") == "segmentation" else ("model", "input", "label_type", "igbp")
    missing = [k for k in needed if k not in used]
    if missing:
        raise click.ClickException(f"{source}: the configuration lacks {', '.join(missing)}")
    read = read_options(used, lambda k: f"{source}: option {k!r}")
    default_stats = str(opts.get("stats", "official"))  # the original always used the official ones
    arch = ckpt.get("arch")
    if arch and str(arch) != str(opts["model"]):
        raise click.ClickException(f"{checkpoint_path}: a {str(arch)[:100]} checkpoint, but the configuration says "
                                   f"{opts['model']}")
    input_read = read["input"]  # the configuration's input, read once
    transform = None if stats else stored_input_transform(ckpt, input_read.bands, checkpoint_path)
    task = str(opts.get("task", "classification"))
    return EvalOptions(task=task, model=str(opts["model"]), input=input_read.text, bands=input_read.bands,
                       label_type=str(opts.get("label_type", "multi_label")), igbp=str(opts.get("igbp", "simple")),
                       threshold=float(opts.get("threshold", 0.1)), stats=stats or default_stats, transform=transform,
                       task_options=task_options(task, used))


def _setup(ckpt: Mapping[str, Any], checkpoint: str, opts: EvalOptions, shards: str, split: str, device: str):
    """The model of `ckpt` with its weights, for `split` of `shards`; one line when the shards lack
    the split or the input, or the checkpoint was trained on another input."""
    from sen12ms_common.vocab.bands import modalities_of  # start-up time: the command's work imports torch
    from sen12ms_common.format.manifest import load_manifest  # start-up time: the command's work imports torch

    from ..run.checkpoint import load_model_weights  # start-up time: the command's work imports torch
    from ..run.inputfit import check_input  # start-up time: the command's work imports torch
    from ..run.setup import check_modalities, has_split, make_setup  # start-up time: the command's work imports torch

    manifest = load_manifest(shards)
    if not has_split(manifest, split):
        raise DataError(f"{shards}: no {split} samples in this shard set")
    bands = opts.bands
    needed = ",".join(m for m in ("s1", "s2") if m in modalities_of(bands))  # as convert's --modalities
    check_modalities(manifest, bands, shards, split, f"{checkpoint} was trained on {opts.input} ({len(bands)} channels): "
                                              f"score it on shards converted with --modalities {needed}")
    setup = make_setup(shards=shards, model_name=opts.model, input_spec=bands, label_type=opts.label_type,
                       igbp=opts.igbp, threshold=opts.threshold, stats=opts.stats, device=device,
                       transform=opts.transform, manifest=manifest, task=opts.task, task_options=opts.task_options)
    check_input(ckpt, setup.model, opts.input, checkpoint, bands)
    load_model_weights(setup.model, ckpt, strict=True, source=checkpoint)
    return setup


def default_out(checkpoint: str) -> str:
    """The run directory of a checkpoint in `<run>/checkpoints/` (local or s3://), else the current
    directory."""
    from ..run.outputs import run_dir_of  # start-up time: the command's work imports torch

    return run_dir_of(checkpoint) or str(Path.cwd())


def evaluate_checkpoint(*, shards: str, checkpoint: str, config: str | None = None, split: str = "test",
                        out: str | None = None, batch_size: int = 64, workers: int | str = "auto", threads: int = 0,
                        device: str = "auto",
                        stats: str | None = None, verify: bool = True, skip_bad_shards: bool = False,
                        echo: Callable[[str], None] = print, dist: Dist | None = None,
                        progress: ProgressOptions | None = None) -> dict[str, Any]:
    """Score `checkpoint` on `split` of `shards`; writes `<split>_scores.json` and
    `<split>_predictions.npz` into `out` and returns the metrics.

    `dist`: a `train.run.distributed.Dist` under torchrun (every rank reads the checkpoint, scores
    its part; the metrics are those of the gathered predictions; rank 0 writes and prints)."""
    from ..run.checkpoint import load_checkpoint, made_at  # start-up time: the command's work imports torch
    from ..run.distributed import Dist, gather_objects  # start-up time: the command's work imports torch
    from ..run.labelcheck import label_check  # start-up time: the command's work imports torch
    from ..run.outputs import output_folder  # start-up time: the command's work imports torch
    from ..run.report import summary_lines  # start-up time: the command's work imports torch
    from ..run.scoring import predict_all  # start-up time: the command's work imports torch
    from ..run.setup import split_loader_of  # start-up time: the command's work imports torch

    d = dist or Dist()
    if not d.is_main:
        echo = lambda msg: None  # noqa: E731  (one report, from rank 0)

    out_dir = output_folder(out, "--out") if out else None  # an unusable --out fails before the work
    from ..config.baseline_files import attach_config  # start-up time: the command's work imports torch

    # The DFC2020 baseline's args.pkl (given, or beside its checkpoint) becomes the checkpoint's configuration.
    ckpt, config = attach_config(load_checkpoint(checkpoint), checkpoint, config, echo)
    opts = options_for(ckpt, checkpoint, config, stats)
    setup = _setup(ckpt, checkpoint, opts, shards, split, device)
    manifest = setup.manifest
    loader = split_loader_of(setup, "shards", shards, split, train=False, batch_size=batch_size, workers=workers,
                             threads=threads, verify=verify, skip_bad_shards=skip_bad_shards,
                             rank=d.rank, world_size=d.world_size)
    what = f"{opts.label_type} {opts.igbp}" if opts.task == "classification" else opts.task
    stats_used = "as trained" if opts.transform is not None else opts.stats
    echo(f"{checkpoint}: {opts.model} ({made_at(ckpt)}), input {opts.input}, {what}, stats {stats_used}; "
         f"{split}: {manifest.samples(split)} samples" + (f" over {d.world_size} processes" if d.enabled else ""))
    try:
        result = predict_all(setup, loader, d, desc=split, labels=label_check(loader, shards, split, skip_bad_shards),
                             progress=progress or ProgressOptions())
    finally:
        loader.close()  # its threads or worker processes end here, not at interpreter exit
    metrics = setup.task.score(result)
    skipped = list(dict.fromkeys(s for part in gather_objects(d, loader.skipped) for s in part))
    if not d.is_main:
        return metrics
    written = setup.task.write(out_dir or default_out(checkpoint), split, metrics, result)
    echo(f"{split}: {setup.task.test_summary(metrics)} -> {', '.join(written)}")
    for line in summary_lines(setup.task, None, (metrics, result.loss), split):
        echo(line)
    if skipped:
        echo(f"skipped {len(skipped)} bad shard(s)/sample(s): " + "; ".join(skipped[:5]))
    return metrics


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click_options(EVALUATE)
@progress_options
@report_errors
def main(shards, checkpoint, config, split, out, batch_size, workers, threads, device, stats, no_verify,
         skip_bad_shards, progress, progress_interval) -> None:
    """Score a checkpoint on the test (or another) split with the original's metric set.

    Also under `torchrun --nproc_per_node N -m train.evaluate ...`: each process scores its part
    of the split, the metrics are computed on the gathered predictions, rank 0 writes the files.
    """
    from ..run.distributed import Dist, init_from_env, shutdown  # imports torch: here, so that --help does not

    log_warnings_to_stderr()
    d = Dist()
    try:
        d, dev = init_from_env(device)
        evaluate_checkpoint(shards=shards, checkpoint=checkpoint, config=config, split=split, out=out,
                            batch_size=batch_size, workers=workers, threads=threads, device=str(dev), stats=stats,
                            verify=not no_verify, skip_bad_shards=skip_bad_shards, echo=redacting(click.echo), dist=d,
                            progress=ProgressOptions(progress, progress_interval))
    finally:
        shutdown(d)


if __name__ == "__main__":
    main(prog_name="python -m train.evaluate")
