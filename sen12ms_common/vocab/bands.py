"""Band tables of the modalities (and of the DFC2020 mask), the input sets of the original toolbox and the band
groups of the DFC2020 baseline."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from typing import Any

from ..errors import InputError

S1_BANDS: tuple[str, ...] = ("VV", "VH")
S2_BANDS: tuple[str, ...] = (
    "B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12",
)
LC_BANDS: tuple[str, ...] = ("IGBP", "LCCS_LC", "LCCS_LU", "LCCS_SH")
DFC_BANDS: tuple[str, ...] = ("DFC",)  # the DFC2020 contest's 10 m mask, classes 1..10

MODALITY_BANDS: dict[str, tuple[str, ...]] = {"s1": S1_BANDS, "s2": S2_BANDS, "lc": LC_BANDS, "dfc": DFC_BANDS}
MODALITY_DTYPES: dict[str, str] = {"s1": "float32", "s2": "uint16", "lc": "uint8", "dfc": "uint8"}
PATCH_SIZE = 256

# The original's choices (1-based indices into the 13-band file): RGB = [2, 3, 4] is B2, B3, B4,
# i.e. blue, green, red in that order; the pretrained checkpoints expect exactly this order.
_S2_10 = ("B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12")
INPUT_SETS: dict[str, tuple[str, ...]] = {
    "rgb": ("B2", "B3", "B4"),
    "s2": _S2_10,
    "s1": S1_BANDS,
    "s1s2": _S2_10 + S1_BANDS,
    "rgbs1": ("B2", "B3", "B4") + S1_BANDS,
}

# The DFC2020 baseline's groups: S2 at 10 m (high), 20 m (medium), 60 m (low resolution), and S1.
# It reads the chosen S2 bands in file order whatever the groups, then appends S1.
BASELINE_GROUPS: dict[str, tuple[str, ...]] = {
    "s2hr": ("B2", "B3", "B4", "B8"),
    "s2mr": ("B5", "B6", "B7", "B8A", "B11", "B12"),
    "s2lr": ("B1", "B9", "B10"),
    "s1": S1_BANDS,
}


def baseline_input(groups: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The baseline's channels for a set of its groups: S2 bands in file order, then S1."""
    chosen = set(groups)
    s2 = {b for g in chosen if g != "s1" for b in BASELINE_GROUPS[g]}
    return tuple(b for b in S2_BANDS if b in s2) + (S1_BANDS if "s1" in chosen else ())


def _baseline_sets() -> dict[str, tuple[str, ...]]:
    # Every combination of groups, named in a fixed order (`s2hr+s2mr+s1`); `s1` alone is already
    # the original's set of the same bands.
    names = tuple(BASELINE_GROUPS)
    out = {}
    for k in range(1, len(names) + 1):
        for combo in combinations(names, k):
            if combo != ("s1",):
                out["+".join(combo)] = baseline_input(combo)
    return out


INPUT_SETS.update(_baseline_sets())

# Official normalisation statistics of the original toolbox (training set), by band.
OFFICIAL_MEAN: dict[str, float] = dict(zip(_S2_10 + S1_BANDS, (
    1226.4215, 1137.3799, 1139.6792, 1350.9973, 1932.9058, 2211.1584, 2154.9846,
    2409.1128, 2001.8622, 1356.0801, -11.76858, -18.294598,
)))
OFFICIAL_STD: dict[str, float] = dict(zip(_S2_10 + S1_BANDS, (
    741.6254, 740.883, 960.1045, 946.76056, 985.52747, 1082.4341, 1057.7628,
    1136.1942, 1132.7898, 991.48016, 4.525339, 4.3586307,
)))


@dataclass(frozen=True)
class BandRef:
    """One input channel: a band of a modality and its index in that modality's file."""

    modality: str
    name: str
    index: int  # 0-based position in the modality's file


def band_ref(name: str) -> BandRef:
    for modality in ("s2", "s1"):
        bands = MODALITY_BANDS[modality]
        if name in bands:
            return BandRef(modality, name, bands.index(name))
    known = ", ".join(S2_BANDS + S1_BANDS)
    raise InputError(f"unknown band {name!r} (known: {known})")


def resolve_bands(spec: str | tuple[str, ...] | list[str]) -> tuple[BandRef, ...]:
    """Resolve a named input set (`rgb`, `s2`, `s1`, `s1s2`, `rgbs1`, the baseline's groups
    `s2hr`, `s2mr`, `s2lr` alone or joined by `+` with each other and `s1`) or band names.

    `spec` may be a set name, a comma-separated string of band names (`"B8,B4,B3,VV"`) or a
    sequence of band names. The order of the result is the channel order of the model input.
    """
    if isinstance(spec, str):
        key = _group_set_name(spec.strip().lower())
        if key in INPUT_SETS:
            return tuple(band_ref(b) for b in INPUT_SETS[key])
        names = [s.strip().upper() for s in spec.split(",") if s.strip()]
        if len(names) == 1 and names[0] not in S2_BANDS + S1_BANDS:
            sets = ", ".join(k for k in INPUT_SETS if "+" not in k)
            raise InputError(f"unknown input set {spec!r} (sets: {sets}, or the baseline's groups joined "
                             f"by + like s2hr+s2mr+s1; or band names like B8,B4,VV)")
    else:
        names = [str(n).strip().upper() for n in spec]
    if not names:
        raise InputError("no band selected")
    refs = tuple(band_ref(n) for n in names)
    if len(set(refs)) != len(refs):
        raise InputError(f"band listed twice in {spec!r}")
    return refs


def _group_set_name(key: str) -> str:
    """`s1+s2hr` -> `s2hr+s1`: baseline groups in any order name the same set."""
    parts = [p.strip() for p in key.split("+")]
    if len(parts) < 2 or not all(p in BASELINE_GROUPS for p in parts) or len(set(parts)) != len(parts):
        return key
    return "+".join(g for g in BASELINE_GROUPS if g in parts)


def modalities_of(bands: tuple[BandRef, ...]) -> tuple[str, ...]:
    """The modalities a set of channels needs, in a fixed order (s2 before s1)."""
    return tuple(m for m in ("s2", "s1") if any(b.modality == m for b in bands))


def modality_runs(bands: tuple[BandRef, ...] | list[BandRef]) -> list[tuple[str, list[int], int]]:
    """(modality, band indices, first channel) of each run of consecutive channels of one
    modality: what a decoder decodes into a batch, a run at a time."""
    runs: list[tuple[str, list[int], int]] = []
    for channel, band in enumerate(bands):
        if runs and runs[-1][0] == band.modality:
            runs[-1][1].append(band.index)
        else:
            runs.append((band.modality, [band.index], channel))
    return runs


@dataclass(frozen=True)
class InputBands:
    """`--input` read: the text an arguments file keeps (a set name in lower case, or band names
    joined by commas, no spaces: the original's reader splits its lines on whitespace) and the
    bands it names, in channel order."""

    text: str
    bands: tuple[BandRef, ...]


def read_input(spec: Any) -> InputBands:
    """The one reading of an input set or band list (InputError when it names none)."""
    if isinstance(spec, InputBands):
        return spec
    key = str(spec).strip().lower()
    bands = resolve_bands(spec)
    return InputBands(key if key in INPUT_SETS else ",".join(b.name for b in bands), bands)
