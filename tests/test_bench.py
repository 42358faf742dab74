"""`python -m bench` on a tiny dataset with one round: every row of the table, sane numbers; and
`bench.originals.geotiff` (the original's way) against the original's preprocessing written out."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from click.testing import CliRunner

from bench.__main__ import main
from bench.cases import mds
from bench.inputs.dataset import REAL_TRIPLETS, add_real_patches
from bench.originals.geotiff import GeoTiffDataset, original_loader
from sen12ms_common.errors import InputError
from sen12ms_common.vocab.bands import OFFICIAL_MEAN, OFFICIAL_STD, INPUT_SETS
from sen12ms_common.vocab.igbp import probability_from_igbp, to_simple
from sen12ms_common.vocab.patches import parse_patch

GEOTIFF_S2, GEOTIFF_S1, GEOTIFF_LC = 1_706_432, 525_172, 262_788  # bytes of an uncompressed SEN12MS patch


pytestmark = pytest.mark.slow  # runs the bench (conversions, loaders, training steps)

def parse_table(doc: str) -> list[dict[str, str]]:
    """The rows of the results table, the group carried down to every row."""
    part = doc.split("## Results", 1)[1]
    lines = [ln for ln in part.splitlines() if ln.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows, group = [], ""
    for ln in lines[1:]:
        cells = [c.strip() for c in ln.strip().strip("|").split("|")]
        row = dict(zip(header, cells))
        group = row["Group"].strip("*") or group
        row["Group"] = group
        rows.append(row)
    return rows


def number(text: str) -> float:
    return float(text.replace(",", ""))


@pytest.fixture(scope="module")
def bench_doc(real_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("bench")
    args = ["--data", str(tmp / "data"), "--scratch", str(tmp / "out"), "--out", str(tmp / "benchmarks.md"),
            "--scenes", "2", "--patches-per-scene", "3", "--subset", "6", "--repeats", "1", "--batch-size", "4",
            "--train-model", "SmallCNN", "--train-batch-size", "2", "--train-steps", "1", "--no-progress"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return tmp / "benchmarks.md"


def test_bench_table_has_every_row_with_sane_figures(bench_doc: Path):
    doc = bench_doc.read_text()
    rows = parse_table(doc)
    groups = [r["Group"] for r in rows]
    counts = {g: groups.count(g) for g in dict.fromkeys(groups)}
    # conversion: 3 codecs x (1 worker, all cores); loaders: the original's way x 2, per codec ours
    # (uint16, float) x 2 + uint16 unverified x 1 + the other mode (process / threads) x 2 + stock webdataset x 1 + DALI
    # x 2, ShardDataset via a DataLoader (0 and 1 workers) x 1, and the RGB and two --augment rows;
    # limits per codec + the memory-copy floor; cores per GPU: the GPU + 3 codecs;
    # bytes: 2 GeoTIFF + 3 shards + 1 real GeoTIFF + 3 real encoded; training: 3; S3: read-only + 2 x 2;
    # segmentation: the baseline's way and ours (image + mask) x (1 core, all cores); peers: litdata and MDS x
    # (zstd, uncompressed) + TorchGeo.
    assert counts == {"Conversion (convert shards)": 6, "Loader (train split, shuffled)": 2 + 3 * 12 + 3,
                      "Peer libraries (train split, shuffled, 1 core)": 5,
                      "Segmentation loader (train split, shuffled, image + mask)": 2 * 2,
                      "Limit (read + decode only)": 4, "Cores to feed one GPU": 4, "Bytes per sample on disk": 9,
                      "Training step": 3, "S3 (local SeaweedFS)": 5}, counts
    dali_missing = importlib.util.find_spec("nvidia.dali") is None
    peer_missing = {p: importlib.util.find_spec(m) is None for p, m in (("litdata", "litdata"), ("TorchGeo", "torchgeo"))}
    peer_missing["MosaicML"] = not (mds.env_dir() / "bin" / "python").is_file()  # its own environment
    for r in rows:
        median = r["Median"]
        if median.startswith("not available"):
            # Only what this machine lacks may be missing, and the row says so.
            assert (dali_missing and r["Measurement"].startswith("DALI")) or r["Group"].startswith("S3"), r
            continue
        if median.startswith("not installed"):  # a peer outside the .[bench] extra's reach here
            assert r["Group"].startswith("Peer") and peer_missing[r["Measurement"].split()[0]], r
            assert ("make mds-env" if r["Measurement"].startswith("MosaicML") else "pip install -e '.[bench]'") in median, r
            continue
        assert re.fullmatch(r"[0-9,]+(\.[0-9]+)?", median), r
        assert number(median) > 0, r
        if r["Unit"] == "samples/s" and r["Per core"]:
            assert number(r["Per core"]) == pytest.approx(number(median) / int(r["Cores"]), rel=0.02, abs=0.02), r

    by_name = {(r["Group"], r["Measurement"], r["Cores"]): r for r in rows}
    bytes_rows = {r["Measurement"]: number(r["Median"]) for r in rows if r["Group"] == "Bytes per sample on disk"}
    # The tree is uncompressed GeoTIFF as distributed (real and generated patches alike).
    assert bytes_rows["GeoTIFF s1 + s2 (what s1s2 training reads)"] == round((GEOTIFF_S2 + GEOTIFF_S1) / 1e6, 2)
    assert bytes_rows["GeoTIFF s1 + s2 + lc (the triplet)"] == round((GEOTIFF_S2 + GEOTIFF_S1 + GEOTIFF_LC) / 1e6, 2)
    zstd = bytes_rows["shards, zstd 3, byte-shuffled (s1 + s2, label, json, tar headers)"]
    lz4 = bytes_rows["shards, lz4 blocks (s1 + s2, label, json, tar headers)"]
    raw = bytes_rows["shards, uncompressed (s1 + s2, label, json, tar headers)"]
    assert zstd < lz4 < raw and 1.96 < raw < 2.0  # 13 x 2 + 2 x 2 bytes x 256 x 256 + label, json, headers
    real_zstd = [r for r in rows if r["Measurement"].startswith("real patches only: zstd")][0]
    s2_ratio = float(re.search(r"S2 ratio ([0-9.]+)", real_zstd["Compared (per round)"]).group(1))
    assert 2.0 < s2_ratio < 4.0  # real Sentinel-2 compresses about 2.6x with the shuffle

    loader_rows = [r for r in rows if r["Group"].startswith("Loader")]
    compared = {"ours, ": r"[0-9.]+x original; [0-9]+% of limit", "DALI": r"[0-9.]+x original; [0-9]+% of limit",
                "ours in ": r"[0-9.]+x the default \((threads|[0-9]+ worker processes)\)", "ours, zstd 3, RGB": r"[0-9.]+x the s1s2 input",
                "ours, zstd 3, uint16 batches, --augment": r"[0-9.]+x without --augment",
                "ours, zstd 3, float batches, --augment": r"[0-9.]+x without --augment",
                "stock webdataset": r"[0-9.]+x original.*; [0-9.]+x for ours",
                "ShardDataset via DataLoader": r"[0-9.]+x the native loader \(goal >= 0.9x\)"}
    for r in loader_rows:
        start = max((k for k in compared if r["Measurement"].startswith(k)), key=len, default=None)
        if start and r["Median"][0].isdigit():
            assert re.search(compared[start], r["Compared (per round)"]), r
    peers = [r for r in rows if r["Group"].startswith("Peer") and r["Median"][0].isdigit()]
    assert len(peers) == sum(2 if p != "TorchGeo" else 1 for p, gone in peer_missing.items() if not gone)
    assert all(re.fullmatch(r"[0-9.]+x original; [0-9.]+x for ours \(.*, uint16, 1 core\)", r["Compared (per round)"])
               for r in peers), peers
    if not peer_missing["litdata"]:  # the best peer per codec, in the headline
        assert re.search(r"Against the peer libraries on zstd data, .*: ours [0-9.]+x the best of them", doc)
    seg = [r for r in rows if r["Group"].startswith("Segmentation loader") and r["Measurement"].startswith("ours")]
    assert len(seg) == 2 and all(re.fullmatch(r"[0-9.]+x baseline; [0-9.]+x the classification batches",
                                              r["Compared (per round)"]) for r in seg), seg
    cores = [number(r["Median"]) for r in rows if r["Group"] == "Cores to feed one GPU" and r["Unit"] == "cores"]
    assert len(cores) == 3 and all(c > 0 for c in cores)
    assert "2600" in by_name[("Cores to feed one GPU", next(r["Measurement"] for r in rows
                                                               if r["Group"] == "Cores to feed one GPU"), "-")][
        "Measurement"] or torch.cuda.is_available()
    stall = by_name[("Training step", "fed by our loader (zstd shards, 1 worker)", "-")]
    assert re.fullmatch(r"-?[0-9]+% data stall \(1 of 1 rounds steady\)|no steady round .*",
                        stall["Compared (per round)"]), stall
    assert "## Headline" in doc and "Our loader, zstd shards:" in doc and "Load average" in doc
    assert "nvidia-dali-cuda130" in doc and "CPU:" in doc and "memory" in doc
    png = bench_doc.with_name("benchmarks-loaders.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- the original's way ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real_tree(real_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    tree = tmp_path_factory.mktemp("geotiff") / "sen12ms"
    add_real_patches(tree, real_dir, seed=3)
    labels = {}
    for key in REAL_TRIPLETS:
        with rasterio.open(tree / parse_patch(key).relpath("lc")) as ds:
            labels[key + ".tif"] = probability_from_igbp(ds.read(1))
    return tree, labels


def expected_input(tree: Path, key: str, input_spec: str, normalise: bool) -> np.ndarray:
    """The original's preprocessing, written out for one sample."""
    pid = parse_patch(key)
    bands = INPUT_SETS[input_spec]
    s2_names = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12")
    parts = []
    s2_bands = [b for b in bands if b in s2_names]
    if s2_bands:
        with rasterio.open(tree / pid.relpath("s2")) as ds:
            s2 = ds.read([s2_names.index(b) + 1 for b in s2_bands]).astype(np.float32)
        parts.append(s2 if normalise else np.clip(s2, 0, 10000) / 10000)
    if "VV" in bands:
        with rasterio.open(tree / pid.relpath("s1")) as ds:
            s1 = np.clip(np.nan_to_num(ds.read().astype(np.float32)), -25, 0)
        parts.append(s1 if normalise else s1 / 25 + 1)
    x = np.concatenate(parts).astype(np.float32)
    if normalise:
        mean = np.array([OFFICIAL_MEAN[b] for b in bands], dtype=np.float32)[:, None, None]
        std = np.array([OFFICIAL_STD[b] for b in bands], dtype=np.float32)[:, None, None]
        x = (x - mean) / std
    return x


@pytest.mark.parametrize("input_spec", ["s1s2", "rgb", "s1", "rgbs1"])
@pytest.mark.parametrize("normalise", [True, False])
def test_geotiff_dataset_is_the_originals_preprocessing(real_tree, input_spec, normalise):
    tree, labels = real_tree
    ds = GeoTiffDataset(str(tree), sorted(labels), labels, input_spec=input_spec, normalise=normalise)
    assert [p.filename() for p in ds.ids] == sorted(labels)
    for i in range(len(ds)):
        item = ds[i]
        key = item["id"][: -len(".tif")]
        want = expected_input(tree, key, input_spec, normalise)
        assert item["image"].dtype == torch.float32 and item["image"].shape == want.shape
        np.testing.assert_allclose(item["image"].numpy(), want, rtol=1e-6, atol=1e-6)
    # The real S1 of spring 1 p30 goes below -25 dB: the clip is exercised.
    with rasterio.open(tree / parse_patch("ROIs1158_spring_s2_1_p30").relpath("s1")) as s1:
        assert s1.read().min() < -25


def test_geotiff_dataset_labels_and_loader(real_tree):
    tree, labels = real_tree
    names = sorted(labels) + ["ROIs1868_summer_s2_146_p202.tif"]  # the known broken triplet is dropped
    with pytest.raises(InputError, match="ROIs1868_summer_s2_146_p203.tif: no label"):
        GeoTiffDataset(str(tree), names[:1] + ["ROIs1868_summer_s2_146_p203.tif"], labels)
    multi = GeoTiffDataset(str(tree), names, labels, label_type="multi_label", threshold=0.1)
    single = GeoTiffDataset(str(tree), names, labels, label_type="single_label", igbp="full")
    assert len(multi) == len(single) == len(labels)
    for i in range(len(multi)):
        name = multi.ids[i].filename()
        simple = to_simple(labels[name])
        assert multi[i]["label"].tolist() == (simple >= 0.1).astype(np.float32).tolist()
        hot = single[i]["label"]
        assert hot.dtype == np.float32 and hot.sum() == 1 and int(np.argmax(hot)) == int(np.argmax(labels[name]))
    # The real lc patch: IGBP classes 4, 5, 8, 9 -> simplified Forest (1) and Savanna (3) above 0.1.
    i = [p.key for p in multi.ids].index("ROIs1158_spring_s2_1_p30")
    assert np.flatnonzero(multi[i]["label"]).tolist() == [0, 2]
    batch = next(iter(original_loader(multi, batch_size=2, workers=0, seed=1)))
    assert batch["image"].shape == (2, 12, 256, 256) and batch["image"].dtype == torch.float32
    assert batch["label"].shape == (2, 10) and len(batch["id"]) == 2
