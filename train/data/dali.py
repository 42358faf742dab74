"""The DALI loader: shards -> normalised batches in an NVIDIA DALI pipeline (GPU or CPU-only).

Graph per sample (`build_graph`):

    fn.readers.webdataset (raw members, with the converter's .idx files; shard_id / num_shards)
      -> decode the bands the input needs, per modality:
           none: uint16 straight from the reader (typed with `dtypes`)
           zstd: numba kernel calling libzstd + byte unshuffle, on the CPU (DALI has no zstd)
           lz4:  chunk offsets/sizes of the wanted bands from `.lz4sizes` (numba, CPU), then
                 DALI's `inflate` on the GPU; CPU-only: a numba kernel calling liblz4 instead
      -> channels in the input's order -> optional random flip / transpose (the 8 symmetries
         of the square; training only)
      -> float32 `min(x, clip) * scale + offset` per channel (`sen12ms_common.inputs`)
    label.f32 (float32, 17) and the sample key (the reader's `source_info`) stay on the CPU.

With a GPU (`device_id` set) everything after the reader and the CPU decoders runs on the
GPU with DALI operators (slices, cat, transpose, flip, cast, arithmetic): the compressed LZ4
bytes or the uint16 arrays are copied there, never float32. CPU-only, channel selection and
normalisation are one numba pass (`dali_ops.channels_kernel`; DALI's operators would walk
the array five times); `cpu_kernels=False` runs the GPU graph's operators on the CPU. Batches
reach the training loop through `DALIGenericIterator` as the batch dict of `train.data`
(`image` float32, already model input; `target`, `prob`, `key` computed as the webdataset
loader does, from the same `LabelRule`).

Sharding and epoch length (see `DaliLoader.epoch`): rank r of W reads the reader's shard r of
W, samples [floor(r N / W), floor((r + 1) N / W)) of the split's shards in order (training:
in the shard order `train.data.plan.shard_order` draws for (seed, epoch)), which is the range
`plan.rank_range` gives for evaluation. `pad_last_batch=True` pads every reader shard to the
same number of batches by repeating its last sample and `LastBatchPolicy.PARTIAL` cuts the
padding off again, so evaluation sees every sample exactly once. Training takes exactly
N // W samples per rank (as the webdataset loader), so every rank runs
ceil((N // W) / batch_size) batches. The order within a rank is one stream (`streams` does not
apply): with shuffling off it is the webdataset loader's order with `streams=1`.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from nvidia.dali import fn, types  # first: without DALI the ImportError names nvidia.dali
import nvidia.dali.math as dmath
from nvidia.dali.pipeline import Pipeline, pipeline_def
from nvidia.dali.plugin.numba.experimental import NumbaFunction
from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

from sen12ms_common import storage
from sen12ms_common.bands import BandRef, modalities_of
from sen12ms_common.inputs import ChannelTransform
from sen12ms_common.manifest import ShardEntry, index_name
from sen12ms_common.shardformat import LABEL_EXT, SampleLayout

from . import DataError, LoaderSpec, LoaderUnavailable
from .dali_ops import (CodecLibraryError, Kernel, channel_params, channels_kernel, chunks_kernel, lz4_decompress_fn,
                       lz4_kernel, status_text, zstd_decompress_fn, zstd_kernel)
from .plan import shard_order
from .shardread import ShardError, check_shards

log = logging.getLogger(__name__)

READER = "reader"
_READER_SEED, _PIPE_SEED = 0x4441, 0x4C49


# --- which bands, decoded how ---------------------------------------------------------------

@dataclass(frozen=True)
class ChannelPlan:
    """Per modality the band indices to decode (in order of first use), and how the decoded
    arrays are concatenated into the input's channel order: runs (modality, start, stop)."""

    decode: dict[str, tuple[int, ...]]
    runs: tuple[tuple[str, int, int], ...]


def channel_plan(bands: Sequence[BandRef]) -> ChannelPlan:
    decode: dict[str, list[int]] = {}
    picks: list[tuple[str, int]] = []  # (modality, position in its decoded array) per channel
    for b in bands:
        idx = decode.setdefault(b.modality, [])
        if b.index not in idx:
            idx.append(b.index)
        picks.append((b.modality, idx.index(b.index)))
    runs: list[list[Any]] = []
    for m, pos in picks:
        if runs and runs[-1][0] == m and runs[-1][2] == pos:
            runs[-1][2] += 1
        else:
            runs.append([m, pos, pos + 1])
    ordered = {m: tuple(decode[m]) for m in modalities_of(tuple(bands))}
    return ChannelPlan(ordered, tuple((m, a, b) for m, a, b in runs))


def _runs(indices: Sequence[int]) -> list[tuple[int, int]]:
    """Consecutive index runs [a, b) of `indices` (in their order)."""
    out: list[list[int]] = []
    for i in indices:
        if out and out[-1][1] == i:
            out[-1][1] += 1
        else:
            out.append([i, i + 1])
    return [(a, b) for a, b in out]


# --- the graph ------------------------------------------------------------------------------

@dataclass(frozen=True)
class GraphSpec:
    """Everything the pipeline graph needs (plain data; kernels are built from it)."""

    paths: tuple[str, ...]
    index_paths: tuple[str, ...]
    layout: SampleLayout
    bands: tuple[BandRef, ...]
    transform: ChannelTransform
    gpu: bool = False
    normalise: bool = True     # False: uint16 stored values (as the webdataset loader hands them)
    augment: bool = False      # random flips / transposes (the 8 symmetries of the square)
    shard_id: int = 0
    num_shards: int = 1
    shuffle: bool = False
    shuffle_buffer: int = 1000
    reader_seed: int = 0
    # CPU-only: True fuses band selection and normalisation into one numba pass; False uses the
    # DALI operators of the GPU graph (slices, cat, cast, arithmetic) on the CPU (tests).
    cpu_kernels: bool = True

    @property
    def plan(self) -> ChannelPlan:
        return channel_plan(self.bands)

    @property
    def fused(self) -> bool:
        return not self.gpu and self.cpu_kernels


@dataclass
class GraphOutputs:
    names: list[str] = field(default_factory=list)
    nodes: list[Any] = field(default_factory=list)

    def add(self, name: str, node: Any) -> None:
        self.names.append(name)
        self.nodes.append(node)


def _dali_type(name: str):
    return getattr(types, name)


@lru_cache(maxsize=64)
def _numba_op(kernel: Kernel) -> NumbaFunction:
    # Compiling a kernel takes seconds; an operator instance keeps the compiled code and can be
    # called in every pipeline (each epoch builds one), so compile once per kernel and process.
    return NumbaFunction(run_fn=kernel.run_fn, setup_fn=kernel.setup_fn,
                         in_types=[_dali_type(t) for t in kernel.in_types],
                         out_types=[_dali_type(t) for t in kernel.out_types],
                         ins_ndim=list(kernel.ins_ndim), outs_ndim=list(kernel.outs_ndim))


def _numba(kernel: Kernel, *inputs):
    return _numba_op(kernel)(*inputs)


def _inflate(data, offsets, sizes, chunk_shape: tuple[int, int]):
    """DALI's GPU LZ4 decoder (`fn.decoders.inflate`; `fn.experimental.inflate` in older DALI)."""
    op = getattr(getattr(fn, "decoders", None), "inflate", None) or fn.experimental.inflate
    return op(data.gpu(), chunk_offsets=offsets, chunk_sizes=sizes, shape=list(chunk_shape),
              dtype=types.UINT16, algorithm="LZ4", layout="HW", sequence_axis_name="C")


def reader_exts(layout: SampleLayout, modalities: Sequence[str]) -> list[tuple[str, Any]]:
    """(extension, DALI type) of every reader output: arrays (+ lz4 sizes) per modality, label."""
    out: list[tuple[str, Any]] = []
    for m in modalities:
        out.append((layout.ext(m), types.UINT16 if layout.codec == "none" else types.UINT8))
        if layout.chunked:
            out.append((layout.sizes_ext(m), types.INT32))
    out.append((LABEL_EXT, types.FLOAT))
    return out


@dataclass
class Decoded:
    """One modality after decoding: uint16 `node`, the position of each band index in it, and
    a per-sample status (CPU int32 (1,)) where the codec can report one."""

    node: Any
    position: dict[int, int]
    status: Any = None


def decode_modality(spec: GraphSpec, modality: str, members: dict[str, Any]) -> Decoded:
    """The planned bands of one modality, on the GPU when `spec.gpu`."""
    layout = spec.layout
    bands = spec.plan.decode[modality]
    planned = {b: i for i, b in enumerate(bands)}
    shape = layout.shape(modality)
    data = members[layout.ext(modality)]
    if layout.codec == "none":
        if spec.fused:  # the fused kernel reads the bands straight from the member
            return Decoded(data, {b: b for b in range(shape[0])})
        x = fn.reshape(data.gpu() if spec.gpu else data, shape=list(shape), layout="CHW")
        runs = _runs(bands)
        if runs == [(0, shape[0])]:
            return Decoded(x, planned)
        parts = [x[a:b] for a, b in runs]
        return Decoded(parts[0] if len(parts) == 1 else fn.cat(*parts, axis=0), planned)
    chosen = types.Constant(np.asarray(bands, dtype=np.int32), device="cpu")
    offsets, sizes, status = _numba(chunks_kernel(shape[0]), data, members[layout.sizes_ext(modality)], chosen)
    if layout.codec == "zstd":
        x, status2 = _numba(zstd_kernel(shape[1:], layout.byte_shuffle), data, offsets, sizes)
        return Decoded(x.gpu() if spec.gpu else x, planned, status | status2)
    if spec.gpu:
        return Decoded(_inflate(data, offsets, sizes, shape[1:]), planned, status)
    x, status2 = _numba(lz4_kernel(shape[1:]), data, offsets, sizes)
    return Decoded(x, planned, status | status2)


def assemble_channels(spec: GraphSpec, decoded: dict[str, Decoded]):
    """Decoded per-modality arrays -> one uint16 (C, H, W) array in the input's channel order
    (DALI operators: the GPU graph)."""
    parts = []
    for m, a, b in spec.plan.runs:
        whole = a == 0 and b == len(spec.plan.decode[m])
        parts.append(decoded[m].node if whole else decoded[m].node[a:b])
    x = parts[0] if len(parts) == 1 else fn.cat(*parts, axis=0)
    return fn.reshape(x, layout="CHW")


def fused_channels(spec: GraphSpec, decoded: dict[str, Decoded]):
    """The same as `assemble_channels` (+ `normalise`) in one numba pass (the CPU graph)."""
    modalities = list(decoded)
    sources = [(modalities.index(b.modality), decoded[b.modality].position[b.index]) for b in spec.bands]
    t = spec.transform
    params = (channel_params(sources, t.scale, t.offset, t.clip) if spec.normalise else channel_params(sources))
    ins_ndim = tuple(1 if spec.layout.codec == "none" else 3 for _ in modalities)
    kernel = channels_kernel(ins_ndim, (spec.layout.size, spec.layout.size), len(spec.bands), spec.normalise)
    image, status = _numba(kernel, *[decoded[m].node for m in modalities], types.Constant(params, device="cpu"))
    return fn.reshape(image, layout="CHW"), status


def random_symmetry(x):
    """One of the 8 symmetries of the square per sample: transpose H/W or not, then flips.

    Converted by DALI's AutoGraph (`enable_conditionals`): the `if` runs per sample.
    """
    if fn.random.coin_flip(probability=0.5):
        x = fn.transpose(x, perm=[0, 2, 1], transpose_layout=False)
    return fn.flip(x, horizontal=fn.random.coin_flip(probability=0.5),
                   vertical=fn.random.coin_flip(probability=0.5))


def normalise(spec: GraphSpec, x):
    """uint16 (C, H, W) -> float32 `min(x, clip) * scale + offset` per channel (DALI operators)."""
    t = spec.transform
    dev = "gpu" if spec.gpu else "cpu"

    def const(v: np.ndarray):
        return types.Constant(np.asarray(v, dtype=np.float32).reshape(-1, 1, 1), device=dev)

    f = fn.cast(x, dtype=types.FLOAT)
    if np.isfinite(t.clip).any():
        f = dmath.min(f, const(t.clip))
    return f * const(t.scale) + const(t.offset)


def read_members(spec: GraphSpec) -> dict[str, Any]:
    """The reader: one output per member extension (typed), sharded and (training) shuffled."""
    exts = reader_exts(spec.layout, modalities_of(spec.bands))
    nodes = fn.readers.webdataset(
        paths=list(spec.paths), index_paths=list(spec.index_paths), ext=[e for e, _ in exts],
        dtypes=[t for _, t in exts], name=READER, shard_id=spec.shard_id, num_shards=spec.num_shards,
        pad_last_batch=True, stick_to_shard=False, random_shuffle=spec.shuffle,
        initial_fill=max(1, spec.shuffle_buffer), seed=spec.reader_seed, missing_component_behavior="error")
    nodes = nodes if isinstance(nodes, (list, tuple)) else [nodes]
    return {e: n for (e, _), n in zip(exts, nodes)}


def build_graph(spec: GraphSpec) -> GraphOutputs:
    """The whole graph (call inside a pipeline definition); outputs in iterator order:
    image, prob, key (+ status where a codec reports one)."""
    members = read_members(spec)
    decoded = {m: decode_modality(spec, m, members) for m in modalities_of(spec.bands)}
    statuses = [d.status for d in decoded.values() if d.status is not None]
    if spec.fused:
        # Normalised before the random symmetries: both commute (per-channel, per-pixel map).
        image, status = fused_channels(spec, decoded)
        statuses.append(status)
        if spec.augment:
            image = random_symmetry(image)
    else:
        image = assemble_channels(spec, decoded)
        if spec.augment:
            image = random_symmetry(image)  # on uint16: half the bytes of float32
        if spec.normalise:
            image = normalise(spec, image)
    out = GraphOutputs()
    # DALIGenericIterator has no uint16: hand those bits over as int16, viewed back in torch.
    out.add("image", image if spec.normalise else fn.reinterpret(image, dtype=types.INT16))
    label = members[LABEL_EXT]
    out.add("prob", label)
    # "<shard path>:<offset>:<member name>", zero-padded to the longest in the batch.
    out.add("key", fn.pad(fn.get_property(label, key="source_info"), fill_value=0))
    if statuses:
        status = statuses[0]
        for s in statuses[1:]:
            status = status | s
        out.add("status", status)
    return out


def define_pipeline(spec: GraphSpec, *, batch_size: int, num_threads: int, device_id: int | None,
                    seed: int, prefetch: int = 2) -> tuple[Pipeline, list[str]]:
    """A pipeline with the graph of `spec` (not built yet) and the names of its outputs."""
    names: list[str] = []

    def define():
        out = build_graph(spec)
        names.extend(out.names)
        return tuple(out.nodes)

    # Conditionals (AutoGraph) only where the random symmetries need a per-sample `if`.
    pipe = pipeline_def(define, enable_conditionals=spec.augment)(
        batch_size=batch_size, num_threads=num_threads, device_id=device_id, seed=seed,
        prefetch_queue_depth=prefetch)
    return pipe, names


def make_pipeline(spec: GraphSpec, **kwargs: Any) -> tuple[Pipeline, list[str]]:
    """`define_pipeline`, built (ready to run)."""
    pipe, names = define_pipeline(spec, **kwargs)
    pipe.build()
    return pipe, names


# --- the loader -----------------------------------------------------------------------------

def _seed(*parts: int) -> int:
    """A 31-bit seed for DALI from (seed, epoch, rank, purpose)."""
    return int(np.random.SeedSequence([int(p) % 2**63 for p in parts]).generate_state(1)[0] & 0x7FFFFFFF)


def device_id_for(device: str) -> int | None:
    """`cpu` -> None (CPU-only pipeline); `cuda` / `cuda:N` -> the CUDA device index."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return None
    return dev.index if dev.index is not None else torch.cuda.current_device()


def shard_range(total: int, rank: int, world_size: int) -> tuple[int, int]:
    """[begin, end) of the samples the reader's shard `rank` of `world_size` holds (DALI's split,
    the same as `train.data.plan.rank_range(..., equal=False)`)."""
    return total * rank // world_size, total * (rank + 1) // world_size


def keys_of(source_info: np.ndarray) -> list[str]:
    """Sample keys from zero-padded `source_info` rows ("<tar>:<offset>:<key>.<ext>")."""
    out = []
    for row in source_info:
        text = bytes(row).rstrip(b"\0").decode("utf-8", "replace")
        out.append(text.rsplit(":", 1)[-1].split(".", 1)[0])
    return out


def _error_line(exc: BaseException) -> str:
    """The one line of a DALI error that says what went wrong (and in which operator)."""
    text = str(exc)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    op = next((ln.split("`")[1] for ln in lines if ln.startswith("Error in") and ln.count("`") >= 2), "")
    after = text.split("encountered:", 1)[1] if "encountered:" in text else text
    skip = ("Critical error", "Current pipeline", "C++ context", "Error in", "which was used", "File ")
    what = next((ln.strip() for ln in after.splitlines() if ln.strip() and not ln.strip().startswith(skip)),
                lines[0] if lines else exc.__class__.__name__)
    return what + (f" (in {op})" if op else "")


class DaliLoader:
    """`Loader` (see `train.data`) over the shards of one split, read by a DALI pipeline.

    `augment`: random flips / transposes (training only; default `spec.augment` if the spec has
    one, else off). `normalise=False` hands uint16 stored values as the webdataset loader does
    (the training loop normalises them). `num_threads`: DALI CPU threads (default
    `spec.workers`, at least 1). `device_id`: None for a CPU-only pipeline; default from
    `spec.device`. `cpu_kernels=False` runs the GPU graph's DALI operators (slices, cat, cast,
    arithmetic) on the CPU instead of the fused numba pass (slower; lets tests check them).
    """

    def __init__(self, spec: LoaderSpec, *, augment: bool | None = None, normalise: bool = True,
                 num_threads: int | None = None, device_id: int | None | str = "auto", prefetch: int = 2,
                 cpu_kernels: bool = True) -> None:
        manifest = spec.manifest
        layout = manifest.layout
        missing = [m for m in modalities_of(spec.bands) if m not in layout.modalities]
        if missing:
            raise DataError(f"{spec.root}: these shards hold no {', '.join(missing)} "
                            f"(they hold {', '.join(layout.modalities)})")
        if storage.is_remote(spec.root):
            raise DataError(f"{spec.root}: the dali loader reads shards from a local folder (or a mounted file "
                            "system); use --loader webdataset for object storage, or copy the shards")
        self.spec = spec
        self.augment = bool(getattr(spec, "augment", False) if augment is None else augment) and spec.train
        self.normalise = normalise
        self.num_threads = max(1, num_threads if num_threads is not None else spec.workers)
        self.device_id = device_id_for(spec.device) if device_id == "auto" else device_id
        self.prefetch = prefetch
        self.cpu_kernels = cpu_kernels
        try:  # the codec libraries the CPU side needs, found now rather than mid-epoch
            if layout.codec == "zstd":
                zstd_decompress_fn()
            elif layout.codec == "lz4" and self.device_id is None:
                lz4_decompress_fn()
        except CodecLibraryError as exc:
            raise LoaderUnavailable(f"the dali loader cannot decode {layout.codec} shards here: {exc}") from exc
        self.skipped: list[str] = []
        self.entries = self._usable_shards(tuple(manifest.shards(spec.split)))
        total = sum(e.samples for e in self.entries)
        if spec.train:
            self.samples = total // spec.world_size
        else:
            begin, end = shard_range(total, spec.rank, spec.world_size)
            self.samples = end - begin
        self._batches = math.ceil(self.samples / spec.batch_size)

    def _usable_shards(self, entries: tuple[ShardEntry, ...]) -> tuple[ShardEntry, ...]:
        """The shards that exist (with the manifest's size when verifying) and have an index."""
        problems = check_shards(self.spec.root, entries, self.spec.verify)
        bad = {p.split(": ", 1)[0] for p in problems}
        for e in entries:
            url = storage.join(self.spec.root, e.name)
            idx = storage.join(self.spec.root, index_name(e.name))
            if url not in bad and not os.path.exists(idx):
                problems.append(f"{idx}: index file is missing (`convert shards` writes one beside each shard)")
                bad.add(url)
        if problems and not self.spec.skip_bad_shards:
            more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
            raise ShardError(f"{len(problems)} {self.spec.split} shard(s) cannot be used: "
                             + "; ".join(problems[:3]) + more)
        for p in problems:
            log.warning("will skip bad shard: %s", p)
        self.skipped.extend(problems)
        return tuple(e for e in entries if storage.join(self.spec.root, e.name) not in bad)

    def __len__(self) -> int:
        return self._batches

    def graph_spec(self, epoch: int) -> GraphSpec:
        spec = self.spec
        order = shard_order(len(self.entries), spec.seed, epoch, spec.train)
        entries = [self.entries[int(i)] for i in order]
        return GraphSpec(
            paths=tuple(storage.join(spec.root, e.name) for e in entries),
            index_paths=tuple(storage.join(spec.root, index_name(e.name)) for e in entries),
            layout=spec.manifest.layout, bands=tuple(spec.bands), transform=spec.transform,
            gpu=self.device_id is not None, normalise=self.normalise, augment=self.augment,
            shard_id=spec.rank, num_shards=spec.world_size, shuffle=spec.train,
            shuffle_buffer=spec.shuffle_buffer, reader_seed=_seed(spec.seed, epoch, spec.rank, _READER_SEED),
            cpu_kernels=self.cpu_kernels)

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[dict[str, Any]]:
        """Batches start_batch, ... of `epoch`; earlier ones are read by DALI but not converted."""
        spec = self.spec
        if self.samples == 0 or start_batch >= self._batches:
            return
        gspec = self.graph_spec(epoch)
        try:
            pipe, names = make_pipeline(gspec, batch_size=spec.batch_size, num_threads=self.num_threads,
                                        device_id=self.device_id, seed=_seed(spec.seed, epoch, spec.rank, _PIPE_SEED),
                                        prefetch=self.prefetch)
        except RuntimeError as exc:
            raise ShardError(f"{spec.root} ({spec.split}): cannot start the DALI pipeline: {_error_line(exc)}") from exc
        listed = int(pipe.reader_meta(READER)["epoch_size"])
        expected = sum(e.samples for e in self.entries)
        if listed != expected:
            del pipe
            raise ShardError(f"{spec.root} ({spec.split}): the index files list {listed} samples, the manifest "
                             f"{expected}; rewrite the shard set with `convert shards`")
        try:
            it = DALIGenericIterator([pipe], names, reader_name=READER, auto_reset=False,
                                     last_batch_policy=LastBatchPolicy.PARTIAL)
        except RuntimeError as exc:
            del pipe
            raise ShardError(f"{spec.root} ({spec.split}): reading failed in batch 0 of epoch {epoch}: "
                             f"{_error_line(exc)}") from exc
        left, j = self.samples, 0
        try:
            while left > 0:
                try:
                    out = next(it)[0]
                except StopIteration:
                    break
                except RuntimeError as exc:
                    raise ShardError(f"{spec.root} ({spec.split}): reading failed in batch {j} of epoch {epoch}: "
                                     f"{_error_line(exc)}") from exc
                n = min(len(out["prob"]), left)
                if n == 0:
                    continue  # a reader shard that is one sample shorter: all padding, cut off
                left -= n
                if j >= start_batch:
                    batch = self._batch(out, n)
                    if batch is not None:
                        yield batch
                j += 1
        finally:
            del it
            del pipe
        if left > 0:
            raise ShardError(f"{spec.root} ({spec.split}): the DALI pipeline ended {left} samples early")

    def _batch(self, out: dict[str, torch.Tensor], n: int) -> dict[str, Any] | None:
        """The first `n` samples of a DALI batch as the batch dict of `train.data`; damaged
        samples raise a `ShardError` naming them (or are left out with `skip_bad_shards`)."""
        keys = keys_of(out["key"][:n].cpu().numpy())
        prob = out["prob"][:n].cpu().numpy().astype(np.float32, copy=True)
        image = out["image"][:n]
        if not self.normalise:
            image = image.view(torch.uint16)
        keep = np.ones(n, dtype=bool)
        if "status" in out:
            status = out["status"][:n].cpu().numpy().reshape(n, -1).max(axis=1)
            for i in np.flatnonzero(status):
                msg = f"{self.spec.root}: sample {keys[i]} ({self.spec.split}): {status_text(int(status[i]))}"
                if not self.spec.skip_bad_shards:
                    raise ShardError(msg)
                log.warning("skipping bad sample: %s", msg)
                self.skipped.append(msg)
                keep[i] = False
        if not keep.all():
            if not keep.any():
                return None
            sel = np.flatnonzero(keep)
            image = image[torch.from_numpy(sel).to(image.device)]
            prob = prob[sel]
            keys = [keys[i] for i in sel]
        return {
            "image": image,
            "target": torch.from_numpy(self.spec.rule.targets(prob)),
            "prob": torch.from_numpy(prob),
            "key": keys,
        }

    def close(self) -> None:
        pass


def make_loader(spec: LoaderSpec) -> DaliLoader:
    return DaliLoader(spec)


# --- throughput -----------------------------------------------------------------------------

def throughput(root: str, split: str = "train", *, loader: str = "dali", input_spec: str = "s1s2",
               batch_size: int = 32, threads: int = 1, device: str = "cpu", normalise: bool = True,
               train: bool = False, epochs: int = 2, stats: str = "official", preread: bool = True) -> dict[str, float]:
    """Samples/s of a loader over one split, into model input (`normalise`) or uint16 batches.

    `loader="dali"`: this module's loader with `threads` DALI CPU threads; `"webdataset"`: the
    webdataset loader with `threads` worker processes (0: in this process), its uint16 batches
    normalised on `device` as the training loop does, so both yield the same float batches.
    The shard files are read once first (`preread`: the page cache, not the disk, is
    measured), one untimed epoch starts everything (numba compilation, worker start), then
    `epochs` epochs are timed, each with its own pipeline start. Returns samples_per_s,
    samples, seconds and threads.
    """
    from sen12ms_common.bands import resolve_bands
    from sen12ms_common.igbp import LabelRule
    from sen12ms_common.inputs import channel_transform
    from sen12ms_common.manifest import load_manifest

    from . import make_loader as _make

    manifest = load_manifest(root)
    bands = resolve_bands(input_spec)
    transform = channel_transform(bands, stats, manifest.stats)
    spec = LoaderSpec(root=root, manifest=manifest, split=split, bands=bands, rule=LabelRule("multi_label"),
                      batch_size=batch_size, transform=transform, train=train, workers=threads, device=device,
                      verify=False)
    if loader == "dali":
        ld: Any = DaliLoader(spec, normalise=normalise, num_threads=max(1, threads))
        to_input = None
    else:
        from ..device import InputTransform

        ld = _make(loader, spec)
        to_input = InputTransform(transform, torch.device(device)) if normalise else None
    if preread:
        for e in manifest.shards(split):
            with open(storage.join(root, e.name), "rb") as f:
                while f.read(1 << 22):
                    pass
    n, t0 = 0, time.perf_counter()
    for e in range(epochs + 1):
        if e == 1:
            n, t0 = 0, time.perf_counter()
        for batch in ld.epoch(e):
            x = batch["image"] if to_input is None else to_input(batch["image"])
            if x.is_cuda:
                torch.cuda.synchronize(x.device)
            n += len(batch["key"])
    seconds = time.perf_counter() - t0
    ld.close()
    return {"samples_per_s": n / seconds, "samples": float(n), "seconds": seconds, "threads": float(threads)}
