"""IGBP land-cover classes, the simplified and DFC2020 schemes, and the label rules."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError

IGBP_NAMES: tuple[str, ...] = (
    "Evergreen Needleleaf Forests", "Evergreen Broadleaf Forests", "Deciduous Needleleaf Forests",
    "Deciduous Broadleaf Forests", "Mixed Forests", "Closed (Dense) Shrublands",
    "Open (Sparse) Shrublands", "Woody Savannas", "Savannas", "Grasslands", "Permanent Wetlands",
    "Croplands", "Urban and Built-Up Lands", "Cropland/Natural Vegetation Mosaics",
    "Permanent Snow and Ice", "Barren", "Water Bodies",
)
SIMPLE_NAMES: tuple[str, ...] = (
    "Forest", "Shrubland", "Savanna", "Grassland", "Wetlands", "Croplands", "Urban/Built-up",
    "Snow/Ice", "Barren", "Water",
)
N_FULL = len(IGBP_NAMES)
N_SIMPLE = len(SIMPLE_NAMES)

# Simplified class (1-based) of each full class 1..17. A simplified class's probability is the
# SUM of its members' probabilities.
SIMPLE_OF_FULL: tuple[int, ...] = (1, 1, 1, 1, 1, 2, 2, 3, 3, 4, 5, 6, 7, 6, 8, 9, 10)

# 17 x 10 matrix: prob_simple = prob_full @ FULL_TO_SIMPLE.
FULL_TO_SIMPLE = np.zeros((N_FULL, N_SIMPLE), dtype=np.float64)
FULL_TO_SIMPLE[np.arange(N_FULL), np.array(SIMPLE_OF_FULL) - 1] = 1.0
FULL_TO_SIMPLE.setflags(write=False)

# DFC2020 uses the simplified grouping on pixel maps; 0 means no data and is ignored.
# Index with an IGBP pixel value 0..17 to get the DFC2020 class 0..10.
DFC2020_OF_IGBP = np.array((0,) + SIMPLE_OF_FULL, dtype=np.uint8)
DFC2020_OF_IGBP.setflags(write=False)
DFC2020_NAMES: tuple[str, ...] = SIMPLE_NAMES

# The usual MODIS IGBP palette and the DFC2020 palette (hex, class order).
IGBP_COLOURS: tuple[str, ...] = (
    "#05450a", "#086a10", "#54a708", "#78d203", "#009900", "#c6b044", "#dcd159", "#dade48",
    "#fbff13", "#b6ff05", "#27ff87", "#c24f44", "#a5a5a5", "#ff6d4c", "#69fff8", "#f9ffa4",
    "#1c0dff",
)
DFC2020_COLOURS: tuple[str, ...] = (
    "#009900", "#c6b044", "#fbff13", "#b6ff05", "#27ff87", "#c24f44", "#a5a5a5", "#69fff8",
    "#f9ffa4", "#1c0dff",
)

SCHEMES = ("simple", "full")
LABEL_TYPES = ("single_label", "multi_label")


def igbp_counts(igbp: np.ndarray) -> np.ndarray:
    """Pixel counts of IGBP classes 1..17 in an lc IGBP band (index 0 = class 1).

    Value 0 (no data) is not counted; any value above 17 raises `InputError`.
    """
    arr = np.asarray(igbp)
    counts = np.bincount(arr.ravel().astype(np.int64), minlength=256)
    bad = np.nonzero(counts[N_FULL + 1:])[0]
    if bad.size:
        values = ", ".join(str(v + N_FULL + 1) for v in bad[:5])
        raise InputError(f"IGBP values outside 0..17: {values}")
    return counts[1:N_FULL + 1]


def probability_from_igbp(igbp: np.ndarray) -> np.ndarray:
    """The 17-class probability vector of a patch: share of its valid pixels in each class."""
    counts = igbp_counts(igbp)
    total = counts.sum()
    if total == 0:
        raise InputError("no valid IGBP pixel (all 0 = no data)")
    return counts / total


def check_probability(prob: np.ndarray, tol: float = 1e-3) -> np.ndarray:
    """Validate a 17-value probability vector; return it as float64."""
    p = np.asarray(prob, dtype=np.float64).reshape(-1)
    if p.size != N_FULL:
        raise InputError(f"probability vector has {p.size} values, expected {N_FULL}")
    if not np.all(np.isfinite(p)) or np.any(p < 0):
        raise InputError("probability vector holds negative or non-finite values")
    if abs(p.sum() - 1.0) > tol:
        raise InputError(f"probability vector sums to {p.sum():.4f}, not 1")
    return p


def to_simple(prob: np.ndarray) -> np.ndarray:
    """Full (..., 17) probabilities -> simplified (..., 10), summing member classes."""
    return np.asarray(prob, dtype=np.float64) @ FULL_TO_SIMPLE


def single_label(prob: np.ndarray) -> np.ndarray:
    """1-based class number of the largest probability; on a tie the lowest class wins."""
    return np.argmax(np.asarray(prob), axis=-1) + 1


def one_hot(classes: np.ndarray, n_classes: int) -> np.ndarray:
    """One-hot rows (uint8) of 1-based class numbers."""
    c = np.asarray(classes, dtype=np.int64)
    return (np.arange(1, n_classes + 1) == c[..., None]).astype(np.uint8)


def multi_label(prob: np.ndarray, threshold: float = 0.1) -> np.ndarray:
    """0/1 vector: a class is present where its probability is >= threshold (not >)."""
    return (np.asarray(prob) >= threshold).astype(np.uint8)


@dataclass(frozen=True)
class LabelRule:
    """How a stored 17-class probability vector becomes a training target."""

    label_type: str = "single_label"
    scheme: str = "simple"
    threshold: float = 0.1

    def __post_init__(self) -> None:
        if self.label_type not in LABEL_TYPES:
            raise InputError(f"label type must be one of {LABEL_TYPES}, not {self.label_type!r}")
        if self.scheme not in SCHEMES:
            raise InputError(f"IGBP scheme must be one of {SCHEMES}, not {self.scheme!r}")

    @property
    def num_classes(self) -> int:
        return N_SIMPLE if self.scheme == "simple" else N_FULL

    @property
    def class_names(self) -> tuple[str, ...]:
        return SIMPLE_NAMES if self.scheme == "simple" else IGBP_NAMES

    def scheme_probabilities(self, prob_full: np.ndarray) -> np.ndarray:
        p = np.asarray(prob_full, dtype=np.float64)
        return to_simple(p) if self.scheme == "simple" else p

    def targets(self, prob_full: np.ndarray) -> np.ndarray:
        """Targets of a batch (B, 17): 0-based int64 classes, or float32 0/1 rows (multi)."""
        p = self.scheme_probabilities(prob_full)
        if self.label_type == "single_label":
            return (single_label(p) - 1).astype(np.int64)
        return multi_label(p, self.threshold).astype(np.float32)

    def indicator(self, prob_full: np.ndarray) -> np.ndarray:
        """0/1 rows (B, classes) of the true labels, the form every metric takes."""
        p = self.scheme_probabilities(prob_full)
        if self.label_type == "single_label":
            return one_hot(single_label(p), self.num_classes)
        return multi_label(p, self.threshold)
