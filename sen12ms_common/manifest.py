"""The manifest and report of a shard set, and checksums.

`OUT/manifest.json` describes a converted shard set completely: format version and layout,
shards per split with sample counts, byte sizes, sha256 and xxh3-128, label schemes and per-band
statistics over the train split. `OUT/report.json` lists every input that was not converted.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

from . import storage
from .bands import OFFICIAL_MEAN, OFFICIAL_STD
from .igbp import IGBP_NAMES, SIMPLE_NAMES, SIMPLE_OF_FULL
from .checksums import FAST, digests_of
from .shardformat import FORMAT_VERSION, SampleLayout, ShardFormatError, check_version

MANIFEST_NAME = "manifest.json"
REPORT_NAME = "report.json"
SPLITS: tuple[str, ...] = ("train", "val", "test")


class ManifestError(ValueError):
    """A manifest that is missing, unreadable or does not match its shards."""


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}.tar"


def index_name(shard: str) -> str:
    """The DALI index file of a shard: `train-000000.idx`."""
    return shard[: -len(".tar")] + ".idx"


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

    def shards(self, split: str) -> list[ShardEntry]:
        if split not in self.splits:
            raise ManifestError(f"no {split!r} split in this shard set (it has: {', '.join(self.splits)})")
        return self.splits[split]

    def samples(self, split: str) -> int:
        return sum(s.samples for s in self.shards(split))

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "layout": self.layout.to_dict(),
            "codec": self.layout.codec,
            "splits": {
                split: {"samples": sum(s.samples for s in shards), "shards": [
                    {**asdict(s), "index": s.index} for s in shards
                ]}
                for split, shards in self.splits.items()
            },
            "label_schemes": label_schemes(),
            "stats": self.stats,
            "source": self.source,
        }

    def dumps(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Manifest":
        try:
            version = int(d["format_version"])
            try:
                check_version(version)
            except ShardFormatError as exc:
                raise ManifestError(str(exc)) from None
            splits = {
                split: [ShardEntry(s["name"], int(s["samples"]), int(s["bytes"]), s["sha256"], s[FAST])
                        for s in v["shards"]]
                for split, v in d["splits"].items()
            }
            for e in (e for entries in splits.values() for e in entries):
                # Readers join the name to the manifest's folder: a path would lead them elsewhere.
                if not isinstance(e.name, str):
                    raise ManifestError(f"shard name {e.name!r} is not a string")
                if "/" in e.name or "\\" in e.name or e.name in ("", ".", ".."):
                    raise ManifestError(f"shard name {e.name!r} is a path; a manifest names shards in its own folder")
            return cls(SampleLayout.from_dict(d["layout"]), splits, d.get("stats", {}), d.get("source", {}), version)
        except ManifestError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"malformed manifest ({exc.__class__.__name__}: {exc})") from exc


def load_manifest(root: str) -> Manifest:
    """Read `root/manifest.json` (local folder or URL)."""
    url = storage.join(root, MANIFEST_NAME)
    try:
        text = storage.read_text(url)
    except FileNotFoundError as exc:
        raise ManifestError(f"{url}: no manifest (is this the output folder of `convert shards`?)") from exc
    try:
        return Manifest.from_dict(json.loads(text))
    except ValueError as exc:
        raise ManifestError(f"{url}: {exc}") from exc


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
