"""Bands written into a batch with non-temporal stores (compiled with numba).

A batch is written once and read next by another thread, another process or a GPU's DMA: its
lines need not pass through this core's caches, and a non-temporal store saves reading each
destination line from memory before writing it (docs/performance.md: the measurements).
"""

from __future__ import annotations

import platform

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

LINE = 64  # bytes per store: one cache line
_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


def _drain(builder: ir.IRBuilder) -> None:
    # Non-temporal stores are weakly ordered: they must be visible before the batch is handed on.
    if _X86:
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []), "llvm.x86.sse.sfence")
        builder.call(fn, [])
    else:
        builder.fence("seq_cst")


@intrinsic
def _stream_lines(typingctx, dst, src, lines):
    """Copy `lines` * 64 bytes from address `src` to the 64-byte aligned address `dst`."""
    sig = types.void(types.intp, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        d, s, n = args
        vec = ir.VectorType(ir.IntType(64), LINE // 8)
        nontemporal = builder.module.add_metadata([ir.Constant(ir.IntType(32), 1)])
        with cgutils.for_range(builder, n) as loop:
            at = builder.mul(loop.index, ir.Constant(n.type, LINE))
            value = builder.load(builder.inttoptr(builder.add(s, at), vec.as_pointer()), align=1)
            store = builder.store(value, builder.inttoptr(builder.add(d, at), vec.as_pointer()), align=LINE)
            store.set_metadata("nontemporal", nontemporal)
        _drain(builder)
        return context.get_dummy_value()

    return sig, codegen


@njit(nogil=True, cache=True)
def stream_copy(dst, src):  # pragma: no cover - compiled; tests call it
    """dst[:] = src[:] (1-D uint8 arrays of one length), the aligned middle of `dst` written
    with non-temporal stores."""
    n = dst.shape[0]
    if src.shape[0] != n:
        raise ValueError("stream_copy: source and destination differ in length")
    head = min((-dst.ctypes.data) % LINE, n)
    for i in range(head):
        dst[i] = src[i]
    lines = (n - head) // LINE
    _stream_lines(dst.ctypes.data + head, src.ctypes.data + head, lines)
    for i in range(head + lines * LINE, n):
        dst[i] = src[i]


@njit(nogil=True, cache=True)
def copy_planes(src, plane_bytes, bands, dst):  # pragma: no cover - compiled; tests call it
    """Planes bands[i] of `src` (uint8, planes of `plane_bytes` back to back) into plane i of
    `dst` (uint8), through `stream_copy`; a band outside `src` raises ValueError."""
    if dst.shape[0] != bands.shape[0] * plane_bytes:
        raise ValueError("copy_planes: the destination does not hold one plane per band")
    for i in range(bands.shape[0]):
        b = bands[i]
        if b < 0 or (b + 1) * plane_bytes > src.shape[0]:
            raise ValueError("copy_planes: a band outside the source")
        stream_copy(dst[i * plane_bytes:(i + 1) * plane_bytes], src[b * plane_bytes:(b + 1) * plane_bytes])


def take_planes(src: np.ndarray, bands, out: np.ndarray) -> None:
    """`out[i] = planes[bands[i]]` for a C-contiguous `out` ((k, ...), any dtype) and `src` the
    planes' bytes (uint8, contiguous, possibly read-only)."""
    plane = out[0].nbytes if len(out) else 0
    copy_planes(src, plane, np.asarray(bands, dtype=np.intp), out.reshape(-1).view(np.uint8))


@intrinsic
def _stream_interleave(typingctx, dst, lo, hi, lines):
    """`lines` 64-byte lines at the 64-byte aligned address `dst`, line j the bytes at lo + 32j and
    hi + 32j interleaved (lo[0], hi[0], lo[1], ...): little-endian uint16 from shuffled bytes."""
    sig = types.void(types.intp, types.intp, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        d, lo_at, hi_at, n = args
        half = ir.VectorType(ir.IntType(8), LINE // 2)
        order = ir.Constant(ir.VectorType(ir.IntType(32), LINE),
                            [v for i in range(LINE // 2) for v in (i, i + LINE // 2)])
        nontemporal = builder.module.add_metadata([ir.Constant(ir.IntType(32), 1)])
        with cgutils.for_range(builder, n) as loop:
            at = builder.mul(loop.index, ir.Constant(n.type, LINE // 2))
            a = builder.load(builder.inttoptr(builder.add(lo_at, at), half.as_pointer()), align=1)
            b = builder.load(builder.inttoptr(builder.add(hi_at, at), half.as_pointer()), align=1)
            line = builder.shuffle_vector(a, b, order)
            to = builder.inttoptr(builder.add(d, builder.add(at, at)), ir.VectorType(ir.IntType(8), LINE).as_pointer())
            builder.store(line, to, align=LINE).set_metadata("nontemporal", nontemporal)
        _drain(builder)
        return context.get_dummy_value()

    return sig, codegen


@njit(nogil=True, cache=True)
def stream_unshuffle(dst, raw):  # pragma: no cover - compiled; tests call it
    """dst (2n bytes: n little-endian uint16) from raw (n low bytes, then n high bytes), the
    aligned middle of `dst` written with non-temporal stores."""
    n = dst.shape[0] // 2
    if dst.shape[0] != 2 * n or raw.shape[0] != 2 * n:
        raise ValueError("stream_unshuffle: sizes do not match")
    head = min(((-dst.ctypes.data) % LINE) // 2, n)
    if (dst.ctypes.data + 2 * head) % LINE != 0:
        head = n  # an odd address: no aligned lines
    for i in range(head):
        dst[2 * i] = raw[i]
        dst[2 * i + 1] = raw[n + i]
    lines = (n - head) // (LINE // 2)
    _stream_interleave(dst.ctypes.data + 2 * head, raw.ctypes.data + head, raw.ctypes.data + n + head, lines)
    for i in range(head + lines * (LINE // 2), n):
        dst[2 * i] = raw[i]
        dst[2 * i + 1] = raw[n + i]
