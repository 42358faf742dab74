"""The zstd and LZ4 C entry points, through ctypes: calls that release the GIL (so decoding
threads share the cores) and write into a buffer of ours (no allocation, never past its size)."""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import importlib
import importlib.util
import os
import threading
from functools import lru_cache, wraps

from ..errors import UnavailableError

# Decoding threads create their decoders at once; finding a module while another thread imports it
# sees a half-initialised module (`__spec__ is None`), so the libraries are looked up one at a time.
_LOOKUP = threading.RLock()


def _load(candidates: list[str], symbol: str, what: str) -> ctypes.CDLL:
    tried = []
    for path in candidates:
        if not path:
            continue
        tried.append(path)
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        if hasattr(lib, symbol):
            return lib
    raise UnavailableError(f"no {what} library with {symbol} found (tried: {', '.join(tried) or 'nothing'})")


def _once(fn):
    cached = lru_cache(maxsize=1)(fn)

    @wraps(fn)
    def locked():
        with _LOOKUP:
            return cached()
    return locked


def _module_file(name: str) -> str:
    """The file of module `name`, found without running it. Its parent package is imported first:
    the import lock waits for an import under way in another thread, where find_spec alone would
    see a half-made module."""
    parent = name.rpartition(".")[0]
    try:
        if parent:
            importlib.import_module(parent)
        found = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return ""
    return found.origin if found is not None and found.origin else ""


def _dali_libs(pattern: str) -> list[str]:
    folder = os.path.dirname(_module_file("nvidia.dali"))
    return sorted(glob.glob(os.path.join(folder, ".libs", pattern))) if folder else []


ZSTD_SYSTEM_MIN = 10501  # 1.5.1
ZSTD_D_FORCE_IGNORE_CHECKSUM = 1002  # ZSTD_d_experimentalParam3 of zstd.h (zstd 1.4.7 and newer)


def _zstd_version(path: str) -> int:
    try:
        lib = ctypes.CDLL(path)
        lib.ZSTD_versionNumber.restype = ctypes.c_uint
        return int(lib.ZSTD_versionNumber())
    except (OSError, AttributeError):
        return 0


@_once
def _zstd_lib() -> ctypes.CDLL:
    """The system's libzstd where it is 1.5.1 or newer (Debian 12's 1.5.4 decodes a band 7 %
    faster here than the `zstandard` package's build), else that package's cffi extension (a
    dependency anyway), else the one DALI ships (about 4x slower to decompress than the others)."""
    system = [p for p in (ctypes.util.find_library("zstd") or "", "libzstd.so.1")
              if p and _zstd_version(p) >= ZSTD_SYSTEM_MIN]
    candidates = system + [_module_file("zstandard._cffi")]
    return _load(candidates + _dali_libs("libzstd*.so*"), "ZSTD_decompressDCtx", "zstd")


@_once
def zstd_checksum_switch():
    """`ZSTD_DCtx_setParameter` (for numba kernels: `fn(dctx, ZSTD_D_FORCE_IGNORE_CHECKSUM, 1)`)."""
    fn = _zstd_lib().ZSTD_DCtx_setParameter
    fn.argtypes, fn.restype = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int], ctypes.c_size_t
    return fn


def zstd_ignore_checksums(dctx: int) -> bool:
    """Make decompression context `dctx` skip the frames' own checksums (for bytes whose shard
    checksum has been checked already: about 11 % of the time a band takes); False if this
    libzstd cannot."""
    return not zstd_decompress_fn()[1](zstd_checksum_switch()(dctx, ZSTD_D_FORCE_IGNORE_CHECKSUM, 1))


@_once
def zstd_decompress_fn():
    """`ZSTD_decompress` and `ZSTD_isError` (a context per call: for numba kernels)."""
    lib = _zstd_lib()
    decompress = lib.ZSTD_decompress
    decompress.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t]
    decompress.restype = ctypes.c_size_t
    is_error = lib.ZSTD_isError
    is_error.argtypes = [ctypes.c_size_t]
    is_error.restype = ctypes.c_uint
    return decompress, is_error


@_once
def zstd_context_fns():
    """`ZSTD_decompressDCtx`, `ZSTD_isError`, `ZSTD_createDCtx`, `ZSTD_freeDCtx`: decompression
    with a context that is made once and reused (about 10 % faster per band than a new one)."""
    lib = _zstd_lib()
    decompress = lib.ZSTD_decompressDCtx
    decompress.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t]
    decompress.restype = ctypes.c_size_t
    create, free = lib.ZSTD_createDCtx, lib.ZSTD_freeDCtx
    create.argtypes, create.restype = [], ctypes.c_void_p
    free.argtypes, free.restype = [ctypes.c_void_p], ctypes.c_size_t
    return decompress, zstd_decompress_fn()[1], create, free


@_once
def lz4_decompress_fn():
    """`LZ4_decompress_safe` from the `lz4` package's extension (a dependency anyway), else liblz4."""
    candidates = [_module_file("lz4.block._block"), ctypes.util.find_library("lz4") or "", "liblz4.so.1"]
    lib = _load(candidates, "LZ4_decompress_safe", "lz4")
    fn = lib.LZ4_decompress_safe
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn
