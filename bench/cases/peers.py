"""The peers' loader rows: litdata and MosaicML streaming over their own formats, written by their
own writers from the same arrays (the bench's s1s2 uint16 patches and their label vectors), each
read through its own StreamingDataset and a torch DataLoader; and TorchGeo's `SEN12MS` dataset on
the bench's GeoTIFF tree. The peers are the optional `.[bench]` extra, MDS an environment of its
own (`bench.cases.mds`, `make mds-env`): without one, its rows say "not installed"."""

from __future__ import annotations

from sen12ms_common.errors import UnavailableError

import importlib
import importlib.metadata as md
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from bench.cases.mds import mds_version, run_side
from bench.cases.stock import _stock_decode, read_index
from bench.measure.timing import Repeat, steady_rate
from sen12ms_common.format.manifest import index_name, load_manifest
from sen12ms_common.vocab.bands import resolve_bands

# The peer's package name to pip, the module to import, and the codecs its writer is asked for
# (None: its writer's default, no compression). TorchGeo reads the GeoTIFFs as they are.
# MDS runs in an environment of its own (`bench.cases.mds`).
PEERS: dict[str, tuple[str, str]] = {"litdata": ("litdata", "litdata"),
                                     "mds": ("mosaicml-streaming", "streaming"),
                                     "torchgeo": ("torchgeo", "torchgeo.datasets")}
PEER_CODECS = ("zstd", "none")  # litdata and MDS write zstd or nothing; neither writes lz4
STAMP = "bench-peer.json"
SEASONS = ("ROIs1158_spring", "ROIs1868_summer", "ROIs1970_fall", "ROIs2017_winter")


def peer_version(peer: str) -> str:
    """The installed version of a peer, after importing it; UnavailableError with the row's text."""
    package, module = PEERS[peer]
    if peer == "mds":
        return mds_version()
    try:
        importlib.import_module(module)
        return md.version(package)
    except (ImportError, md.PackageNotFoundError) as exc:
        raise UnavailableError(f"not installed: {package} ({exc.__class__.__name__}: {exc}); "
                               "pip install -e '.[bench]'") from None


# --- the arrays the peers are given -------------------------------------------------------------

def shard_samples(shard: str, index: str, input_spec: str) -> Iterator[dict[str, np.ndarray]]:
    """The samples of one of our uncompressed shards as a peer's writer takes them: the input's
    bands as one (C, H, W) uint16 array, and the label vector (float32)."""
    manifest = load_manifest(str(Path(shard).parent))
    channels = [(b.modality, b.index) for b in resolve_bands(input_spec)]
    decode = _stock_decode(manifest.layout, channels)
    data = Path(shard).read_bytes()
    for members in read_index(Path(index)):
        got = {ext: data[off:off + size] for ext, (off, size) in members.items()}
        image, label = decode(got)
        yield {"image": np.ascontiguousarray(image), "label": label.copy()}


def shard_inputs(source: Path, input_spec: str) -> list[tuple[str, str, str]]:
    """(shard, its index, input) per train shard of the uncompressed set, in the manifest's order."""
    manifest = load_manifest(str(source))
    if manifest.layout.codec != "none":
        raise ValueError(f"{source}: the peers are written from uncompressed shards")
    return [(str(source / e.name), str(source / index_name(e.name)), input_spec) for e in manifest.shards("train")]


def _litdata_fn(item: tuple[str, str, str]) -> Iterator[dict[str, np.ndarray]]:
    yield from shard_samples(*item)  # module level: litdata's writer workers unpickle it


def _fresh(out: Path, stamp: dict) -> bool:
    """Whether `out` holds a finished peer set of these parameters; else it is emptied."""
    path = out / STAMP
    if path.is_file() and json.loads(path.read_text()) == stamp:
        return True
    if out.exists():
        shutil.rmtree(out)
    return False


def _peer_set(peer: str, source: Path, out: Path, codec: str, input_spec: str, samples: int,
              write: Callable[[], None]) -> Path:
    """The set of `peer` at `out`: reused while its stamp matches these parameters (and the peer's
    version), else emptied, made by `write()` and stamped (the stamp last: a killed write is redone)."""
    stamp = {"peer": peer, "version": peer_version(peer), "codec": codec, "input": input_spec,
             "samples": samples, "source": str(source.name)}
    if not _fresh(out, stamp):
        write()
        (out / STAMP).write_text(json.dumps(stamp) + "\n")
    return out


def write_litdata(source: Path, out: Path, codec: str, input_spec: str, samples: int) -> Path:
    """litdata's `optimize` (its writer, its defaults) over the arrays, zstd or uncompressed."""
    def write() -> None:
        import litdata  # optional extra: the bench's peers

        litdata.optimize(fn=_litdata_fn, inputs=shard_inputs(source, input_spec), output_dir=str(out),
                         num_workers=1, compression="zstd" if codec == "zstd" else None, chunk_bytes="64MB",
                         verbose=False, mode="overwrite")

    return _peer_set("litdata", source, out, codec, input_spec, samples, write)


def write_mds(source: Path, out: Path, codec: str, input_spec: str, samples: int) -> Path:
    """MosaicML streaming's `MDSWriter` over the arrays, zstd or uncompressed (in MDS's own
    environment, `bench.cases.mds`)."""
    return _peer_set("mds", source, out, codec, input_spec, samples,
                     lambda: run_side("write", source, out, codec, input_spec))


def torchgeo_root(tree: Path, out: Path, keys: list[str]) -> Path:
    """The folder TorchGeo's SEN12MS expects: the four season folders (links into the bench's
    tree; an empty folder for a season the tree lacks) and train_list.txt / test_list.txt naming
    the S2 files."""
    out.mkdir(parents=True, exist_ok=True)
    for season in SEASONS:
        link = out / season
        if link.is_symlink() or link.is_file():
            link.unlink()
        elif link.is_dir():
            shutil.rmtree(link)
        if (tree / season).is_dir():
            os.symlink(os.path.relpath(tree / season, out), link)
        else:
            link.mkdir()
    (out / "train_list.txt").write_text("".join(f"{k}.tif\n" for k in keys))
    (out / "test_list.txt").write_text("")
    return out


def peer_files(root: Path) -> list[Path]:
    """Every file of a peer's set (to pre-read before its row is timed)."""
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != STAMP)


# --- reading ------------------------------------------------------------------------------------

def _loader(dataset: Any, batch_size: int, workers: int, **kw: Any):
    import torch  # start-up time: torch only when used

    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers,
                                       persistent_workers=False, **kw)


def litdata_repeat(root: Path, batch_size: int, workers: int, seed: int, cache: Path) -> Repeat:
    """One shuffled epoch of litdata's StreamingDataset over its set, through a DataLoader."""
    import litdata  # optional extra: the bench's peers

    ds = litdata.StreamingDataset(str(root), shuffle=True, seed=seed, cache_dir=str(cache))
    return steady_rate(_loader(ds, batch_size, workers), lambda b: len(b["image"]))


def torchgeo_bands(input_spec: str) -> tuple[str, ...]:
    """Our input's bands in TorchGeo's names (B2 -> B02, B8A as it is), in our order."""
    out = []
    for b in resolve_bands(input_spec):
        digits = b.name[1:]
        out.append(f"B{int(digits):02d}" if digits.isdigit() else b.name)
    return tuple(out)


def torchgeo_repeat(root: Path, input_spec: str, batch_size: int, workers: int, seed: int) -> Repeat:
    """One shuffled epoch of TorchGeo's SEN12MS (rasterio per file: s1, s2 and lc; its image
    dtype: S2's uint16 read as int32, joined to S1's float32 dB, float32) through a DataLoader."""
    import torch  # start-up time: torch only when used
    from torchgeo.datasets import SEN12MS  # start-up time: torch only when used

    ds = SEN12MS(root=str(root), split="train", bands=torchgeo_bands(input_spec))
    gen = torch.Generator().manual_seed(seed)
    return steady_rate(_loader(ds, batch_size, workers, shuffle=True, generator=gen), lambda b: len(b["image"]))
