"""Band codecs of the shard format: one (H, W) band in, one member chunk out, and back.

`zstd` and `lz4` store each band of an array as its own chunk (a zstd frame, an LZ4 block), so
a reader decodes only the bands its input uses; uint16 bands are byte-shuffled before zstd.
Decoding never produces more bytes than a band holds, whatever a chunk declares.
"""

from __future__ import annotations

import itertools
import struct
from functools import lru_cache
from typing import Sequence

import numpy as np

from ..errors import ShardError, UnavailableError
from ..kernels import compiled as compiled_kernels
from .memberchecks import content_size_fn
from .nativecodecs import lz4_decompress_fn, zstd_context_fns, zstd_ignore_checksums

CODECS: tuple[str, ...] = ("zstd", "lz4", "none")
CHUNKED: frozenset[str] = frozenset({"zstd", "lz4"})  # one chunk per band, sizes in a member


@lru_cache(maxsize=8)
def _zstd_compressor(level: int):
    import zstandard  # sen12ms_common imports only numpy when imported

    # Single-threaded and with a frame checksum: the bytes are the same for any worker count and
    # a damaged chunk fails to decode instead of yielding wrong pixels.
    return zstandard.ZstdCompressor(level=level, write_content_size=True, write_checksum=True, threads=0)


def shuffle_bytes(band: np.ndarray) -> bytes:
    """uint16 values -> all their low bytes, then all their high bytes."""
    le = np.ascontiguousarray(band, dtype="<u2")
    return le.view(np.uint8).reshape(-1, 2).T.tobytes()


def unshuffle_into(raw: bytes | memoryview | np.ndarray, dst: np.ndarray) -> None:
    """Inverse of `shuffle_bytes`, written into the uint16 array `dst` (its size in values)."""
    unshuffle_run(np.frombuffer(raw, dtype=np.uint8, count=2 * dst.size), dst[np.newaxis])


@lru_cache(maxsize=1)
def _content_size():
    return content_size_fn()


def unshuffle_run(raw: np.ndarray, out: np.ndarray, compiled: bool = True) -> None:
    """k byte-shuffled bands back to back in `raw` (uint8) -> `out` (k, H, W) uint16, in one
    compiled pass where numba is there (`compiled`), else in numpy's two."""
    k = out.shape[0]
    kernels = compiled_kernels("unshuffle") if compiled else None
    fn = kernels.unshuffle_planes if kernels is not None else None
    if fn is not None and out.flags.c_contiguous and raw.flags.c_contiguous:
        fn(raw.reshape(k, -1), out.reshape(k, -1))
        return
    planes = raw.reshape((k, 2) + out.shape[1:])
    # Two vectorised passes (shift, or) beat a strided byte interleave by about 2x.
    np.left_shift(planes[:, 1], 8, out=out, dtype=np.uint16)
    np.bitwise_or(out, planes[:, 0], out=out, dtype=np.uint16)


def encode_band(band: np.ndarray, codec: str, level: int, shuffle: bool = True) -> bytes:
    """One band (H, W), already in its stored dtype, as one chunk; `shuffle`: uint16 bands are
    byte-shuffled before zstd."""
    a = np.ascontiguousarray(band)
    if codec == "none":
        return a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
    if codec == "zstd":
        raw = shuffle_bytes(a) if shuffle and a.dtype.itemsize == 2 else a.astype(a.dtype.newbyteorder("<")).tobytes()
        return _zstd_compressor(level).compress(raw)
    if codec == "lz4":
        import lz4.block  # sen12ms_common imports only numpy when imported

        return lz4.block.compress(a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes(),
                                  mode="default", store_size=False)
    raise ShardError(f"unknown codec {codec!r} (expected one of {CODECS})")


def chunk_offsets(sizes_raw: bytes | memoryview, n_bands: int, total: int) -> list[int]:
    """Start offsets (n_bands + 1) of the chunks that a sizes member describes."""
    if len(sizes_raw) != 4 * n_bands:
        raise ShardError(f"its chunk sizes member holds {len(sizes_raw)} bytes, expected {4 * n_bands}")
    # Plain ints: a dozen numbers, where numpy calls would cost more than the work (under the GIL).
    sizes = struct.unpack(f"<{n_bands}i", sizes_raw)
    if min(sizes, default=1) <= 0 or sum(sizes) != total:
        raise ShardError("its chunk sizes do not match its length")
    return [0, *itertools.accumulate(sizes)]


class BandDecoder:
    """Decodes chunks into bands through the C libraries (GIL released, straight into the band or
    into a reused scratch buffer); falls back to the Python packages where a library is not
    found. Holds a zstd context and a scratch buffer: one per thread. `frame_checksums=False`:
    zstd frames are not checked against their own checksums (for chunks of a shard whose
    checksum has been checked as a whole)."""

    def __init__(self, frame_checksums: bool = True) -> None:
        import zstandard  # sen12ms_common imports only numpy when imported

        self._frame_size = _content_size()
        self._zstd_py = zstandard.ZstdDecompressor()
        try:
            self._zstd, self._zstd_error, create, self._free = zstd_context_fns()
            self._dctx = create()  # a decompression context of this decoder's own, reused
            self.frame_checksums = frame_checksums or not zstd_ignore_checksums(self._dctx)
        except UnavailableError:
            self._zstd, self.frame_checksums = None, True
        try:
            self._lz4 = lz4_decompress_fn()
        except UnavailableError:
            self._lz4 = None
        self._scratch = np.empty(0, dtype=np.uint8)

    def decode_run(self, data: bytes | memoryview, starts: Sequence[int], codec: str, bands: Sequence[int],
                   out: np.ndarray, stored: np.dtype, shuffle: bool = True) -> None:
        """Decode the chunks of `bands` (chunk b spans data[starts[b]:starts[b + 1]]) into out[i]
        ((k, H, W)): one C call per band, and one compiled pass per band for the byte shuffle."""
        native = self._zstd if codec == "zstd" else self._lz4 if codec == "lz4" else None
        if codec != "none" and native is None or out.dtype not in (stored, np.uint16):
            for i, b in enumerate(bands):
                self.decode_into(data[starts[b]:starts[b + 1]], codec, out[i], stored, shuffle)
            return
        plane = out[0].size
        nbytes = plane * stored.itemsize
        src = np.frombuffer(data, dtype=np.uint8)
        # The streaming writers take a contiguous batch slot (as the loaders hand over).
        streaming = compiled_kernels("streamcopy") if out.flags.c_contiguous else None
        if codec == "none":
            if streaming is not None and out.dtype == stored.newbyteorder("<"):
                streaming.take_planes(src, bands, out)
                return
            whole = src.view(stored.newbyteorder("<")).reshape((-1,) + out.shape[1:])
            out[...] = whole[list(bands)]
            return
        # Byte-shuffled bands pass through one band of scratch, still in the core's cache when
        # the shuffle is undone; lz4 bands that the batch holds as stored are decoded in place.
        shuffled = codec == "zstd" and shuffle and stored.itemsize == 2
        direct = codec == "lz4" and out.dtype == stored and out.flags.c_contiguous
        scratch = nbytes if shuffled else len(bands) * nbytes
        target = out.reshape(-1).view(np.uint8) if direct else self._scratch_of(scratch)
        base, src_at = target.__array_interface__["data"][0], src.__array_interface__["data"][0]
        for i, b in enumerate(bands):
            a, e = starts[b], starts[b + 1]
            at = base if shuffled else base + i * nbytes
            if codec == "zstd":
                self._check_frame(data[a:e], nbytes)
                got = native(self._dctx, at, nbytes, src_at + a, e - a)
                ok = not self._zstd_error(got) and got == nbytes
            else:
                got = native(src_at + a, at, e - a, nbytes)
                ok = got == nbytes
            if not ok:
                raise ShardError(f"does not decompress ({codec} reports a damaged chunk of band {b})")
            if shuffled and streaming is not None:
                streaming.stream_unshuffle(out[i].reshape(-1).view(np.uint8), target)
            elif shuffled:
                unshuffle_run(target, out[i:i + 1])
        if not (direct or shuffled):
            out[...] = target.view(stored.newbyteorder("<")).reshape(out.shape)

    def _check_frame(self, chunk: bytes | memoryview, nbytes: int) -> None:
        """A frame declaring another size than a band is refused before anything is decoded."""
        # The rule the DALI loader's kernels apply too (`memberchecks`): both accept the same frames.
        declared = self._frame_size(np.frombuffer(chunk, dtype=np.uint8))
        if declared == -2:
            raise ShardError("does not decompress (no zstd frame header)")
        if declared != nbytes:
            what = f"{declared} bytes" if declared >= 0 else "no content size"
            raise ShardError(f"declares {what} for a band of {nbytes}")

    def decode_into(self, chunk: bytes | memoryview, codec: str, dst: np.ndarray, stored: np.dtype,
                    shuffle: bool = True) -> None:
        """Decode one chunk of a band stored as `stored` (uint16 / uint8) into `dst` (H, W),
        which may be of a wider dtype (uint8 bands into a uint16 batch)."""
        nbytes = dst.size * stored.itemsize
        if codec == "none":
            if len(chunk) != nbytes:
                raise ShardError(f"holds {len(chunk)} bytes for a band of {nbytes}")
            dst[...] = np.frombuffer(chunk, dtype=stored.newbyteorder("<")).reshape(dst.shape)
            return
        out = self._scratch_of(nbytes)
        if codec == "zstd":
            self._check_frame(chunk, nbytes)
        out[...] = np.frombuffer(self._decompress_py(chunk, codec, nbytes), dtype=np.uint8)
        if codec == "zstd" and shuffle and stored.itemsize == 2:
            tmp = np.empty(dst.shape, dtype=np.uint16)
            unshuffle_into(out, tmp)
            dst[...] = tmp
            return
        dst[...] = out.view(stored.newbyteorder("<")).reshape(dst.shape)

    def __del__(self) -> None:
        if getattr(self, "_zstd", None) is not None and self._dctx:
            self._free(self._dctx)
            self._dctx = None

    def _scratch_of(self, nbytes: int) -> np.ndarray:
        if self._scratch.size < nbytes:
            self._scratch = np.empty(nbytes, dtype=np.uint8)
        return self._scratch[:nbytes]

    def _decompress_py(self, chunk: bytes | memoryview, codec: str, nbytes: int) -> bytes:
        try:
            if codec == "zstd":
                raw = self._zstd_py.decompress(chunk)
            else:
                import lz4.block  # sen12ms_common imports only numpy when imported

                raw = lz4.block.decompress(chunk, uncompressed_size=nbytes)
        except Exception as exc:  # zstandard / lz4 raise their own error types on damaged input
            raise ShardError(f"does not decompress ({exc})") from exc
        if len(raw) != nbytes:
            raise ShardError(f"decompresses to {len(raw)} bytes, expected {nbytes}")
        return raw
