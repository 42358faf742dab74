"""The DFC2020 sample tree: the contest's validation and test subsets in its layout.

Made with the sample SEN12MS tree's class spectra and backscatter, so that a model trained on
that tree's lc (mapped to DFC2020 classes) can be scored here. The dfc mask (1 band, uint8,
DFC2020 classes 1..10) is the 10 m land cover that s1 and s2 show; lc holds 500 m IGBP cells.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from convert.sample.sen12ms import (GRID_COLS, STRIDE, SceneSpec, patch_arrays, random_georeference, scene_landcover,
                                    write_geotiff)
from sen12ms_common.progress import Counter, ProgressOptions, as_options
from sen12ms_common.vocab.igbp import DFC2020_OF_IGBP
from sen12ms_common.vocab.patches import SEASONS, PatchId
from sen12ms_common.vocab.synthetic import MARKER_NAME, MARKER_TEXT

SUBSETS = ("ROIs0000_validation", "ROIs0000_test")
# Regions are generated as SEN12MS scenes numbered from here: no real or sample scene is.
FIRST_REGION = 1000
# DFC2020's validation and test data hold neither savanna nor snow and ice: such cells become
# grassland and barren land.
_RECLASS = np.arange(256, dtype=np.uint8)
_RECLASS[[8, 9, 15]] = (10, 10, 16)


def plan_regions(regions: int, patches_per_region: int, seed: int) -> list[tuple[str, SceneSpec]]:
    """Regions alternate between validation and test; their patches do not overlap (every other
    row and column of the 128 px grid)."""
    out = []
    cols = range(0, GRID_COLS, 2)
    for i in range(regions):
        rng = np.random.default_rng([seed, 5, i])
        rows = -(-patches_per_region // len(cols))
        spots = [r * GRID_COLS + c + 1 for r in range(0, 2 * rows, 2) for c in cols][:patches_per_region]
        epsg, origin = random_georeference(rng)
        spec = SceneSpec(SEASONS[i % 4], FIRST_REGION + i, tuple(spots), epsg, origin, False)
        out.append((SUBSETS[i % 2], spec))
    return out


def synthesize_dfc2020(out: Path, regions: int = 4, patches_per_region: int = 24, seed: int = 0,
                       progress: bool | ProgressOptions = True) -> list[PatchId]:
    """Write the DFC2020 sample tree under `out`; returns the S2 ids written. Patches are numbered
    from 0 in each subset, scene 0, as the contest numbers them."""
    out = Path(out)
    plan = plan_regions(regions, patches_per_region, seed)
    numbers = dict.fromkeys(SUBSETS, 0)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER_NAME).write_text(MARKER_TEXT.format(seed=seed))
    written: list[PatchId] = []
    with Counter(as_options(progress), "synth dfc2020", regions * patches_per_region, "patch") as bar:
        for subset, spec in plan:
            cells = _RECLASS[scene_landcover(spec, seed)]
            for patch in spec.patches:
                arrays = patch_arrays(spec, patch, cells, seed)
                arrays["dfc"] = DFC2020_OF_IGBP[arrays["surface"]][None]
                pid = PatchId(subset, 0, numbers[subset], "s2")
                numbers[subset] += 1
                row, col = divmod(patch - 1, GRID_COLS)
                origin = (spec.origin[0] + col * STRIDE * 10.0, spec.origin[1] - row * STRIDE * 10.0)
                for mod in ("s1", "s2", "lc", "dfc"):
                    write_geotiff(out / pid.relpath(mod), arrays[mod], spec.epsg, origin)
                written.append(pid)
                bar.update(1)
    return written
