"""Stored uint16 bands -> normalised float32 in one pass, written with non-temporal stores
(compiled with numba).

`min(x, clip) * scale + offset` per channel, rounded as torch's and numpy's separate float32
operations round (a multiply, then an add: never fused), so the values equal the reference
`ChannelTransform.apply` bit for bit. The float batch is four times the bytes read; streaming it
past the caches is what makes one pass cheaper than converting in cache-sized chunks
(docs/performance.md: the measurements).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from .streamcopy import LINE, _drain

LANES = LINE // 4  # float32 values per 64-byte line


def _splat(builder: ir.IRBuilder, value: ir.Value) -> ir.Value:
    vec = ir.VectorType(ir.FloatType(), LANES)
    one = builder.insert_element(ir.Constant(vec, ir.Undefined), value, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(one, one, ir.Constant(ir.VectorType(ir.IntType(32), LANES), [0] * LANES))


@intrinsic
def _stream_lines_affine(typingctx, dst, src, lines, clip, scale, offset):
    """`lines` * 16 float32 at the 64-byte aligned address `dst` from as many uint16 at `src`."""
    sig = types.void(types.intp, types.intp, types.intp, types.float32, types.float32, types.float32)

    def codegen(context, builder, signature, args):
        d, s, n, c, a, b = args
        floats, words = ir.VectorType(ir.FloatType(), LANES), ir.VectorType(ir.IntType(16), LANES)
        bound, times, plus = _splat(builder, c), _splat(builder, a), _splat(builder, b)
        nontemporal = builder.module.add_metadata([ir.Constant(ir.IntType(32), 1)])
        with cgutils.for_range(builder, n) as loop:
            at = builder.mul(loop.index, ir.Constant(n.type, 2 * LANES))
            x = builder.uitofp(builder.load(builder.inttoptr(builder.add(s, at), words.as_pointer()), align=2), floats)
            x = builder.select(builder.fcmp_ordered("<", x, bound), x, bound)
            x = builder.fadd(builder.fmul(x, times), plus)
            to = builder.inttoptr(builder.add(d, builder.add(at, at)), floats.as_pointer())
            builder.store(x, to, align=LINE).set_metadata("nontemporal", nontemporal)
        _drain(builder)
        return context.get_dummy_value()

    return sig, codegen


@njit(nogil=True, cache=True)
def _affine_one(src, dst, start, stop, clip, scale, offset):  # pragma: no cover - compiled
    for i in range(start, stop):
        v = np.float32(src[i])
        if not v < clip:
            v = clip
        dst[i] = v * scale + offset


@njit(nogil=True, cache=True)
def stream_affine(src, dst, clip, scale, offset):  # pragma: no cover - compiled; tests call it
    """dst[b, c] = min(src[b, c], clip[c]) * scale[c] + offset[c] for src (B, C, P) uint16 and
    dst (B, C, P) float32, both C-contiguous; clip / scale / offset float32 (C,). The aligned middle
    of each plane is written with non-temporal stores."""
    if src.shape != dst.shape:
        raise ValueError("stream_affine: source and destination differ in shape")
    if clip.shape[0] != src.shape[1] or scale.shape[0] != src.shape[1] or offset.shape[0] != src.shape[1]:
        raise ValueError("stream_affine: not one clip, scale and offset per channel")
    n = src.shape[2]
    for b in range(src.shape[0]):
        for c in range(src.shape[1]):
            s, d = src[b, c], dst[b, c]
            head = n
            if d.ctypes.data % 4 == 0:
                head = min(((-d.ctypes.data) % LINE) // 4, n)
            lines = (n - head) // LANES
            _affine_one(s, d, 0, head, clip[c], scale[c], offset[c])
            _stream_lines_affine(d.ctypes.data + 4 * head, s.ctypes.data + 2 * head, lines, clip[c], scale[c], offset[c])
            _affine_one(s, d, head + lines * LANES, n, clip[c], scale[c], offset[c])
