"""What `convert overview` collects of a dataset: one `PatchInfo` per patch, the inputs it could
not use, and where the pixel counts came from (shared by the collecting and the report)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sen12ms_common.vocab.patches import PatchId

# Where the pixel counts come from (written into every pixel-count CSV).
FROM_LC = "lc_igbp_band"


def from_label(pixels: int) -> str:
    return f"probability_label_x_{pixels}"


@dataclass(frozen=True)
class Problem:
    """An input that could not be counted, and why."""

    path: str
    reason: str


@dataclass
class PatchInfo:
    """What the overview needs of one patch."""

    id: PatchId  # the S2 id: season, scene, patch
    counts: np.ndarray  # int64 (17,): pixels of IGBP classes 1..17
    prob: np.ndarray  # float64 (17,): the probability label
    crs: str
    centre: tuple[float, float]  # patch centre in its CRS


@dataclass
class Collection:
    """Every patch of a dataset with what it holds, and the inputs that could not be used."""

    patches: list[PatchInfo]
    problems: list[Problem] = field(default_factory=list)
    source: str = ""  # the tree or shard folder
    kind: str = "geotiff"  # "geotiff" | "shards"
    pixels_from: str = FROM_LC
    synthetic: bool = False  # written by `convert synth` (its marker, or the manifest's source says so)
