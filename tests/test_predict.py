"""`python -m train.predict`: georeferenced land-cover maps with the baseline's colours, from
GeoTIFFs never converted (the real reference patches) and from shards."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from segtools import write_seg_checkpoint

from sen12ms_common.vocab.dfc import DfcScheme
from sen12ms_common.vocab.igbp import DFC2020_COLOURS

pytestmark = pytest.mark.slow  # conversion and prediction runs in subprocesses

REPO = Path(__file__).resolve().parents[1]
REAL_PAIR = ("sen12mscr_ROIs1158_spring_s2_101_p30.tif", "sen12mscr_ROIs1158_spring_s1_101_p30.tif")


def _predict(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "train.predict", "--device", "cpu", *args], cwd=REPO,
                          capture_output=True, text=True)


def _hex(rgba) -> str:
    return "#%02x%02x%02x" % tuple(rgba[:3])


def test_maps_overlay_real_geotiffs_never_converted(real_dir: Path, tmp_path: Path) -> None:
    rasterio = pytest.importorskip("rasterio")
    data = tmp_path / "new"
    data.mkdir()
    for name in REAL_PAIR:
        shutil.copy(real_dir / name, data / name)
    ckpt = write_seg_checkpoint(tmp_path / "seg.pth", input_spec="s2hr+s2mr+s1", no_savanna=True)
    out = tmp_path / "maps"
    proc = _predict("--checkpoint", str(ckpt), "--data", str(data), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    pred = out / "sen12mscr_ROIs1158_spring_pred_101_p30.tif"
    with rasterio.open(data / REAL_PAIR[0]) as src, rasterio.open(pred) as ds:
        assert (ds.count, ds.dtypes[0]) == (1, "uint8")
        assert ds.crs == src.crs and ds.crs.to_epsg() == 32652
        assert ds.transform == src.transform and (ds.width, ds.height) == (src.width, src.height)
        values = ds.read(1)
        cmap = ds.colormap(1)
    scheme = DfcScheme(savanna=False)
    assert set(np.unique(values)) <= set(scheme.dfc_classes)  # DFC2020 values 1..10 without savanna (3)
    for value in scheme.dfc_classes:
        assert _hex(cmap[value]) == DFC2020_COLOURS[value - 1]
    assert _hex(cmap[1]) == "#009900" and _hex(cmap[10]) == "#1c0dff"
    page = out / "previews" / "preview_0000.png"
    assert page.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_s2_only_model_needs_no_s1_and_missing_input_is_one_line(real_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "new"
    data.mkdir()
    shutil.copy(real_dir / "sen12mscr_ROIs1158_spring_s2_15_p30.tif", data / "sen12mscr_ROIs1158_spring_s2_15_p30.tif")
    s2_only = write_seg_checkpoint(tmp_path / "s2.pth", input_spec="s2hr")
    ok = _predict("--checkpoint", str(s2_only), "--data", str(data), "--out", str(tmp_path / "a"), "--previews", "0")
    assert ok.returncode == 0, ok.stderr
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["sen12mscr_ROIs1158_spring_pred_15_p30.tif"]
    with_s1 = write_seg_checkpoint(tmp_path / "s1s2.pth", input_spec="s2hr+s1")
    bad = _predict("--checkpoint", str(with_s1), "--data", str(data), "--out", str(tmp_path / "b"))
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines() == [
        f"Error: {data / 'sen12mscr_ROIs1158_spring_s2_15_p30.tif'}: no s1 file beside it "
        "(the model's input needs s2, s1)"]
    assert not (tmp_path / "b").exists()  # checked before anything is written


def test_classification_checkpoint_and_two_sources_refused(tmp_path: Path, real_dir: Path) -> None:
    import torch

    from train.run.checkpoint import save_checkpoint
    from train.models.registry import build_model

    cls = tmp_path / "cls.pth"
    save_checkpoint(str(cls), epoch=0, arch="SmallCNN", model_state_dict=build_model("SmallCNN", 3, 10).state_dict(),
                    optimizer_state_dict={}, best_prec=0.0, extra={"config": {"model": "SmallCNN", "input": "rgb"}})
    proc = _predict("--checkpoint", str(cls), "--data", str(real_dir), "--out", str(tmp_path / "o"))
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"Error: {cls}: a classification checkpoint, not a segmentation one (use python -m train.evaluate for "
        "classifiers)"]
    both = _predict("--checkpoint", str(cls), "--data", str(real_dir), "--shards", str(tmp_path), "--out", "x")
    assert both.returncode == 2 and "either --shards" in both.stderr
    del torch


@pytest.fixture(scope="module")
def lc_shards(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from convert.sample.sen12ms import synthesize

    root = tmp_path_factory.mktemp("lcsample")
    tree = root / "tree"
    synthesize(tree, scenes=4, patches_per_scene=2, seed=11, progress=False)
    out = root / "shards"
    proc = subprocess.run([sys.executable, "-m", "convert", "shards", "--data", str(tree), "--out", str(out),
                           "--modalities", "s1,s2,lc", "--workers", "1", "--no-progress"],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return tree, out


def test_maps_from_shards_keep_the_source_georeference(lc_shards: tuple[Path, Path], tmp_path: Path) -> None:
    rasterio = pytest.importorskip("rasterio")
    from sen12ms_common.format.manifest import load_manifest
    from sen12ms_common.vocab.patches import parse_patch

    tree, shards = lc_shards
    split = max(("test", "val", "train"), key=load_manifest(str(shards)).samples)  # 3 patches at least
    ckpt = write_seg_checkpoint(tmp_path / "seg.pth", input_spec="s2hr+s2mr+s1", no_savanna=False)
    out = tmp_path / "maps"
    proc = _predict("--checkpoint", str(ckpt), "--shards", str(shards), "--split", split, "--out", str(out),
                    "--previews", "3", "--preview-rows", "2")
    assert proc.returncode == 0, proc.stderr
    maps = sorted(out.glob("*_pred_*.tif"))
    assert len(maps) == load_manifest(str(shards)).samples(split)
    for m in maps:
        pid = parse_patch(m.name.replace("_pred_", "_s2_"))
        with rasterio.open(tree / pid.relpath("s2")) as src, rasterio.open(m) as ds:
            assert ds.crs == src.crs and ds.transform == src.transform and ds.shape == src.shape
    assert sorted(p.name for p in (out / "previews").iterdir()) == ["preview_0000.png", "preview_0001.png"]
