"""`train.predict --data` on awkward folders and files (issue 29, items 7 and 10): patches that
share a file name in different folders each get their map (the relative path is kept), and a
GeoTIFF too small for the models is refused in one line before anything is written."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from segtools import write_seg_checkpoint

pytestmark = pytest.mark.slow  # predictions in subprocesses

REPO = Path(__file__).resolve().parents[1]
S2 = "sen12mscr_ROIs1158_spring_s2_15_p30.tif"


def _predict(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "train.predict", "--device", "cpu", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=600)


def test_same_file_name_in_two_folders_gives_two_maps(real_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "new"
    for region in ("region1", "region2"):
        (data / region / "s2").mkdir(parents=True)
        shutil.copy(real_dir / S2, data / region / "s2" / "patch_001.tif")
    with rasterio.open(data / "region2" / "s2" / "patch_001.tif", "r+") as ds:  # another scene
        ds.write(np.full((13, ds.height, ds.width), 500, dtype=np.uint16))
    ckpt = write_seg_checkpoint(tmp_path / "s2.pth", input_spec="s2hr")
    out = tmp_path / "maps"
    proc = _predict("--checkpoint", str(ckpt), "--data", str(data), "--out", str(out), "--previews", "0")
    assert proc.returncode == 0, proc.stderr
    maps = sorted(str(p.relative_to(out)) for p in out.rglob("*.tif"))
    assert maps == ["region1/s2/patch_001_pred.tif", "region2/s2/patch_001_pred.tif"]
    assert f"wrote 2 maps to {out}" in proc.stdout
    with rasterio.open(real_dir / S2) as src, rasterio.open(out / maps[0]) as a, rasterio.open(out / maps[1]) as b:
        assert a.crs == b.crs == src.crs and a.transform == b.transform == src.transform


@pytest.mark.parametrize("size", [(1, 1), (400000, 1), (16, 16)])
def test_too_small_a_geotiff_is_one_line(size: tuple[int, int], tmp_path: Path) -> None:
    width, height = size
    data = tmp_path / "new"
    data.mkdir()
    tif = data / S2
    with rasterio.open(tif, "w", driver="GTiff", width=width, height=height, count=13, dtype="uint16",
                       crs="EPSG:32652", transform=Affine(10, 0, 300000, 0, -10, 4000000)) as ds:
        ds.write(np.full((13, height, width), 1000, dtype=np.uint16))
    ckpt = write_seg_checkpoint(tmp_path / "s2.pth", input_spec="s2hr")
    proc = _predict("--checkpoint", str(ckpt), "--data", str(data), "--out", str(tmp_path / "o"))
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.splitlines() == [
        f"Error: {tif}: {width} x {height} pixels, fewer than the models take (at least 32 pixels a side)"]
    assert not (tmp_path / "o").exists()
