"""MosaicML streaming's side of the bench, run by the side environment's Python (`bench.cases.mds`):
every release of mosaicml-streaming caps numpy below 2.2, so it cannot be imported beside the
stack's numpy 2.4.6. Commands (one JSON line on stdout each):

    python -m bench.cases.mds_side version
    python -m bench.cases.mds_side write SOURCE OUT CODEC INPUT
    python -m bench.cases.mds_side repeat ROOT BATCH_SIZE WORKERS SEED CACHE
    python -m bench.cases.mds_side digests ROOT CACHE
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata as md
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

COLUMNS = {"image": "ndarray:uint16", "label": "ndarray:float32"}


def write(source: Path, out: Path, codec: str, input_spec: str) -> dict[str, Any]:
    """`MDSWriter` over the arrays of our uncompressed shards, zstd or uncompressed."""
    from streaming import MDSWriter  # start-up time: MDS only for the command that uses it

    from bench.cases.peers import shard_inputs, shard_samples  # start-up time: only to write

    n = 0
    with MDSWriter(out=str(out), columns=COLUMNS, compression="zstd" if codec == "zstd" else None) as writer:
        for item in shard_inputs(source, input_spec):
            for sample in shard_samples(*item):
                writer.write(sample)
                n += 1
    return {"samples": n}


def _dataset(root: Path, cache: Path, batch_size: int, seed: int | None):
    """MDS's StreamingDataset. Compressed shards are its remote: it decompresses each whole shard
    into its local cache (emptied first, so that every round pays for it); uncompressed ones are
    read in place."""
    from streaming import StreamingDataset  # start-up time: MDS only for the command that uses it

    if any(root.glob("*.zstd")):
        if cache.exists():
            shutil.rmtree(cache)
        where = {"remote": str(root), "local": str(cache)}
    else:
        where = {"local": str(root)}
    shuffle = {"shuffle": True, "shuffle_seed": seed} if seed is not None else {}
    return StreamingDataset(**where, batch_size=batch_size, **shuffle)


def repeat(root: Path, batch_size: int, workers: int, seed: int, cache: Path) -> dict[str, Any]:
    """One shuffled epoch through a torch DataLoader, timed as every loader row is."""
    import torch  # start-up time: torch only to read

    from bench.measure.timing import steady_rate  # start-up time: only to time

    torch.set_num_threads(1)  # the row is pinned to one core (the affinity is inherited)
    loader = torch.utils.data.DataLoader(_dataset(root, cache, batch_size, seed), batch_size=batch_size,
                                         num_workers=workers, persistent_workers=False)
    rep = steady_rate(loader, lambda b: len(b["image"]))
    return {"items": rep.items, "seconds": rep.seconds, "startup_s": rep.startup_s}


def digests(root: Path, cache: Path) -> dict[str, Any]:
    """The sha1 of every image of an epoch (sorted): what the test compares with ours."""
    import torch  # start-up time: torch only to read

    loader = torch.utils.data.DataLoader(_dataset(root, cache, 4, None), batch_size=4, num_workers=0)
    return {"digests": sorted(hashlib.sha1(np.ascontiguousarray(img, dtype=np.uint16).tobytes()).hexdigest()
                              for b in loader for img in b["image"].numpy())}


def main(argv: list[str]) -> int:
    command, args = argv[0], argv[1:]
    if command == "version":
        importlib.import_module("streaming")  # the import is the check
        out: dict[str, Any] = {"version": md.version("mosaicml-streaming"), "numpy": np.__version__}
    elif command == "write":
        out = write(Path(args[0]), Path(args[1]), args[2], args[3])
    elif command == "repeat":
        out = repeat(Path(args[0]), int(args[1]), int(args[2]), int(args[3]), Path(args[4]))
    elif command == "digests":
        out = digests(Path(args[0]), Path(args[1]))
    else:
        print(f"unknown command {command!r}", file=sys.stderr)
        return 2
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
