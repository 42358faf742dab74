"""From `Results` to the rows of the benchmark table, one function per group of rows."""

from __future__ import annotations

from bench.cases import peercases
from bench.cases.frontdoor import front_door_rows
from bench.measure.results import Results, Row, fmt_ratio
from bench.measure.timing import Stat
from sen12ms_common.cpus import usable_cpus

CODEC_NAMES = {"zstd": "zstd 3, byte-shuffled", "lz4": "lz4 blocks", "none": "uncompressed"}
OUTPUT_NAMES = {"uint16": "uint16 batches", "float": "normalised float batches",
                "uint16-noverify": "uint16 batches, --no-verify"}
MB = 1e6
STEADY = 0.2  # a round counts for the stall when its model-alone steps before and after differ less


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


def stall(res: Results, key: str) -> Stat:
    """1 - synthetic / fed, per steady round."""
    synth, fed = res.values.get("train/synthetic", []), res.values.get(key, [])
    out = []
    for r in steady_rounds(res):
        if r < len(synth) and r < len(fed) and synth[r] is not None and fed[r]:
            out.append(1.0 - synth[r] / fed[r])
    return Stat(out)


def _stall_text(res: Results, key: str) -> str:
    s = stall(res, key)
    rounds = len([v for v in res.values.get("train/synthetic", []) if v is not None])
    if not s.values:
        return "no steady round (the load changed under every round): no stall figure" if rounds else ""
    return fmt_ratio(s, "data stall", percent=True) + f" ({len(s.values)} of {rounds} rounds steady)"


def _core_labels() -> list[str]:
    n = usable_cpus()
    return ["1"] if n == 1 else ["1", str(n)]


def conversion_rows(res: Results, codecs: tuple[str, ...]) -> list[Row]:
    rows = []
    for codec in codecs:
        for lab in _core_labels():
            key = f"conv/{codec}/{lab}"
            comp = fmt_ratio(res.ratio(key, f"conv/{codec}/1"), "the 1-worker rate") if lab != "1" else ""
            rows.append(_row(res, "Conversion (convert shards)", f"{CODEC_NAMES[codec]}, --workers {lab}",
                             lab, key, "samples/s", per_core=int(lab), compared=comp))
    return rows


_LOADERS = "Loader (train split, shuffled)"


def _our_loader_rows(res: Results, codec: str) -> list[Row]:
    """Our webdataset loader on one codec: threads and worker processes, each output."""
    rows = []
    for lab in _core_labels():
        for output in ("uint16", "float", "uint16-noverify"):
            key = f"wds/{codec}/{output}/{lab}"
            if output == "uint16-noverify" and lab != "1":
                continue
            comp = against_original_and_limit(res, key, codec, lab)
            if lab != "1" and output == "uint16":
                comp += "; " + fmt_ratio(res.ratio(key, f"wds/{codec}/uint16/1"), "the 1-core rate")
            rows.append(_row(res, _LOADERS, f"ours, {CODEC_NAMES[codec]}, {OUTPUT_NAMES[output]}", lab, key,
                             "samples/s", per_core=int(lab), compared=comp))
        key = f"alt/{codec}/uint16/{lab}"
        how, default = (("1 worker process", "threads") if lab == "1" else
                        (f"{lab} reading threads (--workers 0)", f"{lab} worker processes"))
        rows.append(_row(res, _LOADERS, f"ours in {how}, {CODEC_NAMES[codec]}, uint16 batches", lab, key, "samples/s",
                         per_core=int(lab), compared=fmt_ratio(res.ratio(key, f"wds/{codec}/uint16/{lab}"),
                                                               f"the default ({default})")))
    if codec == "zstd":
        rows.append(_row(res, _LOADERS, "ours, zstd 3, RGB input (3 bands), uint16 batches", "1", "rgb/zstd/uint16/1",
                         "samples/s", per_core=1,
                         compared=fmt_ratio(res.ratio("rgb/zstd/uint16/1", "wds/zstd/uint16/1"), "the s1s2 input")))
        rows.append(_row(res, _LOADERS, "ours, zstd 3, uint16 batches, --augment (flips, 90-degree rotations)", "1",
                         "aug/zstd/uint16/1", "samples/s", per_core=1,
                         compared=fmt_ratio(res.ratio("aug/zstd/uint16/1", "wds/zstd/uint16/1"), "without --augment")))
        rows.append(_row(res, _LOADERS, "ours, zstd 3, float batches, --augment (symmetries applied as the CPU converts)",
                         "1", "aug/zstd/float/1", "samples/s", per_core=1,
                         compared=fmt_ratio(res.ratio("aug/zstd/float/1", "wds/zstd/float/1"), "without --augment")))
    return rows


def loader_rows(res: Results, codecs: tuple[str, ...]) -> list[Row]:
    rows = [_row(res, _LOADERS, "original's way: rasterio per sample, float, normalise, DataLoader", lab,
                 f"orig/{lab}", "samples/s", per_core=int(lab), compared="reference") for lab in _core_labels()]
    for codec in codecs:
        rows += _our_loader_rows(res, codec)
        rows += front_door_rows(res, codec, CODEC_NAMES[codec], lambda *a, **k: _row(res, *a, **k))
        key = f"stock/{codec}/1"
        rows.append(_row(res, _LOADERS, f"stock webdataset pipeline, {CODEC_NAMES[codec]}: FORMAT.md decode, .batched",
                         "1", key, "samples/s", per_core=1,
                         compared="; ".join(x for x in (
                             fmt_ratio(res.ratio(key, "orig/1"), "original"),
                             fmt_ratio(res.ratio(f"wds/{codec}/uint16/1", key), "for ours (uint16, 1 core)")) if x)))
        for lab in _core_labels():
            key = f"dali/{codec}/{lab}"
            rows.append(_row(res, _LOADERS, f"DALI CPU-only, {CODEC_NAMES[codec]}, uint16 batches", lab,
                             key, "samples/s", per_core=int(lab),
                             compared=against_original_and_limit(res, key, codec, lab)))
    return rows


def peer_rows(res: Results, codecs: tuple[str, ...]) -> list[Row]:
    """litdata, MosaicML streaming and TorchGeo on the same arrays, one core, each against ours."""
    return peercases.peer_rows(res, codecs, "Peer libraries (train split, shuffled, 1 core)", CODEC_NAMES,
                               lambda *a, **k: _row(res, *a, **k))


def segmentation_rows(res: Results, codecs: tuple[str, ...]) -> list[Row]:
    """Image + mask batches: the DFC2020 baseline's way and ours (zstd shards holding lc)."""
    if "zstd" not in codecs:
        return []
    g = "Segmentation loader (train split, shuffled, image + mask)"
    rows = []
    for lab in _core_labels():
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


def limit_rows(res: Results, codecs: tuple[str, ...]) -> list[Row]:
    g = "Limit (read + decode only)"
    rows = [_row(res, g, f"{CODEC_NAMES[codec]}: shard bytes from the page cache, the input's bands decoded "
                 "into a batch", "1", f"limit/{codec}", "samples/s", per_core=1,
                 compared=fmt_ratio(res.ratio(f"limit/{codec}", "orig/1"), "original")) for codec in codecs]
    if "none" in codecs:
        rows.append(_row(res, g, "memory-copy floor: uncompressed shard bytes read, every used pixel copied into a "
                         "batch", "1", "floor/none", "samples/s", per_core=1,
                         compared=fmt_ratio(res.ratio("floor/none", "orig/1"), "original")))
    return rows


def gpu_rows(res: Results, codecs: tuple[str, ...]) -> list[Row]:
    """What one GPU needs; puts the derived `cores/<codec>` figures into `res`."""
    g = "Cores to feed one GPU"
    gpu = res.stat("gpu/rate")
    rows = [Row(g, f"{res.extra.get('train_model', 'model')} alone: {res.extra.get('gpu', 'no figure')}", "-",
                gpu if gpu.values else None, "samples/s", None, "reference", "gpu/rate",
                _status(res, "gpu/rate") if not gpu.values else "")]
    for codec in codecs:
        key = f"cores/{codec}"
        if gpu.values:
            for r, v in enumerate(res.values.get(f"wds/{codec}/uint16/1", [])):
                if v:
                    res.put(key, r, gpu.median / v)
        rows.append(_row(res, g, f"cores of our loader ({CODEC_NAMES[codec]}, uint16, per-core rate) it takes", "-",
                         key, "cores"))
    return rows


def _real_bytes_rows(res: Results, codecs: tuple[str, ...], g: str) -> list[Row]:
    """Bytes of the real reference patches; puts the derived s1s2 sums into `res`."""
    if not res.has("bytes/real/geotiff/s2"):
        return [Row(g, "real patches only", "-", None, "MB/sample", status=_status(res, "bytes/real"))]
    res.put("bytes/real/geotiff/s1s2", 0, res.stat("bytes/real/geotiff/s2").median
            + res.stat("bytes/real/geotiff/s1").median)
    n2, n1 = int(res.stat("bytes/real/count/s2").median), int(res.stat("bytes/real/count/s1").median)
    rows = [_row(res, g, f"real patches only ({n2} S2, {n1} S1): GeoTIFF s1 + s2", "-",
                 "bytes/real/geotiff/s1s2", "MB/sample", scale=1 / MB, compared="reference")]
    for codec in codecs:
        key = f"bytes/real/{codec}/s1s2"
        res.put(key, 0, res.stat(f"bytes/real/{codec}/s2").median + res.stat(f"bytes/real/{codec}/s1").median)
        s2_ratio = res.ratio("bytes/real/geotiff/s2", f"bytes/real/{codec}/s2")
        rows.append(_row(res, g, f"real patches only: {CODEC_NAMES[codec]} arrays (s1 + s2)", "-", key,
                         "MB/sample", scale=1 / MB,
                         compared=fmt_ratio(res.ratio(key, "bytes/real/geotiff/s1s2"), "GeoTIFF s1 + s2")
                         + f"; S2 ratio {s2_ratio.median:.2f}"))
    return rows


def bytes_rows(res: Results, codecs: tuple[str, ...]) -> list[Row]:
    g = "Bytes per sample on disk"
    rows = [_row(res, g, "GeoTIFF s1 + s2 (what s1s2 training reads)", "-", "bytes/geotiff/s1s2", "MB/sample",
                 scale=1 / MB, compared="reference"),
            _row(res, g, "GeoTIFF s1 + s2 + lc (the triplet)", "-", "bytes/geotiff/s1s2lc", "MB/sample",
                 scale=1 / MB, compared=fmt_ratio(res.ratio("bytes/geotiff/s1s2lc", "bytes/geotiff/s1s2"),
                                                  "GeoTIFF s1 + s2"))]
    for codec in codecs:
        key = f"bytes/shards/{codec}"
        rows.append(_row(res, g, f"shards, {CODEC_NAMES[codec]} (s1 + s2, label, json, tar headers)", "-", key,
                         "MB/sample", scale=1 / MB,
                         compared=fmt_ratio(res.ratio(key, "bytes/geotiff/s1s2"), "GeoTIFF s1 + s2")))
    return rows + _real_bytes_rows(res, codecs, g)


def training_rows(res: Results) -> list[Row]:
    g = "Training step"
    device = str(res.extra.get("train_device", "the device"))
    codec = str(res.extra.get("train_codec", "zstd"))
    return [
        _row(res, g, f"model alone: synthetic batch held in memory ({device}), before and after the fed steps", "-",
             "train/synthetic", "s/step", compared="reference"),
        _row(res, g, f"fed by our loader ({codec} shards, 1 worker)", "-", "train/ours", "s/step",
             compared=_stall_text(res, "train/ours")),
        _row(res, g, "fed by the original's way (1 worker)", "-", "train/original", "s/step",
             compared=_stall_text(res, "train/original")),
    ]


def s3_rows(res: Results) -> list[Row]:
    g = "S3 (local SeaweedFS)"
    rows = [_row(res, g, "shard objects streamed, nothing decoded (zstd)", "-", "s3/read", "samples/s")]
    for lab in _core_labels():
        rows.append(_row(res, g, f"original's way: one GeoTIFF object per modality and sample, {lab} worker(s)",
                         lab, f"s3/orig/{lab}", "samples/s", compared="reference"))
        rows.append(_row(res, g, f"ours: zstd shards streamed, normalised float batches, {lab} worker(s)", lab,
                         f"s3/ours/{lab}", "samples/s",
                         compared=fmt_ratio(res.ratio(f"s3/ours/{lab}", f"s3/orig/{lab}"), "original from S3")))
    return rows


def build_rows(res: Results, codecs: tuple[str, ...]) -> list[Row]:
    """Every row of the table, in its order (some add derived figures to `res` for the headline)."""
    return (conversion_rows(res, codecs) + loader_rows(res, codecs) + peer_rows(res, codecs)
            + segmentation_rows(res, codecs)
            + limit_rows(res, codecs) + gpu_rows(res, codecs)
            + bytes_rows(res, codecs) + training_rows(res) + s3_rows(res))
