"""Rows beside our loader: a stock webdataset pipeline over the same shards, the memory-copy
floor of uncompressed shards, and the read + decode limit of a codec."""

from __future__ import annotations

import random
import time
from pathlib import Path

import lz4.block
import numpy as np
import zstandard

from bench.measure.timing import Repeat, steady_rate
from sen12ms_common.format.codecs import BandDecoder
from sen12ms_common.format.manifest import index_name, load_manifest
from sen12ms_common.format.mapped import map_file
from sen12ms_common.format.sample import SampleLayout, decode_bands_into
from sen12ms_common.kernels.streamcopy import stream_unshuffle, take_planes
from sen12ms_common.vocab.bands import modality_runs, resolve_bands


def read_index(path: Path) -> list[dict[str, tuple[int, int]]]:
    """A wds2idx (v1.2) index: per sample, member ext -> (offset, size)."""
    lines = path.read_text().splitlines()
    out = []
    for line in lines[1:]:
        parts = line.split()
        out.append({parts[i]: (int(parts[i + 1]), int(parts[i + 2])) for i in range(0, len(parts), 4)})
    return out


def _stock_decode(layout: SampleLayout, channels: list[tuple[str, int]]):
    def bands(sample: dict, m: str) -> np.ndarray:
        count = layout.shape(m)[0]
        data = sample[layout.ext(m)]
        if layout.codec == "none":
            return np.frombuffer(data, "<u2").reshape(count, layout.size, layout.size)
        ends = np.cumsum(np.frombuffer(sample[layout.sizes_ext(m)], "<i4"))[:-1]
        frames = np.split(np.frombuffer(data, np.uint8), ends)
        if layout.codec == "lz4":
            planes = [np.frombuffer(lz4.block.decompress(f.tobytes(), uncompressed_size=2 * layout.size ** 2), "<u2")
                      for f in frames]
        else:  # the FORMAT.md snippet
            planes = [np.frombuffer(zstandard.decompress(f.tobytes()), np.uint8).reshape(2, -1).T.copy().view("<u2")
                      for f in frames]
        return np.stack(planes).reshape(count, layout.size, layout.size)

    def decode(sample: dict) -> tuple[np.ndarray, np.ndarray]:
        arrays = {m: bands(sample, m) for m in {m for m, _ in channels}}
        image = np.stack([arrays[m][b] for m, b in channels])
        return image, np.frombuffer(sample["label.f32"], "<f4")

    return decode


def stock_repeat(root: str, input_spec: str, batch_size: int, seed: int) -> Repeat:
    """One shuffled epoch of a stock webdataset pipeline (in this process, as in a notebook)."""
    import webdataset as wds  # start-up time: webdataset only when used

    manifest = load_manifest(root)
    urls = [str(Path(root) / e.name) for e in manifest.shards("train")]
    channels = [(b.modality, b.index) for b in resolve_bands(input_spec)]
    pipeline = (wds.WebDataset(urls, shardshuffle=len(urls), detshuffle=True, seed=seed, empty_check=False)
                .shuffle(1000, rng=random.Random(seed))
                .map(_stock_decode(manifest.layout, channels))
                .batched(batch_size))
    return steady_rate(pipeline, lambda b: len(b[0]))


def _shards(root: str) -> list[tuple[Path, list[dict[str, tuple[int, int]]]]]:
    manifest = load_manifest(root)
    return [(Path(root) / e.name, read_index(Path(root) / index_name(e.name))) for e in manifest.shards("train")]


def _walk(root: str, batch_size: int, fill) -> Repeat:
    """Map every train shard (as the loader maps a local shard) and `fill(members, slot)` each
    sample into a reused batch; times the whole pass."""
    shards = _shards(root)
    batch = None
    n, t0 = 0, time.perf_counter()
    for path, index in shards:
        with open(path, "rb") as f:
            data = map_file(f) or memoryview(f.read())
        for members in index:
            got = {ext: data[off:off + length] for ext, (off, length) in members.items()}
            batch = fill(got, n % batch_size)
            n += 1
    seconds = time.perf_counter() - t0
    if batch is None:
        raise RuntimeError(f"{root}: no train samples")
    return Repeat(n, seconds)


def _warm() -> None:
    """Load the compiled writers before the clock starts (numba's cache, read once per process)."""
    take_planes(np.frombuffer(bytes(128), np.uint8), [1], np.empty((1, 32), dtype=np.uint16))
    stream_unshuffle(np.empty(64, np.uint8), np.zeros(64, np.uint8))


def floor_repeat(root: str, input_spec: str, batch_size: int) -> Repeat:
    """Uncompressed shards: bytes mapped, every used pixel copied into a batch slot (with the
    fastest copy there is: the loader's, which bypasses the caches)."""
    layout = load_manifest(root).layout
    if layout.codec != "none":
        raise ValueError("the memory-copy floor reads uncompressed shards")
    runs = modality_runs(resolve_bands(input_spec))
    batch = np.empty((batch_size, sum(len(r[1]) for r in runs), layout.size, layout.size), dtype=np.uint16)

    _warm()

    def fill(members: dict, slot: int) -> np.ndarray:
        for m, chosen, first in runs:
            take_planes(np.frombuffer(members[layout.ext(m)], np.uint8), chosen,
                        batch[slot, first:first + len(chosen)])
        return batch

    return _walk(root, batch_size, fill)


def limit_repeat(root: str, input_spec: str, batch_size: int) -> Repeat:
    """Bytes mapped, every used band decoded into a batch slot by the format's band decoder."""
    layout = load_manifest(root).layout
    runs = modality_runs(resolve_bands(input_spec))
    batch = np.empty((batch_size, sum(len(r[1]) for r in runs), layout.size, layout.size), dtype=np.uint16)
    decoder = BandDecoder(frame_checksums=False)  # as the loader decodes verified shards
    _warm()

    def fill(members: dict, slot: int) -> np.ndarray:
        for m, chosen, first in runs:
            decode_bands_into(members, m, layout, chosen, batch[slot, first:first + len(chosen)], decoder)
        return batch

    return _walk(root, batch_size, fill)
