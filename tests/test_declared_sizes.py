"""GeoTIFF headers are checked before a pixel is read (issue 29, items 8 and 11): a few-KB sparse
file declaring 8,000 / 20,000 / 100,000 pixels a side costs no memory and goes into report.json
as a bad input, as does a PNG named like a patch; `train.predict --data` refuses the same files
in one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

pytestmark = pytest.mark.slow  # conversions and predictions in subprocesses

REPO = Path(__file__).resolve().parents[1]
# Run a command and report the peak RSS of it and its children (KiB) on the last line of stderr.
PEAK = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(r.returncode)")


def sparse_tif(path: Path, side: int, count: int = 13, dtype: str = "uint16") -> Path:
    """A GeoTIFF that declares `side` x `side` pixels and holds none (tiles left unwritten)."""
    path.unlink(missing_ok=True)
    with rasterio.open(path, "w", driver="GTiff", width=side, height=side, count=count, dtype=dtype, tiled=True,
                       blockxsize=4096 if side >= 4096 else 256, blockysize=4096 if side >= 4096 else 256,
                       sparse_ok=True, crs="EPSG:32652", transform=Affine(10, 0, 300000, 0, -10, 4000000)):
        pass
    assert path.stat().st_size < 2 << 20
    return path


def png_as_tif(path: Path) -> Path:
    """A PNG file with the name and shape of an lc patch."""
    path.unlink(missing_ok=True)
    with rasterio.open(path, "w", driver="PNG", width=256, height=256, count=1, dtype="uint8") as ds:
        ds.write(np.full((1, 256, 256), 10, dtype=np.uint8))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return path


def run_peak(*args: str) -> tuple[subprocess.CompletedProcess, int]:
    proc = subprocess.run([sys.executable, "-c", PEAK, sys.executable, "-m", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    *lines, peak = proc.stderr.splitlines()
    proc.stderr = "\n".join(lines) + ("\n" if lines else "")
    return proc, int(peak)


def test_declared_sizes_and_formats_are_checked_before_reading(tmp_path: Path) -> None:
    from convert.sample.sen12ms import synthesize

    data = tmp_path / "sen12ms"
    ids = synthesize(data, scenes=1, patches_per_scene=6, seed=11, progress=False)
    s2 = [data / pid.relpath("s2") for pid in ids]
    for i, side in enumerate((8000, 20000, 100000)):
        sparse_tif(s2[i], side)
    lc = png_as_tif(data / ids[3].relpath("lc"))
    out = tmp_path / "out"
    proc, peak = run_peak("convert", "shards", "--data", str(data), "--out", str(out), "--workers", "1",
                          "--no-progress", "--max-rejected", "1")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert peak < 600 << 10, peak  # KiB: a read of the 8000-pixel file alone allocates 1.6 GB
    report = json.loads((out / "report.json").read_text())
    rejected = {r["path"]: r["reason"] for r in report["rejected"]}
    assert rejected == {
        str(s2[0]): f"{s2[0]}: size 8000 x 8000, expected 256 x 256",
        str(s2[1]): f"{s2[1]}: size 20000 x 20000, expected 256 x 256",
        str(s2[2]): f"{s2[2]}: size 100000 x 100000, expected 256 x 256",
        str(lc): f"no label: {lc}: a PNG file, not a GeoTIFF",
    }
    assert sum(report["converted"].values()) == 2


def test_predict_refuses_a_declared_size_in_one_line(tmp_path: Path, real_dir: Path) -> None:
    from segtools import write_seg_checkpoint

    ckpt = write_seg_checkpoint(tmp_path / "s2.pth", input_spec="s2hr")
    for side in (8000, 100000):
        data = tmp_path / f"in{side}"
        data.mkdir()
        tif = sparse_tif(data / "sen12mscr_ROIs1158_spring_s2_15_p30.tif", side)
        proc, peak = run_peak("train.predict", "--device", "cpu", "--checkpoint", str(ckpt), "--data", str(data),
                              "--out", str(tmp_path / f"out{side}"))
        assert proc.returncode == 1, proc.stderr
        assert proc.stderr.splitlines() == [
            f"Error: {tif}: {side} x {side} pixels, more than train.predict reads (at most 2048 pixels a side)"], \
            proc.stderr
        assert peak < 1200 << 10, peak  # KiB: torch alone is about 500 MB
        assert not (tmp_path / f"out{side}").exists()
