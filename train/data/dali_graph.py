"""The DALI pipeline graph of the DALI loader: reader, decoders per codec, channels, augmentation, normalisation."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Sequence

import numpy as np
from nvidia.dali import fn, types  # first: without DALI the ImportError names nvidia.dali
import nvidia.dali.math as dmath
from nvidia.dali.pipeline import Pipeline, pipeline_def
from nvidia.dali.plugin.numba.experimental import NumbaFunction

from sen12ms_common.format.sample import LABEL_EXT, N_LABEL, SampleLayout
from sen12ms_common.vocab.bands import BandRef, modalities_of
from sen12ms_common.vocab.inputs import ChannelTransform

from .dali_fused import channel_params, channels_kernel, label_kernel, zstd_channels_kernel
from .dali_ops import Kernel, chunks_kernel, lz4_kernel, zstd_kernel

READER = "reader"


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
    # False where the loader checks each shard's checksum before its batches are handed out.
    frame_checksums: bool = True

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
        x, status2 = _numba(zstd_kernel(shape[1:], layout.byte_shuffle, spec.frame_checksums), data, offsets,
                                  sizes)
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
    plane = spec.layout.size * spec.layout.size
    lengths = tuple(spec.layout.shape(m)[0] * plane if spec.layout.codec == "none" else 0 for m in modalities)
    kernel = channels_kernel(ins_ndim, (spec.layout.size, spec.layout.size), len(spec.bands), spec.normalise,
                             lengths)
    image, status = _numba(kernel, *[decoded[m].node for m in modalities], types.Constant(params, device="cpu"))
    return fn.reshape(image, layout="CHW"), status


def fused_zstd_channels(spec: GraphSpec, members: dict[str, Any]):
    """zstd members -> the input's channels in one numba pass per sample (the CPU graph): each
    band decoded into its channel, normalised there when `spec.normalise`."""
    layout, modalities = spec.layout, list(spec.plan.decode)
    inputs = []
    for m in modalities:
        inputs += [members[layout.ext(m)], members[layout.sizes_ext(m)]]
    sources = [(modalities.index(b.modality), b.index) for b in spec.bands]
    t = spec.transform
    params = channel_params(sources, t.scale, t.offset, t.clip) if spec.normalise else channel_params(sources)
    kernel = zstd_channels_kernel(tuple(layout.shape(m)[0] for m in modalities), (layout.size, layout.size),
                                  len(spec.bands), spec.normalise, layout.byte_shuffle, spec.frame_checksums)
    image, status = _numba(kernel, *inputs, types.Constant(params, device="cpu"))
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
        initial_fill=max(1, spec.shuffle_buffer), seed=spec.reader_seed, missing_component_behavior="error",
        # Read, not mapped: a shard cut short in place is a read error DALI reports, where a
        # mapped page past the file's new end would end the process (SIGBUS).
        dont_use_mmap=True)
    nodes = nodes if isinstance(nodes, (list, tuple)) else [nodes]
    return {e: n for (e, _), n in zip(exts, nodes)}


def build_graph(spec: GraphSpec) -> GraphOutputs:
    """The whole graph (call inside a pipeline definition); outputs in iterator order:
    image, prob, key (+ status where a codec reports one)."""
    members = read_members(spec)
    fused_zstd = spec.fused and spec.layout.codec == "zstd"
    decoded = {} if fused_zstd else {m: decode_modality(spec, m, members) for m in modalities_of(spec.bands)}
    statuses = [d.status for d in decoded.values() if d.status is not None]
    if spec.fused:
        # Normalised before the random symmetries: both commute (per-channel, per-pixel map).
        image, status = fused_zstd_channels(spec, members) if fused_zstd else fused_channels(spec, decoded)
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
    # Another number of values than N_LABEL is a status (as the webdataset loader refuses it).
    prob, label_status = _numba(label_kernel(N_LABEL), label)
    statuses.append(label_status)
    out.add("prob", prob)
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

    # Conditionals (AutoGraph) only where the random symmetries need a per-sample `if`. The
    # dynamic executor's outputs are owned by what it returns, so the PyTorch iterator hands
    # them over through DLPack instead of copying each batch.
    pipe = pipeline_def(define, enable_conditionals=spec.augment)(
        batch_size=batch_size, num_threads=num_threads, device_id=device_id, seed=seed,
        prefetch_queue_depth=prefetch, exec_dynamic=True)
    return pipe, names


def make_pipeline(spec: GraphSpec, **kwargs: Any) -> tuple[Pipeline, list[str]]:
    """`define_pipeline`, built (ready to run)."""
    pipe, names = define_pipeline(spec, **kwargs)
    pipe.build()
    return pipe, names
