"""Per-band mean and standard deviation, accumulated sample by sample in a fixed order."""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np

Moments = tuple[int, float, float]  # count, mean, M2
BandMoments = dict[str, Moments]


def band_moments(arr: np.ndarray, names: tuple[str, ...]) -> BandMoments:
    """Moments of every band of a (bands, H, W) array, in float64."""
    out: BandMoments = {}
    for name, band in zip(names, np.asarray(arr)):
        x = band.astype(np.float64).ravel()
        mean = float(x.mean())
        out[name] = (int(x.size), mean, float(np.square(x - mean).sum()))
    return out


def combine(a: Moments, b: Moments) -> Moments:
    na, ma, m2a = a
    nb, mb, m2b = b
    if na == 0:
        return (nb, mb, m2b)
    if nb == 0:
        return (na, ma, m2a)
    n = na + nb
    delta = mb - ma
    return (n, ma + delta * nb / n, m2a + m2b + delta * delta * na * nb / n)


def merge(total: BandMoments, part: Mapping[str, Moments]) -> BandMoments:
    """`total` updated with `part` (bands in `part`'s order)."""
    for name, m in part.items():
        total[name] = combine(total.get(name, (0, 0.0, 0.0)), tuple(m))  # type: ignore[arg-type]
    return total


def finish(total: Mapping[str, Moments], order: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """{band: {mean, std}} (population std, as numpy's default) for the bands present, in `order`."""
    out: dict[str, dict[str, float]] = {}
    for name in order:
        if name in total and total[name][0] > 0:
            n, mean, m2 = total[name]
            out[name] = {"mean": mean, "std": math.sqrt(max(m2, 0.0) / n)}
    return out
