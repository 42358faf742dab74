"""The one-pass CPU conversion (`sen12ms_common.kernels.streamaffine`): bit for bit the numpy
reference `ChannelTransform.apply` at every alignment and plane length, nothing written outside
the batch, mismatched arrays refused, non-temporal stores on x86, and real patches converted by
`InputTransform` exactly as the reference converts them."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sen12ms_common.kernels.streamaffine import stream_affine
from sen12ms_common.vocab.bands import resolve_bands
from sen12ms_common.vocab.inputs import ChannelTransform, channel_transform
from train.run.device import InputTransform

PROPS = settings(max_examples=120, deadline=timedelta(seconds=10), database=None)
REAL = Path(__file__).resolve().parents[2] / "shared" / "reference" / "real"
GUARD = np.float32(-7.25)


def _reference(src: np.ndarray, clip, scale, offset) -> np.ndarray:
    """The reference on (B, C, P) planes: as (B, C, P, 1) images."""
    t = ChannelTransform(np.float32(scale), np.float32(offset), np.float32(clip))
    return t.apply(src[..., None])[..., 0]


@PROPS
@given(b=st.integers(1, 3), c=st.integers(1, 4), plane=st.integers(0, 700), offset=st.integers(0, 31),
       seed=st.integers(0, 2**32 - 1))
def test_one_pass_equals_the_reference_and_writes_nothing_else(b, c, plane, offset, seed):
    rng = np.random.default_rng(seed)
    src = rng.integers(0, 65536, (b, c, plane), dtype=np.uint16)
    clip = np.where(rng.random(c) < 0.5, np.inf, rng.integers(0, 65536, c)).astype(np.float32)
    scale = rng.normal(0, 0.01, c).astype(np.float32)
    shift = rng.normal(0, 3, c).astype(np.float32)
    buf = np.full(b * c * plane + offset + 33, GUARD, dtype=np.float32)  # offsets move the lines' alignment
    dst = buf[offset:offset + b * c * plane].reshape(b, c, plane)
    stream_affine(src, dst, clip, scale, shift)
    assert np.array_equal(dst, _reference(src, clip, scale, shift))
    assert (buf[:offset] == GUARD).all() and (buf[offset + b * c * plane:] == GUARD).all()


def test_a_destination_off_float_alignment_is_written_value_by_value():
    src = np.arange(3 * 100, dtype=np.uint16).reshape(1, 3, 100)
    raw = np.zeros(4 * 300 + 4, dtype=np.uint8)
    dst = raw[1:1 + 4 * 300].view(np.float32).reshape(1, 3, 100)  # one byte past a float boundary
    ones = np.ones(3, np.float32)
    stream_affine(src, dst, np.full(3, 150, np.float32), ones * 0.5, ones)
    assert np.array_equal(dst, _reference(src, [150] * 3, [0.5] * 3, [1] * 3))


def test_arrays_that_do_not_match_are_refused():
    one = np.ones(2, np.float32)
    with pytest.raises(ValueError, match="differ in shape"):
        stream_affine(np.zeros((1, 2, 64), np.uint16), np.empty((1, 2, 63), np.float32), one, one, one)
    with pytest.raises(ValueError, match="one clip, scale and offset per channel"):
        stream_affine(np.zeros((1, 3, 64), np.uint16), np.empty((1, 3, 64), np.float32), one, one, one)


def test_the_conversion_uses_non_temporal_stores_on_x86():
    import platform

    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("the instruction names checked are x86's")
    from numba import njit

    fresh = njit(stream_affine.py_func)  # compiled here: a dispatcher loaded from numba's cache has no assembly
    one = np.ones(1, np.float32)
    fresh(np.zeros((1, 1, 256), np.uint16), np.empty((1, 1, 256), np.float32), one, one, one)
    asm = fresh.inspect_asm(fresh.signatures[0])
    assert re.search(r"\bv?movntps", asm) and "sfence" in asm


@pytest.mark.parametrize("stats", ["official", "none", "dfc2020"])
def test_real_patches_become_the_reference_model_input(stats):
    s1_file = sorted(REAL.glob("*_s1_*.tif"))[:1]
    s2_file = sorted(REAL.glob("*_s2_*.tif"))[:1]
    if not s1_file or not s2_file:
        pytest.skip(f"no real S1 / S2 patch in {REAL}")
    import rasterio

    from sen12ms_common.format.sample import quantize_s1

    with rasterio.open(s1_file[0]) as ds:
        s1 = quantize_s1(ds.read())
    with rasterio.open(s2_file[0]) as ds:
        s2 = ds.read().astype(np.uint16)
    bands = resolve_bands("s1s2")
    planes = {"s1": s1, "s2": s2}
    stored = np.stack([planes[b.modality][b.index] for b in bands])[None]  # the loader's channel order
    transform = channel_transform(bands, stats)
    to_input = InputTransform(transform, torch.device("cpu"), reuse=True)
    assert np.array_equal(to_input(torch.from_numpy(stored)).numpy(), transform.apply(stored))
    # Code 6 flips top-bottom, then transposes (train.data.symmetry): the moved sample, converted.
    moved = np.ascontiguousarray(stored[:, :, ::-1, :].swapaxes(-1, -2))
    got = to_input(torch.from_numpy(stored), torch.tensor([6], dtype=torch.uint8)).numpy()
    assert np.array_equal(got, transform.apply(moved))
