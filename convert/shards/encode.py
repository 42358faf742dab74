"""Read one planned triplet, apply the input policy and encode it into its shard members."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from convert.shards.geotiff import read_patch
from convert.shards.plan import PlanEntry
from convert.shards.stats import BandMoments, band_moments
from sen12ms_common.errors import InputError
from sen12ms_common.format.sample import SampleLayout, clean_s1, encode_sample
from sen12ms_common.vocab.bands import MODALITY_BANDS
from sen12ms_common.vocab.dfc import N_DFC
from sen12ms_common.vocab.patches import parse_any_patch

S1_MAX_NONFINITE = 0.01  # share of S1 pixels that may be NaN/inf before a patch counts as broken
S2_MAX_REFLECTANCE = 10000
IGBP_MAX = 17
# The band-1 classes each mask holds at most, and what its 0 means.
MASK_MAX: dict[str, tuple[int, str, str]] = {"lc": (IGBP_MAX, "IGBP", "no-data pixels (class 0)"),
                                             "dfc": (N_DFC, "DFC2020", "pixels without a class (0)")}


@dataclass
class Encoded:
    key: str
    members: dict[str, bytes]
    stats: BandMoments = field(default_factory=dict)  # train split only
    warnings: list[tuple[str, str]] = field(default_factory=list)  # (path, message)


@dataclass
class Failed:
    key: str
    reason: str
    path: str


def tar_bytes(members: dict[str, bytes]) -> int:
    """Bytes the members take in a tar: a 512-byte header each, data padded to 512."""
    return sum(512 + -(-len(v) // 512) * 512 for v in members.values())


def encode_entry(entry: PlanEntry, layout: SampleLayout, with_stats: bool) -> Encoded | Failed:
    arrays: dict[str, np.ndarray] = {}
    warnings: list[tuple[str, str]] = []
    georef: tuple[str, tuple[float, ...]] | None = None
    for m in layout.modalities:
        path = entry.paths[m]
        try:
            patch = read_patch(path, m)
        except InputError as exc:
            return Failed(entry.key, str(exc), path)
        if georef is None:
            georef = (patch.crs, patch.transform)
        data = patch.data
        if m == "s1":
            bad = int(np.count_nonzero(~np.isfinite(data)))
            if bad:
                share = bad / data.size
                text = f"S1 holds {bad} non-finite pixels ({share:.1%})"
                if share > S1_MAX_NONFINITE:
                    return Failed(entry.key, f"{path}: broken S1: {text}, more than {S1_MAX_NONFINITE:.0%}", path)
                warnings.append((path, f"{text}; stored as 0 dB (NaN, +inf) and -25 dB (-inf)"))
        elif m == "s2":
            above = int(np.count_nonzero(data > S2_MAX_REFLECTANCE))
            if above:
                warnings.append((path, f"S2 holds {above} values above {S2_MAX_REFLECTANCE} (max {int(data.max())}); "
                                       "stored unchanged"))
        elif m in MASK_MAX:
            most, name, zero = MASK_MAX[m]
            band = data[0]
            if int(band.max()) > most:
                values = sorted(int(v) for v in np.unique(band[band > most]))[:5]
                return Failed(entry.key, f"{path}: {name} band holds values outside 0..{most}: "
                                         f"{', '.join(map(str, values))}", path)
            zeros = int(np.count_nonzero(band == 0))
            if zeros:
                warnings.append((path, f"{name} band holds {zeros} {zero}; stored unchanged"))
        arrays[m] = data
    assert georef is not None  # layout.modalities is never empty
    pid = parse_any_patch(entry.key)
    meta: dict[str, Any] = {
        "season": pid.season, "scene": pid.scene, "patch": pid.patch,
        "crs": georef[0], "transform": list(georef[1]),
    }
    if layout.labels:
        meta["label"] = list(entry.label)
    members = encode_sample(arrays, np.asarray(entry.label) if layout.labels else None, meta, layout)
    stats: BandMoments = {}
    if with_stats:
        if "s2" in arrays:
            stats.update(band_moments(arrays["s2"], MODALITY_BANDS["s2"]))
        if "s1" in arrays:
            stats.update(band_moments(clean_s1(arrays["s1"]), MODALITY_BANDS["s1"]))
    return Encoded(entry.key, members, stats, warnings)
