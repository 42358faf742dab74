"""What a shard member must be before it is decoded: the one set of rules both loaders apply
(the webdataset loader in Python, the DALI loader compiled into its numba kernels), so that they
accept exactly the same members.

Written on uint8 numpy arrays with plain integer arithmetic only, so that numba compiles the same
function the Python side calls."""

from __future__ import annotations

import numpy as np

ZSTD_MAGIC = 0xFD2FB528
_FCS_BYTES = (0, 2, 4, 8)   # by Frame_Content_Size_flag (flag 0: 1 byte in a single-segment frame)
_DICT_BYTES = (0, 1, 2, 4)  # by Dictionary_ID_flag


def zstd_content_size(frame: np.ndarray) -> int:
    """The content size the zstd frame at the start of `frame` (uint8) declares in its header;
    -1 where it declares none or its header is cut short, -2 where it is no zstd frame (a
    skippable frame included). A chunk is decoded only where this is the band's size."""
    n = frame.shape[0]
    if n < 4:
        return -2
    magic = int(frame[0]) | (int(frame[1]) << 8) | (int(frame[2]) << 16) | (int(frame[3]) << 24)
    if magic != ZSTD_MAGIC:
        return -2
    if n < 6:
        return -1
    fhd = int(frame[4])
    fcs_flag, single = fhd >> 6, (fhd >> 5) & 1
    if (fhd >> 3) & 1:  # the reserved bit
        return -1
    fcs = 1 if (fcs_flag == 0 and single == 1) else _FCS_BYTES[fcs_flag]
    if fcs == 0:
        return -1
    at = 5 + (0 if single == 1 else 1) + _DICT_BYTES[fhd & 3]
    if at + fcs > n:
        return -1
    size = 0
    for i in range(fcs):
        size |= int(frame[at + i]) << (8 * i)
    return size + 256 if fcs == 2 else size


def content_size_fn():
    """`zstd_content_size` compiled by numba (a call costs well under a microsecond), or the
    plain function where numba is missing."""
    try:
        from numba import njit  # start-up time: numba (LLVM) only when used
    except ImportError:
        return zstd_content_size
    return njit(nogil=True, cache=True)(zstd_content_size)
