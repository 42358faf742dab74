"""THE shard sample format: member names, codecs, S1 quantisation, tar layout, DALI index.

The converter, the webdataset reader, the DALI reader and `verify` all follow this module, so a
change of codec or member layout is one edit here. docs/FORMAT.md describes the same in prose.

A sample is a group of tar members sharing the key `ROIs1158_spring_s2_1_p30` (the S2 stem):

- `<key>.s2.<c>`: S2, uint16, (13, 256, 256), bands in file order, lossless.
- `<key>.s1.<c>`: S1, uint16, (2, 256, 256): dB with NaN -> 0, clipped to [-25, 0], linearly
  quantised, q = round((x + 25) / 25 * 65535); x = q * 25 / 65535 - 25 (error <= half a step).
- `<key>.lc.<c>`: land cover, uint8, (4, 256, 256) (IGBP, LCCS LC, LCCS LU, LCCS SH), if asked.
- `<key>.label.f32`: the 17-class IGBP probability vector, float32 little-endian, uncompressed.
- `<key>.json`: season, scene, patch, CRS, transform and the probability label.

`<c>` is the codec: `raw` (plain little-endian C-order bytes), `zst` (one zstd frame; uint16
arrays are byte-shuffled first: all low bytes, then all high bytes) or `lz4` (each band a raw
LZ4 block, concatenated, with the int32 compressed sizes of the blocks in `<key>.<m>.lz4sizes`,
the layout DALI's GPU `inflate` takes as chunks).
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any, BinaryIO, Iterable, Mapping

import numpy as np

from .bands import MODALITY_BANDS, PATCH_SIZE

FORMAT_VERSION = 1
CODECS: tuple[str, ...] = ("zstd", "lz4", "none")
CODEC_SUFFIX: dict[str, str] = {"zstd": "zst", "lz4": "lz4", "none": "raw"}
DEFAULT_LEVEL: dict[str, int] = {"zstd": 3, "lz4": 0, "none": 0}
STORED_DTYPE: dict[str, str] = {"s1": "uint16", "s2": "uint16", "lc": "uint8"}
ARRAY_MODALITIES: tuple[str, ...] = ("s2", "s1", "lc")  # member order inside a sample

S1_MIN_DB = -25.0
S1_MAX_DB = 0.0
S1_LEVELS = 65535
S1_STEP = (S1_MAX_DB - S1_MIN_DB) / S1_LEVELS  # dB per quantisation step

LABEL_EXT = "label.f32"
META_EXT = "json"
N_LABEL = 17


class ShardFormatError(ValueError):
    """A sample or member that does not decode as this format says it must."""


@dataclass(frozen=True)
class SampleLayout:
    """What a sample of a shard set holds and how it is encoded (stored in the manifest)."""

    codec: str = "zstd"
    level: int = 3
    byte_shuffle: bool = True  # zstd only: shuffling uint16 bytes gave 2.78 vs 2.38 on real S2
    modalities: tuple[str, ...] = ("s2", "s1")
    size: int = PATCH_SIZE
    version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.codec not in CODECS:
            raise ShardFormatError(f"unknown codec {self.codec!r} (expected one of {CODECS})")
        unknown = [m for m in self.modalities if m not in ARRAY_MODALITIES]
        if unknown or not self.modalities:
            raise ShardFormatError(f"modalities must be a non-empty subset of {ARRAY_MODALITIES}, not {self.modalities}")
        # A canonical order keeps member order and manifests identical however the user lists them.
        object.__setattr__(self, "modalities", tuple(m for m in ARRAY_MODALITIES if m in self.modalities))
        if self.codec != "zstd":
            object.__setattr__(self, "byte_shuffle", False)

    def ext(self, modality: str) -> str:
        return f"{modality}.{CODEC_SUFFIX[self.codec]}"

    def sizes_ext(self, modality: str) -> str:
        return f"{modality}.lz4sizes"

    def shape(self, modality: str) -> tuple[int, int, int]:
        return (len(MODALITY_BANDS[modality]), self.size, self.size)

    def dtype(self, modality: str) -> np.dtype:
        return np.dtype(STORED_DTYPE[modality]).newbyteorder("<")

    def nbytes(self, modality: str) -> int:
        c, h, w = self.shape(modality)
        return c * h * w * self.dtype(modality).itemsize

    def member_exts(self) -> tuple[str, ...]:
        exts = [self.ext(m) for m in self.modalities]
        if self.codec == "lz4":
            exts += [self.sizes_ext(m) for m in self.modalities]
        return tuple(sorted(exts + [LABEL_EXT, META_EXT]))

    def to_dict(self) -> dict[str, Any]:
        members = {
            m: {
                "ext": self.ext(m),
                "dtype": STORED_DTYPE[m],
                "byteorder": "little",
                "shape": list(self.shape(m)),
                "bands": list(MODALITY_BANDS[m]),
                **({"chunk_sizes_ext": self.sizes_ext(m), "chunk_shape": list(self.shape(m)[1:])}
                   if self.codec == "lz4" else {}),
                **({"quantisation": {"min_db": S1_MIN_DB, "max_db": S1_MAX_DB, "levels": S1_LEVELS,
                                     "decode": "x_db = q * (max_db - min_db) / levels + min_db"}}
                   if m == "s1" else {}),
            }
            for m in self.modalities
        }
        members["label"] = {"ext": LABEL_EXT, "dtype": "float32", "byteorder": "little", "shape": [N_LABEL]}
        members["meta"] = {"ext": META_EXT}
        d = asdict(self)
        d["modalities"] = list(self.modalities)
        d["members"] = members
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SampleLayout":
        version = int(d.get("version", 0))
        if version != FORMAT_VERSION:
            raise ShardFormatError(f"shard format version {version} is not supported (this toolbox reads {FORMAT_VERSION})")
        return cls(codec=d["codec"], level=int(d["level"]), byte_shuffle=bool(d["byte_shuffle"]),
                   modalities=tuple(d["modalities"]), size=int(d["size"]), version=version)


# --- S1 quantisation -------------------------------------------------------------------------

def clean_s1(s1_db: np.ndarray) -> np.ndarray:
    """The original's S1 preprocessing: NaN -> 0, then clip to [-25, 0] dB (float32)."""
    with np.errstate(over="ignore"):  # float64 beyond float32's range becomes +-inf, then 0 / -25 dB
        x = np.nan_to_num(np.asarray(s1_db, dtype=np.float32), nan=0.0, posinf=S1_MAX_DB, neginf=S1_MIN_DB)
    return np.clip(x, S1_MIN_DB, S1_MAX_DB)


def quantize_s1(s1_db: np.ndarray) -> np.ndarray:
    """S1 dB (float) -> uint16 codes after `clean_s1`; decode error at most S1_STEP / 2."""
    x = clean_s1(s1_db).astype(np.float64)
    q = np.rint((x - S1_MIN_DB) / (S1_MAX_DB - S1_MIN_DB) * S1_LEVELS)
    return q.astype(np.uint16)


def dequantize_s1(q: np.ndarray, dtype: type = np.float32) -> np.ndarray:
    """uint16 codes -> S1 dB. In float64 the error against the cleaned input is at most
    S1_STEP / 2; a float32 result adds float32 rounding (below 1e-6 dB)."""
    return (np.asarray(q, dtype=np.float64) * S1_STEP + S1_MIN_DB).astype(dtype)


# --- codecs ------------------------------------------------------------------------------------

@lru_cache(maxsize=8)
def _zstd_compressor(level: int):
    import zstandard

    # Single-threaded and with a frame checksum: the bytes are the same for any worker count and
    # a damaged member fails to decode instead of yielding wrong pixels.
    return zstandard.ZstdCompressor(level=level, write_content_size=True, write_checksum=True, threads=0)


@lru_cache(maxsize=1)
def _zstd_decompressor():
    import zstandard

    return zstandard.ZstdDecompressor()


def shuffle_bytes(arr: np.ndarray) -> bytes:
    """uint16 array -> all its low bytes, then all its high bytes."""
    le = np.ascontiguousarray(arr, dtype="<u2")
    return le.view(np.uint8).reshape(-1, 2).T.tobytes()


def unshuffle_bytes(data: bytes | memoryview, count: int) -> np.ndarray:
    """Inverse of `shuffle_bytes`: `count` uint16 values (1-D, little-endian)."""
    planes = np.frombuffer(data, dtype=np.uint8, count=2 * count).reshape(2, count)
    out = np.empty((count, 2), dtype=np.uint8)
    out[:, 0] = planes[0]
    out[:, 1] = planes[1]
    return out.reshape(-1).view("<u2")


def encode_array(arr: np.ndarray, modality: str, layout: SampleLayout) -> dict[str, bytes]:
    """Encode one stored array (already in its stored dtype) into its member(s)."""
    shape, dtype = layout.shape(modality), layout.dtype(modality)
    a = np.ascontiguousarray(arr, dtype=dtype)
    if a.shape != shape:
        raise ShardFormatError(f"{modality} array has shape {a.shape}, expected {shape}")
    if layout.codec == "none":
        return {layout.ext(modality): a.tobytes()}
    if layout.codec == "zstd":
        raw = shuffle_bytes(a) if (layout.byte_shuffle and dtype.itemsize == 2) else a.tobytes()
        return {layout.ext(modality): _zstd_compressor(layout.level).compress(raw)}
    import lz4.block

    blocks = [lz4.block.compress(band.tobytes(), mode="default", store_size=False) for band in a]
    sizes = np.array([len(b) for b in blocks], dtype="<i4")
    return {layout.ext(modality): b"".join(blocks), layout.sizes_ext(modality): sizes.tobytes()}


def decode_array(members: Mapping[str, bytes], modality: str, layout: SampleLayout) -> np.ndarray:
    """Decode one stored array from a sample's members (uint16 / uint8, shape (C, H, W))."""
    shape, dtype, nbytes = layout.shape(modality), layout.dtype(modality), layout.nbytes(modality)
    ext = layout.ext(modality)
    if ext not in members:
        raise ShardFormatError(f"member .{ext} is missing")
    data = members[ext]
    try:
        if layout.codec == "none":
            raw = data
        elif layout.codec == "zstd":
            raw = _zstd_decompressor().decompress(data, max_output_size=nbytes)
        else:
            raw = _lz4_decode(data, members.get(layout.sizes_ext(modality)), shape, dtype.itemsize)
    except Exception as exc:  # zstandard / lz4 raise their own error types on damaged input
        raise ShardFormatError(f"member .{ext} does not decompress ({exc})") from exc
    if len(raw) != nbytes:
        raise ShardFormatError(f"member .{ext} holds {len(raw)} bytes, expected {nbytes}")
    if layout.byte_shuffle and dtype.itemsize == 2:
        flat = unshuffle_bytes(raw, nbytes // 2)
    else:
        flat = np.frombuffer(raw, dtype=dtype)
    return flat.reshape(shape)


def _lz4_decode(data: bytes, sizes_raw: bytes | None, shape: tuple[int, ...], itemsize: int) -> bytes:
    import lz4.block

    if sizes_raw is None:
        raise ValueError("its chunk sizes member is missing")
    sizes = np.frombuffer(sizes_raw, dtype="<i4")
    if sizes.size != shape[0] or np.any(sizes < 0) or int(sizes.sum()) != len(data):
        raise ValueError("its chunk sizes do not match its length")
    band_bytes = shape[1] * shape[2] * itemsize
    out, pos = [], 0
    for n in sizes.tolist():
        out.append(lz4.block.decompress(data[pos:pos + n], uncompressed_size=band_bytes))
        pos += n
    return b"".join(out)


# --- whole samples ---------------------------------------------------------------------------

def encode_label(prob: np.ndarray) -> bytes:
    p = np.asarray(prob, dtype="<f4").reshape(-1)
    if p.size != N_LABEL:
        raise ShardFormatError(f"label has {p.size} values, expected {N_LABEL}")
    return p.tobytes()


def decode_label(data: bytes) -> np.ndarray:
    if len(data) != 4 * N_LABEL:
        raise ShardFormatError(f"member .{LABEL_EXT} holds {len(data)} bytes, expected {4 * N_LABEL}")
    return np.frombuffer(data, dtype="<f4").astype(np.float32)


def encode_meta(meta: Mapping[str, Any]) -> bytes:
    return json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()


def encode_sample(arrays: Mapping[str, np.ndarray], prob: np.ndarray, meta: Mapping[str, Any],
                  layout: SampleLayout) -> dict[str, bytes]:
    """All members of one sample (ext -> bytes). `arrays["s1"]` is S1 in dB (float)."""
    members: dict[str, bytes] = {}
    for m in layout.modalities:
        if m not in arrays:
            raise ShardFormatError(f"sample lacks its {m} array")
        arr = quantize_s1(arrays[m]) if m == "s1" else arrays[m]
        members.update(encode_array(arr, m, layout))
    members[LABEL_EXT] = encode_label(prob)
    members[META_EXT] = encode_meta(meta)
    return members


def decode_sample(members: Mapping[str, bytes], layout: SampleLayout,
                  modalities: Iterable[str] | None = None) -> dict[str, Any]:
    """Decode the members of one sample (ext -> bytes, as webdataset groups them).

    Returns the stored arrays (S1 still as uint16 codes), `label` (float32, 17) and `meta`.
    """
    out: dict[str, Any] = {}
    for m in (layout.modalities if modalities is None else modalities):
        if m not in layout.modalities:
            raise ShardFormatError(f"these shards hold no {m} (they hold {', '.join(layout.modalities)})")
        out[m] = decode_array(members, m, layout)
    if LABEL_EXT not in members:
        raise ShardFormatError(f"member .{LABEL_EXT} is missing")
    out["label"] = decode_label(members[LABEL_EXT])
    if META_EXT in members:
        try:
            out["meta"] = json.loads(bytes(members[META_EXT]))
        except (ValueError, RecursionError) as exc:  # RecursionError: deeply nested brackets
            raise ShardFormatError(f"member .{META_EXT} is not JSON ({exc})") from exc
    return out


# --- tar layout and DALI index ---------------------------------------------------------------

def check_member_name(name: str) -> None:
    """Refuse a tar member name that is a path: shards hold flat `<key>.<ext>` members, and a
    reader must never follow `../../etc/passwd` or `/abs/path` anywhere (nothing is extracted)."""
    if "/" in name or "\\" in name or name in (".", ".."):
        raise ShardFormatError(f"member name {name!r} is a path (shards hold flat <key>.<ext> members)")


class _HashingWriter:
    def __init__(self, f: BinaryIO) -> None:
        self._f, self.sha256, self.bytes = f, hashlib.sha256(), 0

    def write(self, b: bytes) -> int:
        self._f.write(b)
        self.sha256.update(b)
        self.bytes += len(b)
        return len(b)

    def tell(self) -> int:
        return self.bytes


@dataclass
class ShardStats:
    samples: int = 0
    bytes: int = 0
    sha256: str = ""
    index: list[list[tuple[str, int, int, str]]] = field(default_factory=list)


class TarShardWriter:
    """Write samples into one tar with fixed headers (same bytes for the same samples).

    Headers carry no time, owner or permissions of this machine, so a shard is reproducible
    bit for bit; the offsets of every member are kept for the DALI index.
    """

    def __init__(self, fileobj: BinaryIO) -> None:
        self._out = _HashingWriter(fileobj)
        self._tar = tarfile.open(fileobj=self._out, mode="w", format=tarfile.USTAR_FORMAT)
        self.stats = ShardStats()

    def add_sample(self, key: str, members: Mapping[str, bytes]) -> None:
        if "." in key or "/" in key:
            raise ShardFormatError(f"sample key {key!r} must hold no '.' or '/'")
        entries = []
        for ext in sorted(members):
            data = members[ext]
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), 0, 0o444
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            header_at = self._tar.offset
            self._tar.addfile(info, io.BytesIO(data))
            entries.append((ext, header_at + tarfile.BLOCKSIZE, len(data), info.name))
        self.stats.index.append(entries)
        self.stats.samples += 1

    def close(self) -> ShardStats:
        self._tar.close()
        self.stats.bytes = self._out.bytes
        self.stats.sha256 = self._out.sha256.hexdigest()
        return self.stats


def dali_index(index: list[list[tuple[str, int, int, str]]]) -> str:
    """The `wds2idx` (v1.2) index of a shard: one line per sample, (ext, offset, size, name)."""
    lines = [f"v1.2 {len(index)}"]
    for entries in index:
        lines.append(" ".join(f"{ext} {off} {size} {name}" for ext, off, size, name in entries))
    return "\n".join(lines) + "\n"
