"""The batch writers that bypass the caches (`sen12ms_common.kernels.streamcopy`): the same bytes as a
plain copy or un-shuffle at every alignment and length, nothing written outside the destination,
and sizes that do not match refused instead of read or written past an array."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sen12ms_common.format import codecs
from sen12ms_common.format import sample as sf
from sen12ms_common.kernels.streamcopy import copy_planes, stream_copy, stream_unshuffle, take_planes

PROPS = settings(max_examples=120, deadline=timedelta(seconds=10), database=None)
REAL = Path(__file__).resolve().parents[2] / "shared" / "reference" / "real"


def _guarded(n: int, offset: int) -> tuple[np.ndarray, np.ndarray]:
    """A destination of n bytes at `offset` into a buffer of 0xAB bytes, and the buffer."""
    buf = np.full(n + offset + 129, 0xAB, dtype=np.uint8)
    return buf[offset:offset + n], buf


@PROPS
@given(n=st.integers(0, 5000), offset=st.integers(0, 127), seed=st.integers(0, 2**32 - 1))
def test_stream_copy_writes_the_source_and_nothing_else(n, offset, seed):
    src = np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8)
    dst, buf = _guarded(n, offset)
    stream_copy(dst, src)
    assert np.array_equal(dst, src)
    assert (buf[:offset] == 0xAB).all() and (buf[offset + n:] == 0xAB).all()


@PROPS
@given(values=st.integers(0, 3000), offset=st.integers(0, 127), seed=st.integers(0, 2**32 - 1))
def test_stream_unshuffle_is_the_inverse_of_the_format_shuffle(values, offset, seed):
    band = np.random.default_rng(seed).integers(0, 65536, values, dtype=np.uint16)
    raw = np.frombuffer(codecs.shuffle_bytes(band), dtype=np.uint8)
    dst, buf = _guarded(2 * values, offset)  # odd offsets too: the bytes are written one by one then
    stream_unshuffle(dst, raw)
    assert np.array_equal(dst.view("<u2") if offset % 2 == 0 else np.frombuffer(dst.tobytes(), "<u2"), band)
    assert (buf[:offset] == 0xAB).all() and (buf[offset + 2 * values:] == 0xAB).all()


def test_sizes_that_do_not_match_are_refused():
    with pytest.raises(ValueError, match="differ in length"):
        stream_copy(np.empty(64, np.uint8), np.zeros(63, np.uint8))
    with pytest.raises(ValueError, match="do not match"):
        stream_unshuffle(np.empty(64, np.uint8), np.zeros(66, np.uint8))
    src = np.zeros(3 * 32, np.uint8)
    with pytest.raises(ValueError, match="outside the source"):
        copy_planes(src, 32, np.array([1, 3]), np.empty(64, np.uint8))
    with pytest.raises(ValueError, match="one plane per band"):
        copy_planes(src, 32, np.array([1]), np.empty(64, np.uint8))


def test_the_compiled_writers_use_non_temporal_stores_on_x86():
    import platform

    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("the instruction names checked are x86's")
    from numba import njit

    for writer, args in ((stream_copy, (np.empty(256, np.uint8), np.zeros(256, np.uint8))),
                         (stream_unshuffle, (np.empty(256, np.uint8), np.zeros(256, np.uint8)))):
        fresh = njit(writer.py_func)  # compiled here: a dispatcher loaded from numba's cache has no assembly
        fresh(*args)
        asm = fresh.inspect_asm(fresh.signatures[0])
        assert re.search(r"\bv?movnt", asm) and "sfence" in asm, writer.__name__


@pytest.mark.parametrize("real", sorted(REAL.glob("*_s2_*.tif"))[:1] or [None])
def test_uncompressed_bands_of_a_real_patch_are_taken_as_numpy_takes_them(real):
    if real is None:
        pytest.skip(f"no real S2 patch in {REAL}")
    import rasterio

    with rasterio.open(real) as ds:
        s2 = ds.read().astype(np.uint16)
    raw = np.frombuffer(s2.astype("<u2").tobytes(), dtype=np.uint8)
    bands = [1, 2, 3, 7, 10, 12]
    out = np.empty((len(bands),) + s2.shape[1:], dtype=np.uint16)
    take_planes(raw, bands, out)
    assert np.array_equal(out, s2[bands])
    # And through the format's decoder, as the loader decodes an uncompressed member.
    layout = sf.SampleLayout(codec="none", level=0, modalities=("s2",), size=s2.shape[1])
    again = np.zeros_like(out)
    sf.decode_bands_into({layout.ext("s2"): memoryview(raw)}, "s2", layout, bands, again, codecs.BandDecoder())
    assert np.array_equal(again, s2[bands])


def test_zstd_bands_decode_into_a_strided_batch_too():
    """A destination that is not contiguous (every other column of a wider array) gets the band
    values, and the columns in between stay as they were."""
    bands = np.random.default_rng(5).integers(0, 65536, (3, 16, 16), dtype=np.uint16)
    frames = [codecs.encode_band(b, "zstd", 3) for b in bands]
    data = b"".join(frames)
    starts = np.concatenate([[0], np.cumsum([len(f) for f in frames])]).tolist()
    full = np.zeros((2, 16, 32), dtype=np.uint16)
    codecs.BandDecoder().decode_run(data, starts, "zstd", [2, 0], full[:, :, ::2], np.dtype("<u2"))
    assert np.array_equal(full[:, :, ::2], bands[[2, 0]]) and not full[:, :, 1::2].any()
