"""THE shard sample format: member names, codecs, S1 quantisation, tar layout, DALI index.

The converter, the loaders and `verify` all follow this module (band codecs in `codecs`);
docs/FORMAT.md describes the same in prose, byte by byte.
"""

from __future__ import annotations

import io
import json
import tarfile
import threading
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any, BinaryIO, Iterable, Mapping, Sequence

import numpy as np

from ..errors import ShardError
from ..vocab.bands import MODALITY_BANDS, PATCH_SIZE
from .checksums import HashingWriter
from .codecs import CHUNKED, CODECS, BandDecoder, chunk_offsets, encode_band

FORMAT_VERSION = 2
CODEC_SUFFIX: dict[str, str] = {"zstd": "zst", "lz4": "lz4", "none": "raw"}
DEFAULT_LEVEL: dict[str, int] = {"zstd": 3, "lz4": 0, "none": 0}
STORED_DTYPE: dict[str, str] = {"s1": "uint16", "s2": "uint16", "lc": "uint8", "dfc": "uint8"}
ARRAY_MODALITIES: tuple[str, ...] = ("s2", "s1", "lc", "dfc")  # member order inside a sample
MASK_MODALITIES: tuple[str, ...] = ("dfc", "lc")  # where pixel targets come from, the first held wins

S1_MIN_DB = -25.0
S1_MAX_DB = 0.0
S1_LEVELS = 65535
S1_STEP = (S1_MAX_DB - S1_MIN_DB) / S1_LEVELS  # dB per quantisation step

LABEL_EXT = "label.f32"
META_EXT = "json"
N_LABEL = 17


@lru_cache(maxsize=None)
def _stored_dtype(modality: str) -> np.dtype:
    return np.dtype(STORED_DTYPE[modality]).newbyteorder("<")


@dataclass(frozen=True)
class SampleLayout:
    """What a sample of a shard set holds and how it is encoded (stored in the manifest)."""

    codec: str = "zstd"
    level: int = 3
    byte_shuffle: bool = True  # zstd only: shuffling uint16 bytes gave 2.78 vs 2.38 on real S2
    modalities: tuple[str, ...] = ("s2", "s1")
    size: int = PATCH_SIZE
    version: int = FORMAT_VERSION
    labels: bool = True  # a label.f32 member per sample (DFC2020 samples have none)

    def __post_init__(self) -> None:
        if self.codec not in CODECS:
            raise ShardError(f"unknown codec {self.codec!r} (expected one of {CODECS})")
        unknown = [m for m in self.modalities if m not in ARRAY_MODALITIES]
        if unknown or not self.modalities:
            raise ShardError(f"modalities must be a non-empty subset of {ARRAY_MODALITIES}, not {self.modalities}")
        # A canonical order keeps member order and manifests identical however the user lists them.
        object.__setattr__(self, "modalities", tuple(m for m in ARRAY_MODALITIES if m in self.modalities))
        if self.codec != "zstd":
            object.__setattr__(self, "byte_shuffle", False)

    @property
    def mask(self) -> str | None:
        """The member pixel targets come from: `dfc` (DFC2020 classes), `lc` (IGBP) or None."""
        return next((m for m in MASK_MODALITIES if m in self.modalities), None)

    def ext(self, modality: str) -> str:
        return f"{modality}.{CODEC_SUFFIX[self.codec]}"

    @property
    def chunked(self) -> bool:
        """One chunk per band (zstd frames, LZ4 blocks) with their sizes in `sizes_ext`."""
        return self.codec in CHUNKED

    def sizes_ext(self, modality: str) -> str:
        return f"{modality}.{CODEC_SUFFIX[self.codec]}sizes"

    def shape(self, modality: str) -> tuple[int, int, int]:
        return (len(MODALITY_BANDS[modality]), self.size, self.size)

    def dtype(self, modality: str) -> np.dtype:
        return _stored_dtype(modality)

    def nbytes(self, modality: str) -> int:
        c, h, w = self.shape(modality)
        return c * h * w * self.dtype(modality).itemsize

    def member_exts(self) -> tuple[str, ...]:
        exts = [self.ext(m) for m in self.modalities]
        if self.chunked:
            exts += [self.sizes_ext(m) for m in self.modalities]
        return tuple(sorted(exts + ([LABEL_EXT] if self.labels else []) + [META_EXT]))

    def member_limit(self) -> int:
        """The most bytes a member of this layout can hold (a compressed band can exceed its raw
        size by a little); a tar header declaring more is refused before anything is read."""
        most = max(self.nbytes(m) for m in self.modalities)
        return most + most // 64 + 64 * max(len(MODALITY_BANDS[m]) for m in self.modalities) + 4096

    def to_dict(self) -> dict[str, Any]:
        members = {
            m: {
                "ext": self.ext(m),
                "dtype": STORED_DTYPE[m],
                "byteorder": "little",
                "shape": list(self.shape(m)),
                "bands": list(MODALITY_BANDS[m]),
                **({"chunk_sizes_ext": self.sizes_ext(m), "chunk_shape": list(self.shape(m)[1:])}
                   if self.chunked else {}),
                **({"quantisation": {"min_db": S1_MIN_DB, "max_db": S1_MAX_DB, "levels": S1_LEVELS,
                                     "decode": "x_db = q * (max_db - min_db) / levels + min_db"}}
                   if m == "s1" else {}),
            }
            for m in self.modalities
        }
        if self.labels:
            members["label"] = {"ext": LABEL_EXT, "dtype": "float32", "byteorder": "little", "shape": [N_LABEL]}
        members["meta"] = {"ext": META_EXT}
        d = asdict(self)
        if self.labels:
            # Absent means true: the layouts (and conversion fingerprints) of labelled shard sets
            # stay those of earlier versions.
            del d["labels"]
        d["modalities"] = list(self.modalities)
        d["members"] = members
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SampleLayout":
        version = int(d.get("version", 0))
        check_version(version)
        return cls(codec=d["codec"], level=int(d["level"]), byte_shuffle=bool(d["byte_shuffle"]),
                   modalities=tuple(d["modalities"]), size=int(d["size"]), version=version,
                   labels=bool(d.get("labels", True)))


def check_version(version: int) -> None:
    if version == 1:
        raise ShardError("these shards are of format version 1, which stored each zstd array as one frame; "
                         f"this toolbox reads version {FORMAT_VERSION} (a frame per band): re-convert them "
                         "with `python -m convert shards`")
    if version != FORMAT_VERSION:
        raise ShardError(f"shard format version {version} is not supported (this toolbox reads {FORMAT_VERSION})")


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


# --- arrays ------------------------------------------------------------------------------------

def encode_array(arr: np.ndarray, modality: str, layout: SampleLayout) -> dict[str, bytes]:
    """Encode one stored array (already in its stored dtype) into its member(s)."""
    shape, dtype = layout.shape(modality), layout.dtype(modality)
    a = np.ascontiguousarray(arr, dtype=dtype)
    if a.shape != shape:
        raise ShardError(f"{modality} array has shape {a.shape}, expected {shape}")
    if not layout.chunked:
        return {layout.ext(modality): a.tobytes()}
    chunks = [encode_band(band, layout.codec, layout.level, layout.byte_shuffle) for band in a]
    sizes = np.array([len(c) for c in chunks], dtype="<i4")
    return {layout.ext(modality): b"".join(chunks), layout.sizes_ext(modality): sizes.tobytes()}


def decode_bands_into(members: Mapping[str, bytes | memoryview], modality: str, layout: SampleLayout,
                      bands: Sequence[int], out: np.ndarray, decoder: BandDecoder) -> None:
    """Decode bands `bands[i]` of a modality into `out[i]` ((k, H, W), uint16 or the stored
    dtype), nothing else."""
    ext = layout.ext(modality)
    data = members.get(ext)
    if data is None:
        raise ShardError(f"member .{ext} is missing")
    n_bands, stored = layout.shape(modality)[0], layout.dtype(modality)
    band_bytes = layout.nbytes(modality) // n_bands
    try:
        if layout.chunked:
            sizes = members.get(layout.sizes_ext(modality))
            if sizes is None:
                raise ShardError(f"its chunk sizes member .{layout.sizes_ext(modality)} is missing")
            starts = chunk_offsets(sizes, n_bands, len(data))
        elif len(data) != n_bands * band_bytes:
            raise ShardError(f"holds {len(data)} bytes, expected {n_bands * band_bytes}")
        else:
            starts = [b * band_bytes for b in range(n_bands + 1)]
        decoder.decode_run(data, starts, layout.codec, bands, out, stored, layout.byte_shuffle)
    except ShardError as exc:
        raise ShardError(f"member .{ext} {exc}") from None


_decoders = threading.local()  # a zstd context is not thread-safe: one per thread


def _decoder() -> BandDecoder:
    if not hasattr(_decoders, "one"):
        _decoders.one = BandDecoder()
    return _decoders.one


def decode_array(members: Mapping[str, bytes | memoryview], modality: str, layout: SampleLayout) -> np.ndarray:
    """Decode one stored array from a sample's members (uint16 / uint8, shape (C, H, W))."""
    out = np.empty(layout.shape(modality), dtype=layout.dtype(modality))
    decode_bands_into(members, modality, layout, range(len(out)), out, _decoder())
    return out


# --- whole samples ---------------------------------------------------------------------------

def encode_label(prob: np.ndarray) -> bytes:
    p = np.asarray(prob, dtype="<f4").reshape(-1)
    if p.size != N_LABEL:
        raise ShardError(f"label has {p.size} values, expected {N_LABEL}")
    return p.tobytes()


def decode_label(data: bytes) -> np.ndarray:
    if len(data) != 4 * N_LABEL:
        raise ShardError(f"member .{LABEL_EXT} holds {len(data)} bytes, expected {4 * N_LABEL}")
    return np.frombuffer(data, dtype="<f4").astype(np.float32)


def encode_meta(meta: Mapping[str, Any]) -> bytes:
    return json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()


def encode_sample(arrays: Mapping[str, np.ndarray], prob: np.ndarray | None, meta: Mapping[str, Any],
                  layout: SampleLayout) -> dict[str, bytes]:
    """All members of one sample (ext -> bytes). `arrays["s1"]` is S1 in dB (float); `prob` is
    None for a layout without labels."""
    members: dict[str, bytes] = {}
    for m in layout.modalities:
        if m not in arrays:
            raise ShardError(f"sample lacks its {m} array")
        arr = quantize_s1(arrays[m]) if m == "s1" else arrays[m]
        members.update(encode_array(arr, m, layout))
    if layout.labels:
        if prob is None:
            raise ShardError("sample lacks its label")
        members[LABEL_EXT] = encode_label(prob)
    members[META_EXT] = encode_meta(meta)
    return members


def decode_sample(members: Mapping[str, bytes], layout: SampleLayout,
                  modalities: Iterable[str] | None = None) -> dict[str, Any]:
    """Decode the members of one sample (ext -> bytes, as webdataset groups them).

    Returns the stored arrays (S1 still as uint16 codes), `label` (float32, 17; only where the
    layout has labels) and `meta`.
    """
    out: dict[str, Any] = {}
    for m in (layout.modalities if modalities is None else modalities):
        if m not in layout.modalities:
            raise ShardError(f"these shards hold no {m} (they hold {', '.join(layout.modalities)})")
        out[m] = decode_array(members, m, layout)
    if layout.labels:
        if LABEL_EXT not in members:
            raise ShardError(f"member .{LABEL_EXT} is missing")
        out["label"] = decode_label(members[LABEL_EXT])
    if META_EXT in members:
        try:
            out["meta"] = json.loads(bytes(members[META_EXT]))
        except (ValueError, RecursionError) as exc:  # RecursionError: deeply nested brackets
            raise ShardError(f"member .{META_EXT} is not JSON ({exc})") from exc
    return out


# --- tar layout and DALI index ---------------------------------------------------------------

def check_member_name(name: str) -> None:
    """Refuse a tar member name that is a path: shards hold flat `<key>.<ext>` members, and a
    reader must never follow `../../etc/passwd` or `/abs/path` anywhere (nothing is extracted)."""
    if "/" in name or "\\" in name or name in (".", ".."):
        raise ShardError(f"member name {name!r} is a path (shards hold flat <key>.<ext> members)")


@dataclass
class ShardStats:
    samples: int = 0
    bytes: int = 0
    sha256: str = ""
    xxh3_128: str = ""
    index: list[list[tuple[str, int, int, str]]] = field(default_factory=list)


class TarShardWriter:
    """Write samples into one tar with fixed headers (same bytes for the same samples).

    Headers carry no time, owner or permissions of this machine, so a shard is reproducible
    bit for bit; the offsets of every member are kept for the DALI index.
    """

    def __init__(self, fileobj: BinaryIO) -> None:
        self._out = HashingWriter(fileobj)
        self._tar = tarfile.open(fileobj=self._out, mode="w", format=tarfile.USTAR_FORMAT)
        self.stats = ShardStats()

    def add_sample(self, key: str, members: Mapping[str, bytes]) -> None:
        if "." in key or "/" in key:
            raise ShardError(f"sample key {key!r} must hold no '.' or '/'")
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
        d = self._out.digests
        self.stats.bytes, self.stats.sha256, self.stats.xxh3_128 = d.bytes, d.sha256, d.fast
        return self.stats


def dali_index(index: list[list[tuple[str, int, int, str]]]) -> str:
    """The `wds2idx` (v1.2) index of a shard: one line per sample, (ext, offset, size, name)."""
    lines = [f"v1.2 {len(index)}"]
    for entries in index:
        lines.append(" ".join(f"{ext} {off} {size} {name}" for ext, off, size, name in entries))
    return "\n".join(lines) + "\n"
