"""CPU decoders for the DALI pipeline: numba kernels that call libzstd / liblz4 through ctypes."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import numpy as np

from sen12ms_common.format.memberchecks import content_size_fn
from sen12ms_common.format.nativecodecs import (ZSTD_D_FORCE_IGNORE_CHECKSUM, lz4_decompress_fn,  # noqa: F401
                                                zstd_checksum_switch, zstd_context_fns, zstd_decompress_fn)

try:  # DALI's AutoGraph must not rewrite the kernels these factories create (numba compiles them)
    from nvidia.dali.pipeline import do_not_convert
except ImportError:  # pragma: no cover - the kernels are plain functions without DALI as well
    def do_not_convert(func):
        return func

# Status bits (statuses of a sample's members are OR-ed together).
STATUS_OK = 0
STATUS_DECOMPRESS = 1   # the codec reported an error or produced the wrong number of bytes
STATUS_CHUNKS = 2       # chunk sizes that do not match the member
STATUS_SIZE = 4         # a raw member of another size than its bands
STATUS_LABEL = 8        # a label member that does not hold N_LABEL float32 values

STATUS_TEXT: dict[int, str] = {
    STATUS_DECOMPRESS: "an array member does not decompress to its size",
    STATUS_CHUNKS: "the chunk sizes of an array member do not match its length",
    STATUS_SIZE: "a raw array member does not hold the layout's bands (another size)",
    STATUS_LABEL: "the label member does not hold 17 float32 values",
}


def status_text(status: int) -> str:
    """What the bits of a sample's status say, in words."""
    return "; ".join(text for bit, text in STATUS_TEXT.items() if status & bit) or f"status {status}"


@dataclass(frozen=True)
class Kernel:
    """A `fn.numba_function` run/setup pair and the types it declares."""

    run_fn: Callable
    setup_fn: Callable
    in_types: tuple[str, ...]   # DALI type names: resolved by the pipeline builder
    out_types: tuple[str, ...]
    ins_ndim: tuple[int, ...]
    outs_ndim: tuple[int, ...]


# --- kernels ----------------------------------------------------------------------------------
# Band choices and normalisation constants are inputs (constant tensors), not compiled in:
# compiling a kernel for DALI takes about a second, so one kernel serves every input set.

def _planes_setup(h: int, w: int) -> Callable:
    """The setup of a kernel whose 2nd input lists k bands: output 0 is (k, h, w), output 1 a status (1,)."""

    def setup_fn(outs, ins):
        for i in range(len(outs[0])):
            outs[0][i][0] = ins[1][i][0]
            outs[0][i][1] = h
            outs[0][i][2] = w
            outs[1][i][0] = 1

    return setup_fn


@lru_cache(maxsize=16)
@do_not_convert
def band_writer(plane: int, normalised: bool, byte_shuffle: bool) -> Callable:
    """njit `write(y, buf, scale, offset, clip)`: one decoded band in `buf` (2 * plane bytes,
    byte-shuffled or interleaved little-endian) into `y` (plane values), as uint16, or clipped at
    `clip`, scaled and offset (`normalised`)."""
    from numba import njit  # start-up time: numba only when used

    nbytes = 2 * plane

    # Loops over slices (not offsets into a whole array): numba vectorises these, about 15x the
    # speed (docs/performance.md).
    @njit
    def to_channel(y, lo, hi, s, o, hi_clip):
        for i in range(plane):
            x = np.uint16(lo[i]) | (np.uint16(hi[i]) << np.uint16(8))
            if normalised:
                v = np.float32(x)
                if v > hi_clip:
                    v = hi_clip
                y[i] = v * s + o
            else:
                y[i] = x

    if not normalised:  # as stored: written past the caches (the batch is read elsewhere next)
        from sen12ms_common.kernels.streamcopy import stream_copy, stream_unshuffle  # start-up time: numba only when used

        place = stream_unshuffle if byte_shuffle else stream_copy

        @njit
        def write(y, buf, s, o, hi_clip):
            place(y.view(np.uint8), buf[:nbytes])
    elif byte_shuffle:  # all low bytes, then all high bytes: contiguous slices
        @njit
        def write(y, buf, s, o, hi_clip):
            to_channel(y, buf[:plane], buf[plane:nbytes], s, o, hi_clip)
    else:
        @njit
        def write(y, buf, s, o, hi_clip):
            to_channel(y, buf[0:nbytes:2], buf[1:nbytes:2], s, o, hi_clip)
    return write


@lru_cache(maxsize=2)
@do_not_convert
def context_maker(frame_checksums: bool) -> Callable:
    """njit `new()`: a libzstd decompression context (free it with `ZSTD_freeDCtx`) that checks
    the frames' own checksums, or (not `frame_checksums`: their shard's has been) skips them."""
    from numba import njit  # start-up time: numba only when used

    create, ignore = zstd_context_fns()[2], zstd_checksum_switch()

    @njit
    def new():
        dctx = create()
        if not frame_checksums:
            ignore(dctx, ZSTD_D_FORCE_IGNORE_CHECKSUM, 1)
        return dctx

    return new


@lru_cache(maxsize=4)
@do_not_convert
def frame_decoder(nbytes: int, frame_checksums: bool) -> tuple[Callable, Callable, Callable]:
    """njit `new()`, `decode(dctx, buf, src, start, stop)` and `free(dctx)`: the zstd setup of
    every CPU kernel. `decode` writes the frame `src[start:stop]` (one band of `nbytes` bytes)
    into `buf` with the context `dctx` from `new` (`context_maker`), and says whether it held
    exactly that band."""
    from numba import njit  # start-up time: numba only when used

    decompress, is_error, _, free = zstd_context_fns()
    frame_size = content_size_fn()

    @njit
    def decode(dctx, buf, src, start, stop):
        # The webdataset loader's rule (`memberchecks`): a frame declaring the band's size.
        if frame_size(src[start:stop]) != nbytes:
            return False
        # At most `nbytes` are written, whatever the frame declares.
        got = decompress(dctx, buf.ctypes.data, nbytes, src.ctypes.data + start, stop - start)
        return is_error(got) == 0 and got == nbytes

    return context_maker(frame_checksums), decode, free


@lru_cache(maxsize=16)  # one Kernel per configuration: DALI compiles each once per process
@do_not_convert
def zstd_kernel(chunk_shape: tuple[int, int], byte_shuffle: bool, frame_checksums: bool = True) -> Kernel:
    """(member, int32 offsets (k,), int32 sizes (k,)) -> the zstd frames there (one uint16 band
    each, byte-shuffled when `byte_shuffle`) decoded as (k, H, W), and a status. Without
    `frame_checksums` the frames' own checksums are not checked (their shard's has been)."""
    h, w = chunk_shape
    plane = h * w
    nbytes = 2 * plane
    new_context, decode, free = frame_decoder(nbytes, frame_checksums)
    write = band_writer(plane, False, byte_shuffle)

    def run_fn(out, status, src, offsets, sizes):
        status[0] = 0
        buf = np.empty(nbytes, dtype=np.uint8)
        flat = out.reshape(out.size)
        dctx = new_context()
        for j in range(offsets.shape[0]):
            start, stop = offsets[j], offsets[j] + sizes[j]
            if start < 0 or stop <= start or stop > src.shape[0] or not decode(dctx, buf, src, start, stop):
                status[0] = 1
                out[:] = 0
                break
            write(flat[j * plane:(j + 1) * plane], buf, 1.0, 0.0, 0.0)
        free(dctx)

    setup_fn = _planes_setup(h, w)

    return Kernel(run_fn, setup_fn, ("UINT8", "INT32", "INT32"), ("UINT16", "INT32"), (1, 1, 1), (3, 1))


@lru_cache(maxsize=16)
@do_not_convert
def chunks_kernel(n_bands: int) -> Kernel:
    """(chunked member, its int32 sizes member (n_bands,), int32 band indices (k,)) -> int32
    `chunk_offsets` (k,), int32 `chunk_sizes` (k,) of those bands, status (1,).

    Feeds DALI's GPU `inflate` (lz4) and the CPU kernels `lz4_kernel` and `zstd_kernel`, so every
    path decodes exactly the chunks this (tested) function picks. Only the member's length is read.
    """

    def run_fn(offsets, sizes, status, src, all_sizes, bands):
        status[0] = 0
        ok = all_sizes.shape[0] == n_bands
        total = 0
        if ok:
            for i in range(n_bands):
                if all_sizes[i] <= 0:
                    ok = False
                total += all_sizes[i]
        if not ok or total != src.shape[0]:
            status[0] = 2
            offsets[:] = 0
            sizes[:] = 0
            return
        for j in range(bands.shape[0]):
            start = 0
            for i in range(bands[j]):
                start += all_sizes[i]
            offsets[j] = start
            sizes[j] = all_sizes[bands[j]]

    def setup_fn(outs, ins):
        for i in range(len(outs[0])):
            outs[0][i][0] = ins[2][i][0]
            outs[1][i][0] = ins[2][i][0]
            outs[2][i][0] = 1

    return Kernel(run_fn, setup_fn, ("UINT8", "INT32", "INT32"), ("INT32", "INT32", "INT32"), (1, 1, 1), (1, 1, 1))


@lru_cache(maxsize=16)
@do_not_convert
def lz4_kernel(chunk_shape: tuple[int, int]) -> Kernel:
    """CPU stand-in for DALI's GPU `inflate`: (member, int32 offsets (k,), int32 sizes (k,)) ->
    the LZ4 blocks there decoded as uint16 (k, H, W), and a status."""
    decompress = lz4_decompress_fn()
    h, w = chunk_shape
    chunk_bytes = 2 * h * w

    def run_fn(out, status, src, offsets, sizes):
        status[0] = 0
        for j in range(offsets.shape[0]):
            if offsets[j] < 0 or sizes[j] <= 0 or offsets[j] + sizes[j] > src.shape[0]:
                status[0] = 1
                out[:] = 0
                return
            got = decompress(src.ctypes.data + offsets[j], out.ctypes.data + j * chunk_bytes, sizes[j], chunk_bytes)
            if got != chunk_bytes:
                status[0] = 1
                out[:] = 0
                return

    setup_fn = _planes_setup(h, w)

    return Kernel(run_fn, setup_fn, ("UINT8", "INT32", "INT32"), ("UINT16", "INT32"), (1, 1, 1), (3, 1))
