"""The headline of docs/benchmarks.md: the ratios the README quotes (per core, medians of per-round ratios)."""

from __future__ import annotations

from bench.measure.results import Results
from bench.report.rows import stall
from sen12ms_common.cpus import usable_cpus

CODEC_SHORT = {"zstd": "zstd", "lz4": "lz4", "none": "uncompressed"}


def _loader_lines(res: Results, codecs: tuple[str, ...], n: int) -> list[str]:
    """Our loader against the original's way, its codec limit and a stock webdataset pipeline."""
    out = []
    for codec in codecs:
        parts = []
        for lab in ("1", str(n)):
            u, f = res.ratio(f"wds/{codec}/uint16/{lab}", f"orig/{lab}"), res.ratio(f"wds/{codec}/float/{lab}", f"orig/{lab}")
            if u.values and f.values:
                parts.append(f"{u.median:.1f}x (uint16) / {f.median:.1f}x (float) with {lab} core(s)")
        lim = res.ratio(f"wds/{codec}/uint16/1", f"limit/{codec}")
        both = res.ratio(f"wds/{codec}/uint16/{n}", f"wds/{codec}/uint16/1")
        if parts:
            out.append(f"Our loader, {CODEC_SHORT[codec]} shards: " + ", ".join(parts)
                       + " the original's samples/s per core"
                       + (f"; {lim.median:.0%} of the codec's read + decode limit on one core" if lim.values else "")
                       + (f"; {n} cores give {both.median:.2f}x the 1-core rate" if both.values and n > 1 else "")
                       + ".")
    for codec in codecs:
        st = res.ratio(f"wds/{codec}/uint16/1", f"stock/{codec}/1")
        pr = res.ratio(f"alt/{codec}/uint16/{n}", f"wds/{codec}/uint16/{n}")
        if st.values:
            out.append(f"Against a stock webdataset pipeline over the same {CODEC_SHORT[codec]} shards: "
                       f"{st.median:.1f}x per core" + (f"; reading threads instead of worker processes (the default "
                                                       f"on {n} cores): {pr.median:.2f}x" if pr.values and n > 1
                                                       else "") + ".")
    from bench.cases.peercases import peer_headline  # start-up time: the peers' modules only when they are measured

    return out + peer_headline(res, codecs, CODEC_SHORT)


def _input_lines(res: Results, codecs: tuple[str, ...]) -> list[str]:
    """Fewer bands, augmentation and the DALI loader."""
    out = []
    rgb = res.ratio("rgb/zstd/uint16/1", "wds/zstd/uint16/1")
    if rgb.values:
        out.append(f"An RGB input (3 bands) reads zstd shards at {rgb.median:.1f}x the samples/s of s1s2 (12 bands): "
                   "only the bands an input uses are decoded.")
    aug = res.ratio("aug/zstd/uint16/1", "wds/zstd/uint16/1")
    if aug.values:
        out.append(f"--augment (a random flip / 90-degree rotation per sample, drawn by the loader and applied "
                   f"where the batch becomes model input): the loader at {aug.median:.2f}x the samples/s without it.")
    aug_float = res.ratio("aug/zstd/float/1", "wds/zstd/float/1")
    if aug_float.values:
        out.append(f"With the symmetries applied on the CPU (no GPU to do it): {aug_float.median:.2f}x.")
    for codec in codecs:
        d = res.ratio(f"dali/{codec}/1", "orig/1")
        if d.values:
            out.append(f"DALI loader (CPU-only, uint16 batches: the CPU's part of a GPU pipeline), "
                       f"{CODEC_SHORT[codec]} shards: {d.median:.1f}x the original's samples/s per core (1 core).")
    return out


def _system_lines(res: Results, codecs: tuple[str, ...], n: int) -> list[str]:
    """Cores per GPU, bytes on disk, data stall in training, S3."""
    out = []
    gpu = res.stat("gpu/rate")
    need = [(c, res.stat(f"cores/{c}")) for c in codecs]
    if gpu.values and all(v.values for _, v in need):
        out.append(f"One GPU consuming {gpu.median:,.0f} samples/s ({res.extra.get('gpu', '')}) takes "
                   + ", ".join(f"{v.median:.1f} cores on {CODEC_SHORT[c]} shards" for c, v in need)
                   + " (plus a core for the training process).")
    b = res.ratio("bytes/shards/zstd", "bytes/geotiff/s1s2")
    rb = res.ratio("bytes/real/zstd/s1s2", "bytes/real/geotiff/s1s2")
    if b.values:
        text = f"zstd shards take {b.median:.2f}x the bytes of the GeoTIFFs on the bench data (mostly synthetic)"
        if rb.values:
            text += f", {rb.median:.2f}x on the real patches"
        out.append(text + ".")
    for key, who in (("train/ours", "our loader"), ("train/original", "the original's way")):
        s = stall(res, key)
        if s.values:
            out.append(f"{res.extra.get('train_model', 'Model')} training step on {res.extra.get('train_device', '?')} "
                       f"fed by {who}: data stall {s.median:.0%} (1 - model-alone / fed step time).")
    s3 = res.ratio(f"s3/ours/{n}", f"s3/orig/{n}")
    if s3.values:
        out.append(f"From S3 ({n} workers): our loader {s3.median:.1f}x the original's way reading GeoTIFF objects.")
    return out


def headline(res: Results, codecs: tuple[str, ...]) -> list[str]:
    """The ratios the README quotes (per core, medians of per-round ratios)."""
    n = usable_cpus()
    return _loader_lines(res, codecs, n) + _input_lines(res, codecs) + _system_lines(res, codecs, n)
