"""How stored arrays become model input: channel selection and one affine map per channel.

Stored values are uint16 (S2 reflectance x 10000; S1 quantised dB codes). The model input of
channel c is `min(x, clip[c]) * scale[c] + offset[c]`, which folds S1 dequantisation and the
normalisation into one multiply-add, done on the training device on whole batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from ..errors import InputError
from ..format.sample import S1_MIN_DB, S1_STEP
from .bands import OFFICIAL_MEAN, OFFICIAL_STD, BandRef

STATS_CHOICES: tuple[str, ...] = ("official", "manifest", "none", "dfc2020")


@dataclass(frozen=True)
class ChannelTransform:
    """Per-channel `min(x, clip) * scale + offset` from stored uint16 to model input."""

    scale: np.ndarray
    offset: np.ndarray
    clip: np.ndarray  # upper bound on the stored value; inf where none

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Reference implementation on a numpy batch (B, C, H, W) or sample (C, H, W)."""
        shape = (-1, 1, 1)
        v = np.minimum(np.asarray(x, dtype=np.float32), self.clip.reshape(shape))
        return v * self.scale.reshape(shape) + self.offset.reshape(shape)


def channel_transform(bands: tuple[BandRef, ...], stats: str = "official",
                      manifest_stats: Mapping[str, Mapping[str, float]] | None = None) -> ChannelTransform:
    """Build the transform for `bands`.

    `official`: the original's training-set mean/std; `manifest`: mean/std the converter computed
    over the train split; `none`: the original's scaling without normalisation
    (S2 clip(0, 10000) / 10000, S1 dB / 25 + 1); `dfc2020`: the DFC2020 baseline's scaling,
    S2 clip(0, 10000) / 10000 and S1 clip(-25, 0) / 25 + 1, which is the same map. The lower
    bounds need no clip: S2 is stored unsigned and S1 codes are clipped to -25..0 dB on conversion.
    """
    if stats not in STATS_CHOICES:
        raise InputError(f"--stats must be one of {STATS_CHOICES}, not {stats!r}")
    scale, offset, clip = [], [], []
    for b in bands:
        # Stored value -> physical value: s2 as is; s1 code -> dB.
        a, c = (S1_STEP, S1_MIN_DB) if b.modality == "s1" else (1.0, 0.0)
        hi = np.inf
        if stats in ("none", "dfc2020"):
            if b.modality == "s2":
                mean, std, hi = 0.0, 10000.0, 10000.0
            else:
                mean, std = -25.0, 25.0  # dB / 25 + 1
        elif stats == "official":
            if b.name not in OFFICIAL_MEAN:
                raise InputError(f"the original has no statistics for band {b.name}; "
                                 "use --stats manifest, none or dfc2020")
            mean, std = OFFICIAL_MEAN[b.name], OFFICIAL_STD[b.name]
        else:
            if not manifest_stats or b.name not in manifest_stats:
                raise InputError(f"the manifest has no statistics for band {b.name}")
            mean, std = manifest_stats[b.name]["mean"], manifest_stats[b.name]["std"]
        if std <= 0:
            raise InputError(f"standard deviation of band {b.name} is {std}")
        scale.append(a / std)
        offset.append((c - mean) / std)
        clip.append(hi)
    f32 = lambda v: np.asarray(v, dtype=np.float32)  # noqa: E731
    return ChannelTransform(f32(scale), f32(offset), f32(clip))


def select_channels(arrays: Mapping[str, np.ndarray], bands: tuple[BandRef, ...],
                    out: np.ndarray | None = None) -> np.ndarray:
    """Stack the chosen bands of decoded stored arrays into one uint16 (C, H, W) array (`out`,
    when given: a batch slot is filled without an intermediate copy)."""
    if out is None:
        first = arrays[bands[0].modality]
        out = np.empty((len(bands),) + first.shape[1:], dtype=np.uint16)
    for i, b in enumerate(bands):
        out[i] = arrays[b.modality][b.index]
    return out
