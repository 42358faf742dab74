"""The manifest and report of a shard set, and checksums.

`OUT/manifest.json` describes a converted shard set completely: format version and layout,
shards per split with sample counts, byte sizes, sha256 and xxh3-128, label schemes and per-band
statistics over the train split. `OUT/report.json` lists every input that was not converted.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

from ..errors import InputError, ShardError
from ..storage import files as storage
from ..vocab.bands import OFFICIAL_MEAN, OFFICIAL_STD, PATCH_SIZE
from ..vocab.igbp import IGBP_NAMES, SIMPLE_NAMES, SIMPLE_OF_FULL
from ..vocab.names import (ALL_SPLITS, DFC2020_SPLIT_OF, DFC2020_SPLITS, SPLIT_NAME, SPLITS, index_name, is_shard_name,
                           shard_name)  # noqa: F401 (re-exported)
from .checksums import FAST, digests_of
from .sample import FORMAT_VERSION, SampleLayout, check_version

MANIFEST_NAME = "manifest.json"
REPORT_NAME = "report.json"
# Bounds on what a manifest may declare, checked before anything is sized by it: SEN12MS holds
# 180,662 patches of 256 x 256 pixels.
MAX_SAMPLES = 2_000_000
MAX_PATCH_SIZE = PATCH_SIZE
# The least a sample takes in a tar: per member a 512-byte header and at least one 512-byte block
# (no member is empty).
MIN_MEMBER_BYTES = 1024
MAX_MANIFEST_BYTES = 64 << 20


@dataclass
class ShardEntry:
    name: str
    samples: int
    bytes: int
    sha256: str
    xxh3_128: str

    @property
    def index(self) -> str:
        return index_name(self.name)


@dataclass
class Manifest:
    layout: SampleLayout
    splits: dict[str, list[ShardEntry]]
    stats: dict[str, dict[str, float]] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    split_layouts: dict[str, SampleLayout] = field(default_factory=dict)  # where a split's differs

    def layout_of(self, split: str) -> SampleLayout:
        """The layout of a split's samples: its own (DFC2020 splits: dfc masks, no labels) or the set's."""
        return self.split_layouts.get(split, self.layout)

    def shards(self, split: str) -> list[ShardEntry]:
        if split not in self.splits:
            raise InputError(f"no {split!r} split in this shard set (it has: {', '.join(self.splits)})")
        return self.splits[split]

    def samples(self, split: str) -> int:
        return sum(s.samples for s in self.shards(split))

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "layout": self.layout.to_dict(),
            "codec": self.layout.codec,
            "splits": {split: self._split_dict(split, shards) for split, shards in self.splits.items()},
            "label_schemes": label_schemes(),
            "stats": self.stats,
            "source": self.source,
        }

    def _split_dict(self, split: str, shards: list[ShardEntry]) -> dict[str, Any]:
        d: dict[str, Any] = {"samples": sum(s.samples for s in shards),
                             "shards": [{**asdict(s), "index": s.index} for s in shards],
                             "mask": self.layout_of(split).mask}
        if split in self.split_layouts:
            d["layout"] = self.split_layouts[split].to_dict()
        return d

    def dumps(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Manifest":
        """Parse and check a manifest (`check_manifest`); raises InputError (one line)."""
        try:
            version = int(d["format_version"])
            try:
                check_version(version)
            except ShardError as exc:
                raise InputError(str(exc)) from None
            splits = {split: [_entry(split, s) for s in v["shards"]] for split, v in d["splits"].items()}
            own = {split: SampleLayout.from_dict(v["layout"]) for split, v in d["splits"].items() if "layout" in v}
            manifest = cls(SampleLayout.from_dict(d["layout"]), splits, d.get("stats", {}), d.get("source", {}),
                           version, own)
        except InputError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InputError(f"malformed manifest ({exc.__class__.__name__}: {exc})") from exc
        check_manifest(manifest, declared={k: v.get("samples") for k, v in d["splits"].items()})
        return manifest


def _entry(split: str, s: dict[str, Any]) -> ShardEntry:
    name = s["name"]
    # Readers join the name to the manifest's folder: a path would lead them elsewhere.
    if not isinstance(name, str):
        raise InputError(f"shard name {name!r} is not a string")
    if "/" in name or "\\" in name or name in ("", ".", ".."):
        raise InputError(f"shard name {name!r} is a path; a manifest names shards in its own folder")
    for key in ("samples", "bytes"):
        if not isinstance(s[key], int) or isinstance(s[key], bool):
            raise InputError(f"{split} shard {name}: {key} is {_short(s[key])}, not an integer")
    for key, digits in (("sha256", 64), (FAST, 32)):
        if not isinstance(s[key], str) or not re.fullmatch(f"[0-9a-f]{{{digits}}}", s[key]):
            raise InputError(f"{split} shard {name}: {key} is {_short(s[key])}, not {digits} hex digits")
    return ShardEntry(name, s["samples"], s["bytes"], s["sha256"], s[FAST])


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_manifest(m: Manifest, declared: dict[str, Any] | None = None) -> None:
    """The structural checks of a manifest, before anything is sized or read by it (also those of
    `convert verify`): a layout size of 1..MAX_PATCH_SIZE; per split, shards named
    `<split>-NNNNNN.tar` (a shard of another split listed here is refused), each named once in
    the manifest, with 1 or more samples, no more samples than its bytes can hold and at most
    MAX_SAMPLES in all; a split's declared sample count equal to its shards' sum."""
    for layout in (m.layout, *m.split_layouts.values()):
        if not 1 <= layout.size <= MAX_PATCH_SIZE:
            raise InputError(f"layout size {layout.size} is not a patch size (1..{MAX_PATCH_SIZE} pixels)")
    seen: dict[str, str] = {}
    total = 0
    for split, entries in m.splits.items():
        if not isinstance(split, str) or not SPLIT_NAME.match(split):
            raise InputError(f"split name {_short(split)} is not a lower-case word such as train or dfc2020_val")
        per_sample = MIN_MEMBER_BYTES * len(m.layout_of(split).member_exts())
        for e in entries:
            where = f"{split} shard {e.name}"
            if not is_shard_name(e.name, split):
                raise InputError(f"{where}: not named {split}-NNNNNN.tar (a shard of another split, or not ours)")
            if e.name in seen:
                raise InputError(f"{where}: named twice (also under {seen[e.name]})")
            seen[e.name] = split
            if e.samples < 1:
                raise InputError(f"{where}: {e.samples} samples (a shard holds at least one)")
            if e.samples * per_sample > e.bytes:
                raise InputError(f"{where}: {e.samples} samples cannot fit in {e.bytes} bytes "
                                 f"(at least {per_sample} bytes a sample)")
            total += e.samples
            if total > MAX_SAMPLES:
                raise InputError(f"{where}: more than {MAX_SAMPLES} samples in the manifest (SEN12MS has 180,662)")
        stated = (declared or {}).get(split)
        if stated is not None and stated != sum(e.samples for e in entries):
            raise InputError(f"split {split}: says {_short(stated)} samples, its shards hold "
                             f"{sum(e.samples for e in entries)}")


def load_manifest(root: str) -> Manifest:
    """Read and check `root/manifest.json` (local folder or URL); InputError (one line) if bad."""
    url = storage.join(root, MANIFEST_NAME)
    try:
        with storage.open_read(url) as f:
            data = f.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError as exc:
        raise InputError(f"{url}: no manifest (is this the output folder of `convert shards`?)") from exc
    if len(data) > MAX_MANIFEST_BYTES:
        raise InputError(f"{url}: larger than {MAX_MANIFEST_BYTES >> 20} MiB: not a manifest of ours")
    try:
        return Manifest.from_dict(json.loads(data.decode("utf-8")))
    except RecursionError:
        raise InputError(f"{url}: malformed manifest (nested too deeply)") from None
    except ValueError as exc:
        raise InputError(f"{url}: {exc}") from exc


def label_schemes() -> dict[str, Any]:
    return {
        "stored": "igbp_probability",
        "igbp_full": list(IGBP_NAMES),
        "igbp_simple": list(SIMPLE_NAMES),
        "simple_of_full": list(SIMPLE_OF_FULL),
        "single_label": "argmax of the (full or simplified) probabilities, first class on a tie, 1-based",
        "multi_label": "class present where its probability >= threshold (default 0.1)",
    }


def official_stats() -> dict[str, dict[str, float]]:
    return {b: {"mean": OFFICIAL_MEAN[b], "std": OFFICIAL_STD[b]} for b in OFFICIAL_MEAN}


def checksums_of(url: str) -> dict[str, str]:
    """The manifest's checksums of a shard file: {"sha256": ..., "xxh3_128": ...}."""
    with storage.open_read(url) as f:
        d = digests_of(f)
    return {"sha256": d.sha256, FAST: d.fast}


@dataclass(frozen=True)
class Rejection:
    """One input that was not converted, and why."""

    id: str
    reason: str
    path: str = ""
    split: str = ""


def report_dict(inputs: dict[str, int], converted: dict[str, int], rejected: Iterable[Rejection],
                warnings: Iterable[Rejection] = ()) -> dict[str, Any]:
    rej = sorted(rejected, key=lambda r: (r.split, r.id, r.reason))
    return {
        "inputs": inputs,
        "converted": converted,
        "rejected_count": {s: sum(1 for r in rej if r.split == s) for s in inputs},
        "rejected": [asdict(r) for r in rej],
        "warnings": [asdict(w) for w in sorted(warnings, key=lambda r: (r.split, r.id, r.reason))],
    }
