"""Reading a whole shard set back with plain tarfile and the format's decoder, independently of
the loaders under test."""

from __future__ import annotations

import tarfile
from pathlib import Path

from sen12ms_common.manifest import load_manifest
from sen12ms_common.shardformat import decode_sample


def decode_all(out: Path) -> dict[str, dict]:
    """key -> decoded sample, plus its split and shard."""
    manifest = load_manifest(str(out))
    samples: dict[str, dict] = {}
    for split, shards in manifest.splits.items():
        for entry in shards:
            groups: dict[str, dict[str, bytes]] = {}
            with tarfile.open(out / entry.name) as tar:
                for info in tar:
                    key, _, ext = info.name.partition(".")
                    groups.setdefault(key, {})[ext] = tar.extractfile(info).read()
            for key, members in groups.items():
                assert key not in samples
                samples[key] = dict(decode_sample(members, manifest.layout), split=split, shard=entry.name)
    return samples
