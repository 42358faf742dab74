"""The 8 symmetries of the square (`--augment`): what a symmetry code means, and applying the
codes a batch carries to its images and masks on the device where they become model input."""

from __future__ import annotations

import numpy as np
import torch

SYMMETRIES = 8  # codes 0..7: bit 0 flips left-right, bit 1 top-bottom, bit 2 transposes (after the flips)


def symmetric_view(slot: np.ndarray, code: int) -> np.ndarray:
    """A view of a (C, H, W) slot through which data written lands as symmetry `code` of it:
    `symmetric_view(out, c)[...] = a` stores what `apply_symmetries` makes of `a` with code c."""
    v = slot.transpose(0, 2, 1) if code & 4 else slot
    if code & 2:
        v = v[:, ::-1, :]
    if code & 1:
        v = v[:, :, ::-1]
    return v


def _moved(x: torch.Tensor, code: int) -> torch.Tensor:
    if code & 2:
        x = x.flip(-2)
    if code & 1:
        x = x.flip(-1)
    return x.transpose(-2, -1) if code & 4 else x


def move_sample(x: torch.Tensor, code: int) -> torch.Tensor:
    """One sample (..., H, W) moved by symmetry `code`: a view for a transpose, a copy for a flip."""
    return _moved(x, code)


def check_symmetries(x: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """`codes` for the batch x (B, ..., H, W), whose patches must be square."""
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"symmetries of the square need square patches, got {tuple(x.shape[-2:])}")
    return codes


def apply_symmetries(x: torch.Tensor, codes: torch.Tensor | None) -> torch.Tensor:
    """x (B, ..., H, W) with sample i moved by symmetry codes[i]: a new tensor on x's device
    (x itself when `codes` is None). One copy per sample; on a GPU it costs next to nothing."""
    if codes is None:
        return x
    check_symmetries(x, codes)
    # Same-size integer views: flips and transposes only move bits, on every device.
    bits = {torch.uint16: torch.int16, torch.uint32: torch.int32}.get(x.dtype)
    src = x.view(bits) if bits is not None else x
    out = torch.empty_like(src)
    for i, code in enumerate(codes.tolist()):
        out[i].copy_(_moved(src[i], int(code)))
    return out.view(x.dtype) if bits is not None else out
