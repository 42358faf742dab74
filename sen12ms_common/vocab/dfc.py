"""Pixel targets in the DFC2020 class scheme, as the DFC2020 baseline builds them.

IGBP (lc band 1) -> DFC2020 class 1..10 by the simplified grouping of `igbp.py`; training masks
are 0-based with ignore index 255 (no data, unmapped values, and savanna under `--no-savanna`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from .igbp import DFC2020_COLOURS, DFC2020_NAMES, DFC2020_OF_IGBP

IGNORE_INDEX = 255
N_DFC = len(DFC2020_NAMES)  # DFC2020 classes 1..10
SAVANNA = 3  # the DFC2020 class that `--no-savanna` masks out
# The baseline draws ignored pixels in white (the last entry of its colour map).
IGNORE_COLOUR = "#ffffff"


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    h = hex_colour.lstrip("#")
    return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)


@dataclass(frozen=True)
class DfcScheme:
    """The training classes: all ten DFC2020 classes, or nine without savanna."""

    savanna: bool = True

    @property
    def dfc_classes(self) -> tuple[int, ...]:
        """The DFC2020 class (1..10) of each 0-based training class."""
        return tuple(c for c in range(1, N_DFC + 1) if self.savanna or c != SAVANNA)

    @property
    def num_classes(self) -> int:
        return len(self.dfc_classes)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(DFC2020_NAMES[c - 1] for c in self.dfc_classes)

    @property
    def colours(self) -> tuple[str, ...]:
        """The baseline's colour (hex) of each training class."""
        return tuple(DFC2020_COLOURS[c - 1] for c in self.dfc_classes)

    def dfc_lut(self) -> np.ndarray:
        """256 entries: DFC2020 value -> 0-based training class; 0, savanna (when folded) and
        values above 10 -> 255."""
        lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
        lut[list(self.dfc_classes)] = np.arange(self.num_classes, dtype=np.uint8)
        return lut

    def igbp_lut(self) -> np.ndarray:
        """256 entries: IGBP value -> 0-based training class; 0 and values above 17 -> 255."""
        dfc = np.zeros(256, dtype=np.uint8)
        dfc[:DFC2020_OF_IGBP.size] = DFC2020_OF_IGBP
        return self.dfc_lut()[dfc]

    def to_dfc_lut(self) -> np.ndarray:
        """256 entries: training class -> DFC2020 value 1..10; 255 and unknown classes -> 255."""
        lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
        lut[:self.num_classes] = self.dfc_classes
        return lut

    def colormap(self) -> dict[int, tuple[int, int, int, int]]:
        """A GeoTIFF colour table over DFC2020 values (1..10 and 255 = ignore), RGBA."""
        table = {c: _rgb(DFC2020_COLOURS[c - 1]) + (255,) for c in self.dfc_classes}
        table[IGNORE_INDEX] = _rgb(IGNORE_COLOUR) + (255,)
        return table


def _lookup(band: np.ndarray, lut: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(band)
    if arr.dtype != np.uint8:
        if arr.size and (not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0 or arr.max() > 255):
            raise InputError(f"{what} must hold integers 0..255, got dtype {arr.dtype}")
        arr = arr.astype(np.uint8)
    return lut[arr]


def igbp_to_dfc(lc_band: np.ndarray, savanna: bool = True) -> np.ndarray:
    """IGBP pixels (lc band 1) -> uint8 training mask: DFC2020 class - 1, ignored pixels 255."""
    return _lookup(lc_band, DfcScheme(savanna).igbp_lut(), "an IGBP band")


def dfc_to_train(dfc_band: np.ndarray, savanna: bool = True) -> np.ndarray:
    """DFC2020 pixels (dfc band 1, classes 1..10) -> uint8 training mask (255 = ignored)."""
    return _lookup(dfc_band, DfcScheme(savanna).dfc_lut(), "a DFC2020 band")


def train_to_dfc(mask: np.ndarray, savanna: bool = True) -> np.ndarray:
    """0-based training classes (a prediction) -> DFC2020 values 1..10, 255 kept."""
    return _lookup(mask, DfcScheme(savanna).to_dfc_lut(), "a class mask")
