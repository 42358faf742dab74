"""The sample dataset: the real files' format, determinism, the broken triplet, hold-out scenes, learnability."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from convert.cli import cli
from convert.sample.sen12ms import synthesize
from convert.shards.scan import scan_tree
from sen12ms_common.vocab.igbp import probability_from_igbp, single_label, to_simple
from sen12ms_common.vocab.official import OFFICIAL_HOLDOUT, OFFICIAL_TEST_LIST
from sen12ms_common.vocab.patches import parse_patch, parse_scene

REAL = {"s1": "ROIs1158_spring_s1_1_p30.tif", "lc": "ROIs1158_spring_lc_1_p30.tif",
        "s2": "sen12mscr_ROIs1158_spring_s2_101_p30.tif"}
RAW_BYTES = {"s1": 2 * 4, "s2": 13 * 2, "lc": 4 * 1}  # bytes per pixel
PROFILE_KEYS = ("driver", "dtype", "count", "width", "height", "nodata", "tiled", "interleave",
                "blockxsize", "blockysize")
REPO = Path(__file__).resolve().parents[1]


def _structure(path: Path) -> dict:
    with rasterio.open(path) as ds:
        t = ds.transform
        return {
            **{k: ds.profile.get(k) for k in PROFILE_KEYS},
            "compression": ds.compression,
            "image_structure": ds.tags(ns="IMAGE_STRUCTURE"),
            "area_or_point": ds.tags().get("AREA_OR_POINT"),
            "pixel": (t.a, t.b, t.d, t.e),
            "epsg": ds.crs.to_epsg(),
        }


@pytest.mark.parametrize("mod", ["s1", "s2", "lc"])
def test_format_matches_the_real_files(sample_tree: Path, real_dir: Path, mod: str):
    real = _structure(real_dir / REAL[mod])
    files = sorted(sample_tree.glob(f"*/{mod}_*/*.tif"))
    assert len(files) == 48
    for path in files[::7]:
        ours = _structure(path)
        epsg = ours.pop("epsg")
        assert ours == {k: v for k, v in real.items() if k != "epsg"}, path
        assert 32601 <= epsg <= 32660 or 32701 <= epsg <= 32760
        # Uncompressed: the file holds every pixel's bytes plus a small header.
        raw = 256 * 256 * RAW_BYTES[mod]
        assert raw < os.path.getsize(path) < raw + 4096
    # The facts the comparison rests on, as the real files show them.
    assert real["pixel"] == (10.0, 0.0, 0.0, -10.0) and real["compression"] is None
    assert real["interleave"] == "pixel" and real["tiled"] is False
    assert real["dtype"] == {"s1": "float32", "s2": "uint16", "lc": "uint8"}[mod]
    assert real["count"] == {"s1": 2, "s2": 13, "lc": 4}[mod]


def test_values_are_plausible(sample_tree: Path):
    scan = scan_tree(str(sample_tree))
    assert scan.problems == [] and len(scan.triplets) == 48
    for t in scan.triplets[::5]:
        with rasterio.open(t.paths["s1"]) as ds:
            s1 = ds.read()
        with rasterio.open(t.paths["s2"]) as ds:
            s2 = ds.read()
        with rasterio.open(t.paths["lc"]) as ds:
            lc = ds.read()
        if not t.id.is_known_broken:
            assert -25 < float(s1[0].mean()) < 0 and -30 < float(s1[1].mean()) < -5
        assert 100 < float(s2.mean()) < 10000
        assert set(np.unique(lc[0])) <= set(range(1, 18))
        assert (lc[1:] > 0).all()
        # Siblings share their georeference, as in SEN12MS.
        with rasterio.open(t.paths["s1"]) as a, rasterio.open(t.paths["lc"]) as b:
            assert a.transform == b.transform and a.crs == b.crs


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_same_seed_gives_the_same_bytes(tmp_path: Path):
    a = synthesize(tmp_path / "a", scenes=3, patches_per_scene=2, seed=5, broken=True, progress=False)
    b = synthesize(tmp_path / "b", scenes=3, patches_per_scene=2, seed=5, broken=True, progress=False)
    assert a == b
    bytes_a, bytes_b = _tree_bytes(tmp_path / "a"), _tree_bytes(tmp_path / "b")
    # Three files per triplet, the hold-out list and the marker of synthetic data.
    assert len(bytes_a) == 3 * len(a) + 2 and bytes_a == bytes_b
    assert b"synthetic sample data" in bytes_a["SYNTHETIC_SAMPLE_DATA.txt"]
    synthesize(tmp_path / "c", scenes=3, patches_per_scene=2, seed=6, broken=True, progress=False)
    assert _tree_bytes(tmp_path / "c") != bytes_a


def test_broken_triplet_has_nan_in_s1_only(sample_tree: Path):
    broken = sample_tree / "ROIs1868_summer/s1_146/ROIs1868_summer_s1_146_p202.tif"
    with rasterio.open(broken) as ds:
        assert np.isnan(ds.read()).any()
    for path in sample_tree.glob("*/s1_*/*.tif"):
        if path != broken:
            with rasterio.open(path) as ds:
                assert not np.isnan(ds.read()).any(), path
    for mod in ("s2", "lc"):
        assert (sample_tree / f"ROIs1868_summer/{mod}_146/ROIs1868_summer_{mod}_146_p202.tif").exists()


def test_holdout_scenes_and_list(sample_tree: Path):
    official = OFFICIAL_HOLDOUT.read_bytes()
    assert (sample_tree / "SEN12MS_holdOutScenes.txt").read_bytes() == official
    holdout = {parse_scene(line) for line in official.decode().split()}
    s2 = [parse_patch(p.name) for p in sample_tree.glob("*/s2_*/*.tif")]
    scenes = {p.scene_id for p in s2}
    held = scenes & holdout
    assert held and scenes - holdout  # some hold-out scenes, some train scenes
    # Hold-out scenes use patch numbers of the official test list, so their names are real ones.
    test_list = set(OFFICIAL_TEST_LIST.read_text().split())
    assert all(p.filename() in test_list for p in s2 if p.scene_id in holdout)
    assert {p.season for p in s2} == {"ROIs1158_spring", "ROIs1868_summer", "ROIs1970_fall", "ROIs2017_winter"}


@pytest.mark.slow
def test_content_is_learnable_from_mean_spectra(sample_tree: Path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    scan = scan_tree(str(sample_tree))
    features, classes, groups = [], [], []
    for t in scan.triplets:
        with rasterio.open(t.paths["s2"]) as ds:
            features.append(np.log(ds.read().reshape(13, -1).mean(axis=1)))
        with rasterio.open(t.paths["lc"]) as ds:
            classes.append(int(single_label(to_simple(probability_from_igbp(ds.read(1))))))
        groups.append(t.id.scene_id.key)
    x, y, g = np.array(features), np.array(classes), np.array(groups)
    assert len(Counter(y)) >= 4
    correct = majority = 0
    # Whole scenes held out per fold: overlapping patches of one scene never leak into the test fold.
    for train, test in GroupKFold(n_splits=4).split(x, y, g):
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x[train], y[train])
        correct += int((model.predict(x[test]) == y[test]).sum())
        majority += int((y[test] == np.bincount(y[train]).argmax()).sum())
    accuracy, baseline = correct / len(y), majority / len(y)
    assert accuracy >= 0.7 and accuracy >= baseline + 0.4, (accuracy, baseline)


def test_synth_command(tmp_path: Path):
    result = CliRunner().invoke(cli, ["synth", "--out", str(tmp_path / "t"), "--scenes", "2",
                                      "--patches-per-scene", "1", "--seed", "1", "--broken"])
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith(f"wrote 3 triplets under {tmp_path / 't'}")
    assert (tmp_path / "t/ROIs1868_summer/s1_146/ROIs1868_summer_s1_146_p202.tif").exists()
