"""`python -m bench.gpu.check` (`make gpu-check`): the GPU path in one command, under five minutes.

On a CUDA machine: sample shards in the three codecs (zstd, lz4, none), the DALI GPU pipeline's
batches checked against the webdataset loader's, then ResNet50 trained with AMP and channels-last
for a few hundred steps fed by each loader; the samples/s and data-stall shares go to stdout and
docs/gpu.md. Without CUDA it says so in one line and exits 0 (nothing to check here)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import click

from sen12ms_common.cpus import usable_cpus
from sen12ms_common.errors import report_errors

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "gpu.md"
CODECS = ("zstd", "lz4", "none")
LOADERS = ("webdataset", "dali")


@dataclass
class CheckResult:
    device: str
    comparisons: list = field(default_factory=list)   # bench.gpu.loop.Comparison
    rates: list = field(default_factory=list)         # bench.gpu.loop.TrainRate
    notes: list[str] = field(default_factory=list)    # what could not run, and why
    seconds: float = 0.0


def cuda_device() -> str | None:
    """The name of CUDA device 0, or None without CUDA (torch built without it, or no device)."""
    import torch  # start-up time: torch only when used

    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name(0)


def dali_missing() -> str | None:
    """Why DALI cannot run here, or None."""
    try:
        import nvidia.dali  # noqa: F401  (optional extra: DALI)
    except ImportError as exc:
        return f"DALI is not installed ({exc}): make install with the dali extra"
    return None


def make_shards(scratch: Path, scenes: int, patches: int, workers: int) -> dict[str, Path]:
    """The sample tree under `scratch` and its shards in every codec (kept for a second run)."""
    data = scratch / "data"
    if not (data / "SYNTHETIC_SAMPLE_DATA.txt").exists():
        _run("convert", "synth", "--out", str(data), "--scenes", str(scenes), "--patches-per-scene", str(patches))
    sets = {}
    for codec in CODECS:
        out = scratch / codec
        if not (out / "manifest.json").exists():
            _run("convert", "shards", "--data", str(data), "--out", str(out), "--codec", codec, "--workers",
                 str(workers), "--shard-size", "64MB")
        sets[codec] = out
    return sets


def _run(*args: str) -> None:
    # A finished pass says so on stderr: one line per pass in a log (the command's own progress).
    proc = subprocess.run([sys.executable, "-m", *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
    if proc.returncode:
        last = (proc.stdout.strip().splitlines() or ["no output"])[-1]
        raise click.ClickException(f"python -m {' '.join(args)} failed: {last}")


def run_check(sets: dict[str, Path], device: str, *, steps: int, batch_size: int, workers: int,
              echo=click.echo) -> CheckResult:
    """Compare and train on CUDA device 0 (the measuring parts are bench.gpu.loop's)."""
    from bench.gpu.loop import compare, train_rate  # start-up time: imports torch

    result = CheckResult(device)
    t0 = time.perf_counter()
    why = dali_missing()
    if why:
        result.notes.append(why)
    for codec, root in sets.items():
        if why is None:
            c = compare(root, codec, device="cuda", device_id=0, batch_size=batch_size, threads=workers)
            result.comparisons.append(c)
            echo(f"{codec}: DALI GPU batches {'equal' if c.equal else 'DIFFER from'} the webdataset loader's "
                 f"({c.batches} batches, {c.samples} samples, max |diff| {c.max_abs_diff:.2e})")
        for loader in LOADERS if why is None else ("webdataset",):
            r = train_rate(root, codec, loader, device="cuda", device_id=0, steps=steps, batch_size=batch_size,
                           workers=workers)
            result.rates.append(r)
            echo(f"{codec} {loader}: {r.samples_per_s:.0f} samples/s, data stall {100 * r.stall_share:.1f} % "
                 f"({r.steps} steps, {r.precision}, channels-last)")
    result.seconds = time.perf_counter() - t0
    return result


def render(result: CheckResult, *, steps: int, batch_size: int, workers: int, samples: dict[str, int]) -> str:
    """docs/gpu.md: what ran where, and the two tables."""
    import torch  # start-up time: torch only when used

    dali = "not installed"
    try:
        import nvidia.dali  # optional extra: DALI

        dali = nvidia.dali.__version__
    except ImportError:
        pass
    lines = [
        "# GPU check (`make gpu-check`)", "",
        "Written by `python -m bench.gpu.check` on " + time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        + f": {result.device}, torch {torch.__version__} (CUDA {torch.version.cuda}), DALI {dali}, "
          f"{usable_cpus()} usable CPU cores, Python {platform.python_version()}; {result.seconds:.0f} s.", "",
        f"Data: the sample dataset (`convert synth`) converted to each codec: {samples.get('train', 0)} training, "
        f"{samples.get('test', 0)} test samples. Its training epochs are short: each epoch's start (a new DALI "
        "pipeline, the webdataset loader's first shards) counts in the data stall, a larger share than over the "
        "real dataset's epochs.", "",
        "## DALI GPU pipeline against the CPU (webdataset) loader", "",
        "Every batch of the test split from `--loader dali` on the GPU against the webdataset loader's, normalised "
        "on the GPU as the training loop does: keys, targets and probabilities equal, inputs within float32 "
        "rounding (atol 1e-5).", "",
        "| codec | batches | samples | max abs diff | equal |", "|---|---|---|---|---|",
    ]
    lines += [f"| {c.codec} | {c.batches} | {c.samples} | {c.max_abs_diff:.2e} | {'yes' if c.equal else 'NO'} |"
              for c in result.comparisons]
    lines += ["", "## ResNet50, AMP, channels-last", "",
              f"{steps} timed optimizer steps (after 20 untimed), batch {batch_size}, input s1s2 (12 channels, "
              f"256 x 256), single labels; webdataset with {workers} worker processes, DALI with {workers} CPU "
              "threads. Data stall: the share of the timed steps' wall time spent waiting for the next batch "
              "(each step ends when its loss is read back, as in the trainer).", "",
              "| codec | loader | samples/s | data stall | precision |", "|---|---|---|---|---|"]
    lines += [f"| {r.codec} | {r.loader} | {r.samples_per_s:.0f} | {100 * r.stall_share:.1f} % | {r.precision} |"
              for r in result.rates]
    if result.notes:
        lines += ["", *[f"Note: {n}" for n in result.notes]]
    return "\n".join(lines) + "\n"


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--scratch", type=click.Path(file_okay=False, path_type=Path), default=Path("gpucheck"),
              show_default=True, help="Folder for the sample data and its shards (kept: a second run reuses them).")
@click.option("--out", "doc", type=click.Path(dir_okay=False, path_type=Path), default=DOC,
              show_default="docs/gpu.md", help="Markdown file the results are written to.")
@click.option("--steps", type=click.IntRange(1), default=300, show_default=True,
              help="Timed training steps per loader and codec.")
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True, help="Samples per batch.")
@click.option("--workers", type=click.IntRange(1), default=min(8, usable_cpus()), show_default="min(8, CPU cores)",
              help="Webdataset worker processes, DALI CPU threads, conversion processes.")
@click.option("--scenes", type=click.IntRange(2, 500), default=8, show_default=True,
              help="Scenes of the sample dataset.")
@click.option("--patches-per-scene", type=click.IntRange(1, 840), default=64, show_default=True,
              help="Triplets per scene of the sample dataset.")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="A line per finished measurement (the measurements themselves show no progress).")
@report_errors
def main(scratch: Path, doc: Path, steps: int, batch_size: int, workers: int, scenes: int, patches_per_scene: int,
         progress: bool) -> None:
    """DALI on the GPU, AMP and channels-last in one command; on a machine without CUDA, one line."""
    device = cuda_device()
    if device is None:
        click.echo("gpu-check: no CUDA device here (torch.cuda.is_available() is False): nothing to check")
        return
    echo = click.echo if progress else (lambda s: None)
    echo(f"gpu-check on {device}: sample shards in {scratch} ...")
    sets = make_shards(scratch, scenes, patches_per_scene, workers)
    from sen12ms_common.format.manifest import load_manifest  # start-up time: only on this path

    manifest = load_manifest(str(sets["zstd"]))
    samples = {s: manifest.samples(s) for s in manifest.splits}
    result = run_check(sets, device, steps=steps, batch_size=batch_size, workers=workers, echo=echo)
    doc.write_text(render(result, steps=steps, batch_size=batch_size, workers=workers, samples=samples))
    bad = [c.codec for c in result.comparisons if not c.equal]
    click.echo(f"gpu-check: results in {doc}" + (f"; DALI batches differ for {', '.join(bad)}" if bad else ""))
    if bad:
        sys.exit(1)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main(prog_name="python -m bench.gpu.check")
