"""The peer libraries inside a bench run: their sets written once (reused while they match), one
loader case per peer and codec on one core, the table rows, and the headline's comparison
"ours against the best of them per core on each codec"."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from bench.cases.mds import mds_repeat
from bench.cases.peers import (litdata_repeat, peer_files, peer_version, torchgeo_repeat, torchgeo_root,
                               write_litdata, write_mds)
from bench.inputs.dataset import BenchDataset, ensure_shards
from bench.measure.results import Results, Row, fmt_ratio
from bench.measure.timing import Repeat, one_cpu
from sen12ms_common.errors import UnavailableError

# (row key, peer, codec of its set): litdata and MDS write zstd or nothing (neither writes lz4);
# TorchGeo reads the uncompressed GeoTIFFs.
PEER_ROWS = (("peer/litdata/zstd", "litdata", "zstd"), ("peer/litdata/none", "litdata", "none"),
             ("peer/mds/zstd", "mds", "zstd"), ("peer/mds/none", "mds", "none"),
             ("peer/torchgeo/geotiff", "torchgeo", "none"))
NAMES = {"litdata": "litdata StreamingDataset", "mds": "MosaicML streaming (MDS) StreamingDataset",
         "torchgeo": "TorchGeo SEN12MS on the GeoTIFFs (rasterio per file, s1 + s2 + lc; float32 image, its dtype)"}
CODEC_TEXT = {"zstd": "its writer's zstd", "none": "uncompressed"}
WORKERS = 1  # the DataLoader's worker processes; the row is pinned to one core as the original's


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{exc.__class__.__name__}: {text[0][:200]}" if text else exc.__class__.__name__


def prepare_peers(ds: BenchDataset, input_spec: str, shard_size: int, workers: int, res: Results,
                  say: Callable[[str], None]) -> dict[str, Path]:
    """Each peer's set of the train split (from the uncompressed shards: the same arrays), by row
    key; a peer that is not installed or fails gets its row's status instead."""
    roots: dict[str, Path] = {}
    source: Path | None = None
    for key, peer, codec in PEER_ROWS:
        try:
            if peer == "torchgeo":
                peer_version(peer)
                roots[key] = torchgeo_root(ds.tree, ds.root / "peers" / "torchgeo", ds.keys)
                continue
            peer_version(peer)
            if source is None:
                source = ensure_shards(ds, "none", shard_size, workers, echo=say, progress=False)
            say(f"peers: {peer} set ({codec}) in {ds.root / 'peers'}")
            write = write_litdata if peer == "litdata" else write_mds
            roots[key] = write(source, ds.root / "peers" / f"{peer}-{codec}", codec, input_spec, len(ds.keys))
        except UnavailableError as exc:
            res.fail(f"{key}/1", str(exc))
        except Exception as exc:
            res.fail(f"{key}/1", f"failed: {_one_line(exc)}")
    return roots


def peer_cases(ds: BenchDataset, roots: dict[str, Path], input_spec: str, batch_size: int, cache: Path,
               case: Callable[[str, list[Path], Callable[[int], int | None], Callable[[int], Repeat]], None]) -> None:
    """One case per prepared peer set, on one core (the DataLoader's worker beside the main process)."""
    for key, root in roots.items():
        peer = key.split("/")[1]
        if peer == "torchgeo":
            case(f"{key}/1", ds.files(ds.keys, ("s2", "s1", "lc")), one_cpu,
                 lambda r, root=root: torchgeo_repeat(root, input_spec, batch_size, WORKERS, seed=r))
            continue
        repeat = litdata_repeat if peer == "litdata" else mds_repeat
        where = cache / key.replace("/", "-")
        case(f"{key}/1", peer_files(root), one_cpu,
             lambda r, root=root, repeat=repeat, where=where: repeat(root, batch_size, WORKERS, r, where))


def peer_rows(res: Results, codecs: tuple[str, ...], group: str, codec_names: dict[str, str], make_row) -> list[Row]:
    """A row per peer and codec (uint16 batches, one core), each against ours on that codec;
    `make_row(group, what, cores, key, unit, per_core=, compared=)` as bench.report.rows builds rows."""
    rows = []
    for key, peer, codec in PEER_ROWS:
        ours = f"wds/{codec}/uint16/1"
        what = NAMES[peer] if peer == "torchgeo" else f"{NAMES[peer]}, {CODEC_TEXT[codec]}, uint16 batches"
        comp = "; ".join(x for x in (fmt_ratio(res.ratio(f"{key}/1", "orig/1"), "original"),
                                     fmt_ratio(res.ratio(ours, f"{key}/1"),
                                               f"for ours ({codec_names[codec]}, uint16, 1 core)")) if x)
        rows.append(make_row(group, f"{what}, DataLoader ({WORKERS} worker)", "1", f"{key}/1", "samples/s",
                             per_core=1, compared=comp))
    return rows


def best_peer(res: Results, codec: str) -> tuple[str, str] | None:
    """(row key, peer) of the fastest peer on `codec` (median samples/s), None without one."""
    measured = [(res.stat(f"{key}/1").median, key, peer) for key, peer, c in PEER_ROWS
                if c == codec and res.has(f"{key}/1")]
    if not measured:
        return None
    _, key, peer = max(measured)
    return f"{key}/1", peer


def peer_headline(res: Results, codecs: tuple[str, ...], short: dict[str, str]) -> list[str]:
    """Ours against the best peer per core on each codec (per-round ratios, same run)."""
    out = []
    for codec in codecs:
        best = best_peer(res, codec)
        ratio = res.ratio(f"wds/{codec}/uint16/1", best[0]) if best else None
        if best and ratio is not None and ratio.values:
            others = [p for k, p, c in PEER_ROWS if c == codec and f"{k}/1" in res.missing]
            out.append(f"Against the peer libraries on {short[codec]} data, uint16 batches, one core: ours "
                       f"{ratio.median:.2f}x the best of them ({NAMES[best[1]].split(' (')[0]}, "
                       f"{res.stat(best[0]).median:,.0f} samples/s)"
                       + (f"; not measured: {', '.join(sorted(set(others)))}" if others else "") + ".")
    return out

