"""The sample dataset: a small SEN12MS tree that tools cannot tell from the real one by format."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sen12ms_common.progress import Counter, ProgressOptions, as_options
from sen12ms_common.vocab.official import HOLDOUT_NAME, OFFICIAL_HOLDOUT, OFFICIAL_TEST_LIST
from sen12ms_common.vocab.patches import SEASONS, PatchId, parse_patch, parse_scene
from sen12ms_common.vocab.synthetic import MARKER_NAME, MARKER_TEXT

GRID_COLS = 28  # patches per scene row; patch n sits at ((n-1) // 28, (n-1) % 28) * 128 px
STRIDE = 128
CELL = 50  # MODIS 500 m land cover resampled to 10 m: 50 px cells
SIZE = 256
BROKEN = "ROIs1868_summer_s1_146_p202"

# Hold-out scenes of the official list (they hold real patch numbers in the official test list),
# and scenes of the real dataset outside it (from the reference patches: spring 1 and 101,
# summer 146, the scene of the broken triplet).
KNOWN_TRAIN_SCENES = {"ROIs1158_spring": (1, 101), "ROIs1868_summer": (146,), "ROIs1970_fall": (), "ROIs2017_winter": ()}

# Patch counts of the single labels over the whole dataset (SPEC.md): the prior for a scene's classes.
_CLASS_PRIOR = np.array([3847, 3836, 14, 7243, 5129, 312, 12251, 13517, 28377, 29441, 1257,
                         31836, 20261, 1911, 0, 9333, 12097], dtype=np.float64) + 50.0

# Top-of-atmosphere reflectance x 10000 of archetypes, bands B1..B12 in file order.
_ARCHETYPES = {
    "forest":   (1250, 950, 800, 550, 1000, 2300, 2800, 2700, 3000, 900, 15, 1500, 700),
    "shrub":    (1350, 1100, 1050, 1000, 1400, 1900, 2100, 2100, 2300, 700, 12, 2400, 1700),
    "savanna":  (1300, 1050, 1000, 900, 1350, 2000, 2300, 2300, 2500, 750, 12, 2300, 1500),
    "grass":    (1300, 1050, 1050, 850, 1350, 2400, 2800, 2800, 3000, 800, 13, 2200, 1300),
    "wetland":  (1300, 1000, 900, 700, 900, 1300, 1500, 1500, 1600, 500, 10, 900, 500),
    "crop":     (1350, 1100, 1100, 1000, 1400, 2500, 3000, 3100, 3300, 850, 14, 2400, 1500),
    "urban":    (1500, 1350, 1350, 1400, 1600, 1800, 1900, 2000, 2050, 600, 15, 2300, 2000),
    "snow":     (7000, 7200, 7000, 6800, 6700, 6500, 6300, 6200, 6000, 2500, 60, 1200, 900),
    "barren":   (1500, 1400, 1600, 1900, 2200, 2400, 2500, 2600, 2700, 900, 15, 3500, 2800),
    "water":    (1200, 900, 700, 450, 400, 350, 330, 300, 280, 100, 8, 150, 100),
}
# Sentinel-1 sigma0 (VV, VH) in dB of the same archetypes.
_BACKSCATTER = {
    "forest": (-7.5, -13.5), "shrub": (-10.0, -17.0), "savanna": (-9.5, -16.0), "grass": (-11.0, -18.0),
    "wetland": (-9.0, -17.0), "crop": (-10.5, -17.5), "urban": (-4.0, -11.0), "snow": (-12.0, -20.0),
    "barren": (-15.0, -24.0), "water": (-21.0, -28.0),
}
_ARCHETYPE_OF = ("forest",) * 5 + ("shrub", "shrub", "savanna", "savanna", "grass", "wetland", "crop",
                                   "urban", "crop", "snow", "barren", "water")
# MODIS LCCS layers (land cover, land use, surface hydrology) of each IGBP class.
_LCCS = np.array([
    (11, 10, 10), (12, 10, 10), (13, 10, 10), (14, 10, 10), (15, 10, 10), (41, 40, 40), (43, 40, 40),
    (21, 20, 20), (22, 20, 20), (31, 30, 30), (31, 30, 50), (31, 36, 30), (1, 9, 1), (31, 25, 30),
    (2, 2, 2), (1, 1, 1), (3, 3, 3)], dtype=np.uint8)


def _spectra() -> np.ndarray:
    """(18, 13) class-typical spectra, row k for IGBP class k (row 0 unused)."""
    out = np.zeros((18, 13), dtype=np.float64)
    bands = np.arange(13)
    for k in range(1, 18):
        base = np.array(_ARCHETYPES[_ARCHETYPE_OF[k - 1]], dtype=np.float64)
        # Members of one archetype differ a little, so that the full scheme is learnable too.
        out[k] = base * (1.0 + 0.12 * np.sin(1.7 * k + 0.9 * bands))
    return out


SPECTRA = _spectra()
BACKSCATTER = np.array([(0.0, 0.0)] + [_BACKSCATTER[a] for a in _ARCHETYPE_OF], dtype=np.float64)


@dataclass(frozen=True)
class SceneSpec:
    season: str
    scene: int
    patches: tuple[int, ...]
    epsg: int
    origin: tuple[float, float]  # UTM easting, northing of the scene's top-left corner
    holdout: bool


def _read_holdout() -> list:
    return [parse_scene(line) for line in OFFICIAL_HOLDOUT.read_text().split() if line.strip()]


def _real_test_patches() -> dict:
    out: dict = {}
    if OFFICIAL_TEST_LIST.exists():
        for line in OFFICIAL_TEST_LIST.read_text().split():
            pid = parse_patch(line)
            out.setdefault((pid.season, pid.scene), []).append(pid.patch)
    return out


def plan_scenes(scenes: int, patches_per_scene: int, seed: int, broken: bool) -> list[SceneSpec]:
    """Choose scenes (about a quarter of them official hold-out scenes) and their patches."""
    rng = np.random.default_rng([seed, 1])
    holdout = _read_holdout()
    test_patches = _real_test_patches()
    n_holdout = max(1, round(scenes * 0.25)) if scenes >= 2 else 0
    chosen: list[tuple[str, int, bool]] = []
    for i in rng.permutation(len(holdout))[:n_holdout]:
        chosen.append((holdout[i].season, holdout[i].scene, True))
    taken = {(s.season, s.scene) for s in holdout}
    season_i = 0
    while len(chosen) < scenes:
        season = SEASONS[season_i % 4]
        season_i += 1
        known = [n for n in KNOWN_TRAIN_SCENES[season] if (season, n) not in {(c[0], c[1]) for c in chosen}]
        number = known[0] if known else int(rng.integers(1, 150))
        if (season, number) in taken:
            continue
        taken.add((season, number))
        chosen.append((season, number, False))
    if broken and ("ROIs1868_summer", 146, False) not in chosen:
        chosen.append(("ROIs1868_summer", 146, False))
    specs = []
    for season, number, is_holdout in sorted(chosen):
        srng = np.random.default_rng([seed, 2, SEASONS.index(season), number])
        pool = sorted(test_patches.get((season, number), [])) or list(range(1, 841))
        k = min(patches_per_scene, len(pool))
        patches = sorted(int(p) for p in srng.choice(pool, size=k, replace=False))
        if broken and (season, number) == ("ROIs1868_summer", 146) and 202 not in patches:
            patches = sorted(patches[1:] + [202]) if patches else [202]
        epsg, origin = random_georeference(srng)
        specs.append(SceneSpec(season, number, tuple(patches), epsg, origin, is_holdout))
    return specs


def random_georeference(rng: np.random.Generator) -> tuple[int, tuple[float, float]]:
    """A random place on land-ish latitudes: its UTM zone's EPSG code and a top-left corner."""
    lon = float(rng.uniform(-120, 140))
    lat = float(rng.uniform(-40, 60))
    zone = int((lon + 180) // 6) + 1
    epsg = (32600 if lat >= 0 else 32700) + zone
    easting = float(rng.uniform(300000, 600000))
    northing = float(rng.uniform(1e6, 6e6)) if lat >= 0 else float(rng.uniform(4e6, 9e6))
    return epsg, (easting, northing)


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], coarse: int = 6) -> np.ndarray:
    """A smooth random field: bilinear upsampling of a coarse random grid."""
    gh, gw = shape[0] // coarse + 2, shape[1] // coarse + 2
    grid = rng.standard_normal((gh, gw))
    ys = np.linspace(0, gh - 1.001, shape[0])
    xs = np.linspace(0, gw - 1.001, shape[1])
    y0, x0 = ys.astype(int), xs.astype(int)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    a = grid[y0][:, x0]
    b = grid[y0][:, x0 + 1]
    c = grid[y0 + 1][:, x0]
    d = grid[y0 + 1][:, x0 + 1]
    return a * (1 - fy) * (1 - fx) + b * (1 - fy) * fx + c * fy * (1 - fx) + d * fy * fx


def scene_landcover(spec: SceneSpec, seed: int) -> np.ndarray:
    """IGBP class of every 500 m cell of a scene (uint8, cells x cells)."""
    rng = np.random.default_rng([seed, 3, SEASONS.index(spec.season), spec.scene])
    rows = (max(spec.patches) - 1) // GRID_COLS + 1
    shape = ((rows * STRIDE + SIZE) // CELL + 2, (GRID_COLS * STRIDE + SIZE) // CELL + 2)
    n_classes = int(rng.integers(2, 5))
    classes = rng.choice(np.arange(1, 18), size=n_classes, replace=False, p=_CLASS_PRIOR / _CLASS_PRIOR.sum())
    weights = rng.dirichlet(np.ones(n_classes) * 1.5)
    fields = np.stack([_smooth_field(rng, shape) + 1.2 * np.log(w) for w in weights])
    return classes[np.argmax(fields, axis=0)].astype(np.uint8)


def patch_arrays(spec: SceneSpec, patch: int, cells: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """s1 (dB), s2 and lc arrays of one patch, and `surface`: the IGBP class at 10 m that s1 and
    s2 show (the lc band holds the 500 m cells)."""
    rng = np.random.default_rng([seed, 4, SEASONS.index(spec.season), spec.scene, patch])
    row, col = divmod(patch - 1, GRID_COLS)
    y = row * STRIDE + np.arange(SIZE)
    x = col * STRIDE + np.arange(SIZE)
    igbp = cells[(y // CELL)[:, None], (x // CELL)[None, :]]
    # S2 sees finer structure than the 500 m label: some pixels take a neighbouring cell's class.
    jitter = rng.random((SIZE, SIZE)) < 0.12
    surface = igbp.copy()
    surface[jitter] = np.roll(igbp, 37, axis=1)[jitter]
    texture = 1.0 + 0.05 * _smooth_field(rng, (SIZE, SIZE), coarse=16)
    illumination = rng.uniform(0.9, 1.1)
    s2 = SPECTRA[surface].transpose(2, 0, 1) * texture * illumination
    s2 *= 1.0 + 0.06 * rng.standard_normal(s2.shape)
    s2 = np.clip(np.rint(s2), 1, 65535).astype(np.uint16)
    s1 = BACKSCATTER[surface].transpose(2, 0, 1) + 1.6 * rng.standard_normal((2, SIZE, SIZE))
    s1 += 1.5 * _smooth_field(rng, (SIZE, SIZE), coarse=32)[None]
    lc = np.concatenate([igbp[None], _LCCS[igbp - 1].transpose(2, 0, 1)]).astype(np.uint8)
    return {"s1": s1.astype(np.float32), "s2": s2, "lc": lc, "surface": surface}


def write_geotiff(path: Path, data: np.ndarray, epsg: int, origin: tuple[float, float]) -> None:
    """Uncompressed, striped, pixel-interleaved GeoTIFF, as SEN12MS distributes its patches."""
    import rasterio  # start-up time: rasterio only when used
    from affine import Affine  # start-up time: affine only when used

    path.parent.mkdir(parents=True, exist_ok=True)
    profile = dict(driver="GTiff", width=SIZE, height=SIZE, count=data.shape[0], dtype=data.dtype.name,
                   crs=f"EPSG:{epsg}", transform=Affine(10.0, 0.0, origin[0], 0.0, -10.0, origin[1]),
                   interleave="pixel", tiled=False, compress="none")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with rasterio.open(tmp, "w", **profile) as ds:
        ds.write(data)
    os.replace(tmp, path)


def synthesize(out: Path, scenes: int = 12, patches_per_scene: int = 24, seed: int = 0,
               broken: bool = False, progress: bool | ProgressOptions = True) -> list[PatchId]:
    """Write the sample tree under `out`; returns the S2 ids of the triplets written."""
    out = Path(out)
    specs = plan_scenes(scenes, patches_per_scene, seed, broken)
    out.mkdir(parents=True, exist_ok=True)
    (out / HOLDOUT_NAME).write_text(OFFICIAL_HOLDOUT.read_text())
    (out / MARKER_NAME).write_text(MARKER_TEXT.format(seed=seed))
    written: list[PatchId] = []
    total = sum(len(s.patches) for s in specs)
    with Counter(as_options(progress), "synth", total, "triplet") as bar:
        for spec in specs:
            cells = scene_landcover(spec, seed)
            for patch in spec.patches:
                pid = PatchId(spec.season, spec.scene, patch, "s2")
                arrays = patch_arrays(spec, patch, cells, seed)
                if broken and pid.stem("s1") == BROKEN:
                    arrays["s1"][0] = np.nan
                    arrays["s1"][1, :128] = np.nan
                row, col = divmod(patch - 1, GRID_COLS)
                origin = (spec.origin[0] + col * STRIDE * 10.0, spec.origin[1] - row * STRIDE * 10.0)
                for mod in ("s1", "s2", "lc"):
                    write_geotiff(out / pid.relpath(mod), arrays[mod], spec.epsg, origin)
                written.append(pid)
                bar.update(1)
    return written
