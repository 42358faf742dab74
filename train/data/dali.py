"""The DALI loader: shards -> normalised batches in an NVIDIA DALI pipeline (GPU or CPU-only);
the graph is in `dali_graph`, the CPU decoders in `dali_ops` (docs/DESIGN.md: how it reads and shards)."""

from __future__ import annotations

import logging
import math
import os
from typing import Any, Iterator

import numpy as np
import torch
from nvidia.dali import fn  # noqa: F401  (first: without DALI the ImportError names nvidia.dali)
from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

from sen12ms_common.errors import DataError, ShardError, UnavailableError
from sen12ms_common.format.manifest import ShardEntry, index_name
from sen12ms_common.storage import files as storage

from .dali_graph import (READER, ChannelPlan, GraphSpec, build_graph, channel_plan, define_pipeline,  # noqa: F401
                         make_pipeline)
from .dali_ops import lz4_decompress_fn, status_text, zstd_decompress_fn
from .daligate import ShardGate, reading_order
from .plan import shard_order
from .shardread import check_shards
from .spec import LoaderSpec, check_modalities, mask_source

log = logging.getLogger(__name__)

_READER_SEED, _PIPE_SEED = 0x4441, 0x4C49


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


def sources_of(source_info: np.ndarray) -> list[tuple[str, str]]:
    """(shard path, sample key) from zero-padded `source_info` rows ("<tar>:<offset>:<key>.<ext>")."""
    out = []
    for row in source_info:
        text = bytes(row).rstrip(b"\0").decode("utf-8", "replace")
        shard, _, member = text.rsplit(":", 2) if text.count(":") >= 2 else ("", "", text)
        out.append((shard, member.split(".", 1)[0]))
    return out


def keys_of(source_info: np.ndarray) -> list[str]:
    """Sample keys from zero-padded `source_info` rows ("<tar>:<offset>:<key>.<ext>")."""
    return [key for _, key in sources_of(source_info)]


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
        layout = manifest.layout_of(spec.split)
        if mask_source(spec) is not None:
            raise DataError("the dali loader makes no segmentation masks: use --loader shards for segmentation")
        check_modalities(manifest, spec.bands, spec.root, spec.split)
        if storage.is_remote(spec.root):
            raise DataError(f"{spec.root}: the dali loader reads shards from a local folder (or a mounted file "
                            "system); use --loader shards for object storage, or copy the shards")
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
        except UnavailableError as exc:
            raise UnavailableError(f"the dali loader cannot decode {layout.codec} shards here: {exc}") from exc
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

    def _ordered(self, epoch: int) -> list[ShardEntry]:
        order = shard_order(len(self.entries), self.spec.seed, epoch, self.spec.train)
        return [self.entries[int(i)] for i in order]

    def _gate(self, gspec: GraphSpec, entries: list[ShardEntry]) -> ShardGate | None:
        """The checker of the shards this rank's reader reads (verifying), in its reading order;
        `entries`: the epoch's shards, those of `gspec.paths`."""
        spec = self.spec
        if not spec.verify:
            return None
        first = shard_range(sum(e.samples for e in entries), spec.rank, spec.world_size)[0]
        order = reading_order(gspec.paths, [e.samples for e in entries], first)
        per_shard = max(1, sum(e.samples for e in entries) // max(1, len(entries)))
        held = spec.shuffle_buffer + (self.prefetch + 2) * spec.batch_size  # samples DALI reads ahead
        return ShardGate([gspec.paths[i] for i in order], [entries[i] for i in order],
                         ahead=-(-held // per_shard) + 1)

    def graph_spec(self, epoch: int) -> GraphSpec:
        return self._graph_spec(epoch, self._ordered(epoch))

    def _graph_spec(self, epoch: int, entries: list[ShardEntry]) -> GraphSpec:
        spec = self.spec
        return GraphSpec(
            paths=tuple(storage.join(spec.root, e.name) for e in entries),
            index_paths=tuple(storage.join(spec.root, index_name(e.name)) for e in entries),
            layout=spec.manifest.layout_of(spec.split), bands=tuple(spec.bands), transform=spec.transform,
            gpu=self.device_id is not None, normalise=self.normalise, augment=self.augment,
            shard_id=spec.rank, num_shards=spec.world_size, shuffle=spec.train,
            shuffle_buffer=spec.shuffle_buffer, reader_seed=_seed(spec.seed, epoch, spec.rank, _READER_SEED),
            cpu_kernels=self.cpu_kernels, frame_checksums=not spec.verify)

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[dict[str, Any]]:
        """Batches start_batch, ... of `epoch`; earlier ones are read by DALI but not converted."""
        spec = self.spec
        if self.samples == 0 or start_batch >= self._batches:
            return
        entries = self._ordered(epoch)
        gspec = self._graph_spec(epoch, entries)
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
        gate = self._gate(gspec, entries)
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
                    batch = self._batch(out, n, gate)
                    if batch is not None:
                        yield batch
                j += 1
        finally:
            if gate is not None:
                gate.close()
            del it
            del pipe
        if left > 0:
            raise ShardError(f"{spec.root} ({spec.split}): the DALI pipeline ended {left} samples early")

    def _unusable(self, msg: str, keep: np.ndarray, i: int) -> None:
        """Sample i cannot be used because of `msg`: raise, or (`skip_bad_shards`) leave it out."""
        if not self.spec.skip_bad_shards:
            raise ShardError(msg)
        if msg not in self.skipped:
            log.warning("skipping bad %s: %s", "sample" if "sample " in msg else "shard", msg)
            self.skipped.append(msg)
        keep[i] = False

    def _batch(self, out: dict[str, torch.Tensor], n: int, gate: ShardGate | None = None) -> dict[str, Any] | None:
        """The first `n` samples of a DALI batch as the batch dict of `train.data`, once `gate`
        has checked their shards; samples of a shard that does not match or damaged samples
        raise a `ShardError` naming them (or are left out with `skip_bad_shards`)."""
        sources = sources_of(out["key"][:n].cpu().numpy())
        keys = [k for _, k in sources]
        keep = np.ones(n, dtype=bool)
        bad_shards = gate.problems(s for s, _ in sources) if gate is not None else {}
        for i, (shard, _) in enumerate(sources):
            if shard in bad_shards:
                self._unusable(bad_shards[shard], keep, i)
        prob = out["prob"][:n].cpu().numpy().astype(np.float32, copy=True)
        image = out["image"][:n]
        if not self.normalise:
            image = image.view(torch.uint16)
        if "status" in out:
            status = out["status"][:n].cpu().numpy().reshape(n, -1).max(axis=1)
            for i in np.flatnonzero((status != 0) & keep):
                self._unusable(f"{self.spec.root}: sample {keys[i]} ({self.spec.split}): "
                               f"{status_text(int(status[i]))}", keep, i)
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
