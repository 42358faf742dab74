"""Band tables of the three modalities and the input sets of the original toolbox."""

from __future__ import annotations

from dataclasses import dataclass

S1_BANDS: tuple[str, ...] = ("VV", "VH")
S2_BANDS: tuple[str, ...] = (
    "B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12",
)
LC_BANDS: tuple[str, ...] = ("IGBP", "LCCS_LC", "LCCS_LU", "LCCS_SH")

MODALITY_BANDS: dict[str, tuple[str, ...]] = {"s1": S1_BANDS, "s2": S2_BANDS, "lc": LC_BANDS}
MODALITY_DTYPES: dict[str, str] = {"s1": "float32", "s2": "uint16", "lc": "uint8"}
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

# Official normalisation statistics of the original toolbox (training set), by band.
OFFICIAL_MEAN: dict[str, float] = dict(zip(_S2_10 + S1_BANDS, (
    1226.4215, 1137.3799, 1139.6792, 1350.9973, 1932.9058, 2211.1584, 2154.9846,
    2409.1128, 2001.8622, 1356.0801, -11.76858, -18.294598,
)))
OFFICIAL_STD: dict[str, float] = dict(zip(_S2_10 + S1_BANDS, (
    741.6254, 740.883, 960.1045, 946.76056, 985.52747, 1082.4341, 1057.7628,
    1136.1942, 1132.7898, 991.48016, 4.525339, 4.3586307,
)))


class BandError(ValueError):
    """An input set or band name that does not exist."""


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
    raise BandError(f"unknown band {name!r} (known: {known})")


def resolve_bands(spec: str | tuple[str, ...] | list[str]) -> tuple[BandRef, ...]:
    """Resolve a named input set (`rgb`, `s2`, `s1`, `s1s2`, `rgbs1`) or band names to channels.

    `spec` may be a set name, a comma-separated string of band names (`"B8,B4,B3,VV"`) or a
    sequence of band names. The order of the result is the channel order of the model input.
    """
    if isinstance(spec, str):
        key = spec.strip().lower()
        if key in INPUT_SETS:
            return tuple(band_ref(b) for b in INPUT_SETS[key])
        names = [s.strip().upper() for s in spec.split(",") if s.strip()]
        if len(names) == 1 and names[0] not in S2_BANDS + S1_BANDS:
            sets = ", ".join(INPUT_SETS)
            raise BandError(f"unknown input set {spec!r} (sets: {sets}; or band names like B8,B4,VV)")
    else:
        names = [str(n).strip().upper() for n in spec]
    if not names:
        raise BandError("no band selected")
    refs = tuple(band_ref(n) for n in names)
    if len(set(refs)) != len(refs):
        raise BandError(f"band listed twice in {spec!r}")
    return refs


def modalities_of(bands: tuple[BandRef, ...]) -> tuple[str, ...]:
    """The modalities a set of channels needs, in a fixed order (s2 before s1)."""
    return tuple(m for m in ("s2", "s1") if any(b.modality == m for b in bands))
