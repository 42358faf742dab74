"""The fused CPU kernels of the DALI graph: a sample's band members decoded straight into its
channels of the batch (zstd, or uncompressed and lz4 after their decode), normalised or uint16,
and the label member checked; they build on the decoders and band writers of `dali_ops`."""

from __future__ import annotations

from functools import lru_cache
from typing import Callable

import numpy as np

from .dali_ops import Kernel, band_writer, do_not_convert, frame_decoder


@lru_cache(maxsize=1)
@do_not_convert
def _chunk_starts() -> Callable:
    """njit `starts_of(sizes, n, total)`: chunk start offsets (n + 1,) of a member of `total`
    bytes from its n chunk sizes; empty when the sizes do not describe the member."""
    from numba import njit  # start-up time: numba only when used

    @njit
    def starts_of(sizes, n, total):
        st = np.empty(n + 1, dtype=np.int64)
        if sizes.shape[0] != n:
            return st[:0]
        st[0] = 0
        for i in range(n):
            if sizes[i] <= 0:
                return st[:0]
            st[i + 1] = st[i] + sizes[i]
        return st if st[n] == total else st[:0]

    return starts_of


def _channels_setup(channels: int, h: int, w: int) -> Callable:
    """The setup of a fused kernel: output 0 is (channels, h, w), output 1 a status (1,).

    The channel count is compiled in: DALI 2.4's setup function sees only as many inputs as
    the kernel has outputs, so it cannot read the parameter input's shape."""

    def setup_fn(outs, ins):
        for i in range(len(outs[0])):
            outs[0][i][0] = channels
            outs[0][i][1] = h
            outs[0][i][2] = w
            outs[1][i][0] = 1

    return setup_fn


@lru_cache(maxsize=16)
@do_not_convert
def zstd_channels_kernel(n_bands: tuple[int, ...], chunk_shape: tuple[int, int], channels: int, normalised: bool,
                         byte_shuffle: bool, frame_checksums: bool = True) -> Kernel:
    """(zstd member, its int32 chunk sizes member) of one or two modalities (`n_bands` each), and
    `channel_params` -> the input's (C, H, W) channels, each band decoded from its frame straight
    into its channel (normalised as `channels_kernel` does, or uint16 as stored), and a status.

    The CPU graph's zstd path in one pass: no (k, H, W) array per modality in between, one
    decompression context per sample instead of one per band. Without `frame_checksums` the
    frames' own checksums are not checked (their shard's has been)."""
    from numba import njit  # start-up time: numba only when used

    h, w = chunk_shape
    plane = h * w
    nbytes = 2 * plane
    na, nb = n_bands[0], n_bands[-1]
    new_context, decode, free = frame_decoder(nbytes, frame_checksums)
    starts_of = _chunk_starts()
    unshuffle = band_writer(plane, normalised, byte_shuffle)

    @njit
    def fill(out, status, a, asz, b, bsz, params):
        status[0] = 0
        flat_out = out.reshape(out.size)
        sa, sb = starts_of(asz, na, a.shape[0]), starts_of(bsz, nb, b.shape[0])
        if sa.shape[0] == 0 or sb.shape[0] == 0:
            status[0] = 2
            flat_out[:] = 0
            return
        buf = np.empty(nbytes, dtype=np.uint8)
        dctx = new_context()
        for ch in range(params.shape[1]):
            src, st = (a, sa) if params[0, ch] == 0 else (b, sb)
            band = int(params[1, ch])
            if not decode(dctx, buf, src, st[band], st[band + 1]):
                status[0] = 1
                flat_out[:] = 0
                break
            unshuffle(flat_out[ch * plane:(ch + 1) * plane], buf, params[2, ch], params[3, ch], params[4, ch])
        free(dctx)

    if len(n_bands) == 1:
        def run_fn(out, status, a, asz, params):
            fill(out, status, a, asz, a, asz, params)
    else:
        def run_fn(out, status, a, asz, b, bsz, params):
            fill(out, status, a, asz, b, bsz, params)

    return Kernel(run_fn, _channels_setup(channels, h, w), ("UINT8", "INT32") * len(n_bands) + ("FLOAT",),
                  ("FLOAT" if normalised else "UINT16", "INT32"), (1, 1) * len(n_bands) + (2,), (3, 1))


def channel_params(sources: list[tuple[int, int]], scale=None, offset=None, clip=None) -> np.ndarray:
    """The float32 (5, C) parameter input of `channels_kernel`: per output channel its input,
    its band position there, and scale, offset, clip (1, 0, inf without normalisation)."""
    c = len(sources)
    p = np.empty((5, c), dtype=np.float32)
    p[0] = [i for i, _ in sources]
    p[1] = [b for _, b in sources]
    p[2] = np.ones(c) if scale is None else np.asarray(scale, dtype=np.float32)
    p[3] = np.zeros(c) if offset is None else np.asarray(offset, dtype=np.float32)
    p[4] = np.full(c, np.inf) if clip is None else np.asarray(clip, dtype=np.float32)
    return p


@lru_cache(maxsize=16)
@do_not_convert
def channels_kernel(ins_ndim: tuple[int, ...], chunk_shape: tuple[int, int], channels: int, normalised: bool,
                    lengths: tuple[int, ...] = ()) -> Kernel:
    """(one or two uint16 arrays, `channel_params`) -> the input's (C, H, W) channels in one pass,
    and a status (`STATUS_SIZE` where an input is too short for a band it should hold).

    Inputs are 1-D raw members (all bands; `lengths`: the values each must hold, as the
    webdataset loader requires, 0 or none given: not checked) or 3-D decoded arrays. Normalised: float32
    `min(x, clip) * scale + offset` with the same float32 operations in the same order as
    `ChannelTransform.apply` and the training loop, so the same values; else uint16 as stored.
    One pass replaces DALI's slice, concatenate, cast, min, multiply and add operators, which
    each walk the whole array on the CPU.
    """
    from numba import njit  # start-up time: numba only when used

    h, w = chunk_shape
    plane = h * w
    la, lb = (tuple(lengths) + (0, 0))[:2] if len(ins_ndim) > 1 else ((tuple(lengths) + (0,))[0],) * 2

    @njit
    def fill(out, status, a, b, params):
        status[0] = 0
        flat_out = out.reshape(out.size)
        fa = a.reshape(a.size)
        fb = b.reshape(b.size)
        if (la > 0 and fa.shape[0] != la) or (lb > 0 and fb.shape[0] != lb):
            status[0] = 4
            flat_out[:] = 0
            return
        for ch in range(params.shape[1]):
            src = fa if params[0, ch] == 0 else fb
            base = int(params[1, ch]) * plane
            dst = ch * plane
            if base + plane > src.shape[0]:
                status[0] = 4
                flat_out[:] = 0
                return
            x, y = src[base:base + plane], flat_out[dst:dst + plane]  # slices: vectorised loops
            if normalised:
                s, o, hi = params[2, ch], params[3, ch], params[4, ch]
                for i in range(plane):
                    v = np.float32(x[i])
                    if v > hi:
                        v = hi
                    y[i] = v * s + o
            else:
                for i in range(plane):
                    y[i] = x[i]

    if len(ins_ndim) == 1:
        def run_fn(out, status, a, params):
            fill(out, status, a, a, params)
    else:
        def run_fn(out, status, a, b, params):
            fill(out, status, a, b, params)

    return Kernel(run_fn, _channels_setup(channels, h, w), ("UINT16",) * len(ins_ndim) + ("FLOAT",),
                  ("FLOAT" if normalised else "UINT16", "INT32"), tuple(ins_ndim) + (2,), (3, 1))


@lru_cache(maxsize=1)
@do_not_convert
def label_kernel(n_label: int) -> Kernel:
    """A label member (float32 values) -> its `n_label` values and a status: `STATUS_LABEL` (and
    zeros) where it holds another number of values, which the webdataset loader refuses too."""

    def run_fn(out, status, label):
        if label.shape[0] != n_label:
            status[0] = 8
            out[:] = 0
            return
        status[0] = 0
        out[:] = label

    def setup_fn(outs, ins):
        for i in range(len(outs[0])):
            outs[0][i][0] = n_label
            outs[1][i][0] = 1

    return Kernel(run_fn, setup_fn, ("FLOAT",), ("FLOAT", "INT32"), (1,), (1, 1))
