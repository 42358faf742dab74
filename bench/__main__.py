"""`python -m bench` (`make bench`): loader, codec, conversion, training and S3 figures, side by side
with the original toolbox's way, measured in one run; the table goes to stdout and
docs/benchmarks.md, the plot of the loader rows to docs/benchmarks-loaders.png."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import click

from bench.measure.results import Results
from bench.report.page import build_rows, markdown, plot
from bench.run.config import BenchConfig, quick_config
from bench.run.rounds import run_bench
from sen12ms_common.errors import report_errors
from sen12ms_common.format.codecs import CODECS


def _codecs(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, ...]:
    out = tuple(c.strip() for c in value.split(",") if c.strip())
    bad = [c for c in out if c not in CODECS]
    if bad or not out:
        raise click.BadParameter(f"{value!r}: expected a comma-separated subset of {','.join(CODECS)}")
    return out


_D = BenchConfig()
DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--quick", is_flag=True, help="One round instead of three (a third of the time).")
@click.option("--repeats", type=click.IntRange(1, 20), default=None,
              help=f"Rounds; every figure is the median over them [default: {_D.repeats}, --quick: 1].")
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), default=_D.data, show_default="bench/data",
              help="Where the bench dataset and its shards are made once and reused.")
@click.option("--scratch", type=click.Path(file_okay=False, path_type=Path), default=_D.scratch, show_default="bench/out",
              help="Scratch folder (conversion outputs, the S3 server's data).")
@click.option("--out", "doc", type=click.Path(dir_okay=False, path_type=Path), default=DOC, show_default="docs/benchmarks.md",
              help="Markdown file to write (the plot goes beside it as benchmarks-loaders.png).")
@click.option("--scenes", type=click.IntRange(1, 500), default=_D.dataset.scenes, show_default=True,
              help="Scenes of the generated dataset.")
@click.option("--patches-per-scene", type=click.IntRange(1, 840), default=_D.dataset.patches_per_scene,
              show_default=True, help="Triplets per scene (scenes x patches >= 1000 for the figures we publish).")
@click.option("--subset", type=click.IntRange(1), default=_D.dataset.subset, show_default=True,
              help="Triplets of the conversion timing and of the S3 rows.")
@click.option("--codecs", default=",".join(CODECS), show_default=True, callback=_codecs,
              help="Codecs to convert to and measure.")
@click.option("--batch-size", type=click.IntRange(1), default=_D.loader.batch_size, show_default=True,
              help="Loader batch size.")
@click.option("--train-model", default=_D.training.model, show_default=True, help="Model of the training rows.")
@click.option("--train-batch-size", type=click.IntRange(1), default=_D.training.batch_size, show_default=True,
              help="Batch size of the training rows.")
@click.option("--train-steps", type=click.IntRange(1), default=None,
              help=f"Timed training steps per round [default: {_D.training.steps}].")
@click.option("--device", default=_D.training.device, show_default=True,
              help="Training device: auto (CUDA if there is one), cpu or cuda.")
@click.option("--gpu-rate", type=click.FloatRange(0, min_open=True), default=2600.0, show_default=True,
              help="Model-alone samples/s of one GPU, for the cores-per-GPU rows where no CUDA device is here to "
                   "measure it (2600: ResNet-50 AMP training on one A100, timm's figure at 224 px).")
@click.option("--s3/--no-s3", default=True, show_default=True, help="Measure the S3 rows (local SeaweedFS).")
@click.option("--dali/--no-dali", default=True, show_default=True, help="Measure the DALI rows (CPU-only here).")
@click.option("--peers/--no-peers", default=True, show_default=True,
              help="Measure the peer libraries' rows (litdata, MosaicML streaming, TorchGeo: the .[bench] extra).")
@click.option("--only", default="", metavar="KEYS",
              help="Measure only the loader rows whose keys start with one of these comma-separated prefixes "
                   "(e.g. peer,wds/zstd/float,orig/1; the keys are in SCRATCH/results.json); conversion, "
                   "training, GPU and S3 rows are then not measured. Default: every row.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bars while preparing.")
@click.option("--render-only", is_flag=True,
              help="Measure nothing: write the table and plot again from the last run's SCRATCH/results.json.")
@report_errors
def main(quick: bool, repeats: int | None, data: Path, scratch: Path, doc: Path, scenes: int, patches_per_scene: int,
         subset: int, codecs: tuple[str, ...], batch_size: int, train_model: str, train_batch_size: int,
         train_steps: int | None, device: str, gpu_rate: float, s3: bool, dali: bool, peers: bool, only: str,
         progress: bool, render_only: bool) -> None:
    """Measure loaders, codecs, conversion, training and S3 side by side with the original's way."""
    results_path = scratch / "results.json"
    if render_only:
        if not results_path.is_file():
            raise click.ClickException(f"{results_path}: no results of an earlier run; run `python -m bench` first")
        res = Results.loads(results_path.read_text())
    else:
        cfg = BenchConfig(data=data, scratch=scratch, dataset=replace(_D.dataset, scenes=scenes,
                                                                      patches_per_scene=patches_per_scene,
                                                                      subset=subset),
                          codecs=codecs, loader=replace(_D.loader, batch_size=batch_size),
                          training=replace(_D.training, model=train_model, batch_size=train_batch_size,
                                           device=device),
                          s3=s3, dali=dali, progress=progress, gpu_rate=gpu_rate, peers=peers,
                          only=tuple(o.strip() for o in only.split(",") if o.strip()))
        if quick:
            cfg = quick_config(cfg)
        if repeats is not None:
            cfg = replace(cfg, repeats=repeats)
        if train_steps is not None:
            cfg = replace(cfg, training=replace(cfg.training, steps=train_steps))
        if scenes * patches_per_scene < 1000:
            click.echo(f"note: about {scenes * patches_per_scene} triplets (the published figures use 1,000 or more)",
                       err=True)
        res = run_bench(cfg)
        scratch.mkdir(parents=True, exist_ok=True)
        results_path.write_text(res.dumps())
    codec_list = tuple(res.extra.get("config", {}).get("codecs", codecs))
    rows = build_rows(res, codec_list)
    plot_path = doc.with_name("benchmarks-loaders.png")
    plot(rows, plot_path)
    text = markdown(res, rows, plot_path.name)
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)
    click.echo(text)
    click.echo(f"written: {doc}, {plot_path}; measurements: {results_path}", err=True)


if __name__ == "__main__":
    sys.exit(main())
