"""The byte shuffle of zstd bands undone in one compiled pass (numba), where numpy needs two
passes and a cast: about half the time on a batch's bands (docs/performance.md)."""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(nogil=True, cache=True)
def unshuffle_planes(raw, out):  # pragma: no cover - compiled; tests call it through codecs
    """raw (k, 2n) uint8, per band its n low bytes then its n high bytes -> out (k, n) uint16."""
    n = out.shape[1]
    for b in range(out.shape[0]):
        lo, hi, dst = raw[b, :n], raw[b, n:2 * n], out[b]
        # Loops over slices: numba vectorises them (an index into the 2-d arrays it does not).
        for i in range(n):
            dst[i] = np.uint16(lo[i]) | (np.uint16(hi[i]) << np.uint16(8))
