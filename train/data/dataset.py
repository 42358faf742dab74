"""`ShardDataset`: the shard loader as a `torch.utils.data.IterableDataset` (docs/api.md), the
one door through which user code and `python -m train` read shards.

It batches itself (into the loader's reused buffers): use it with `DataLoader(ds, batch_size=None)`.
The epoch is split over torchrun ranks (`plan.rank_range`) and, within a rank, over DataLoader
workers in blocks of whole batches (`plan.part_range`); each reader runs the native loader in
its own process.
"""

from __future__ import annotations

import dataclasses
import gc
import os
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from sen12ms_common.cpus import usable_cpus
from sen12ms_common.errors import DataError, Sen12msError
from sen12ms_common.format.buffers import BufferPool
from sen12ms_common.format.manifest import Manifest, load_manifest
from sen12ms_common.vocab.bands import resolve_bands
from sen12ms_common.vocab.igbp import LabelRule
from sen12ms_common.vocab.inputs import channel_transform

from ..run.device import InputTransform
from .handover import Handover
from .leases import lent_tensor
from .plan import epoch_plan
from .receiver import Receiver, forget_inherited
from .registry import make_loader
from .spec import Loader, LoaderSpec, check_modalities, mask_source, resolve_workers
from .symmetry import apply_symmetries

TASK_TARGETS = {"classification": "labels", "segmentation": "mask"}


class _ShardDatasetError(DataError):
    """A DataError of a ShardDataset. Raised in a DataLoader worker, torch raises it again in the
    main process with the worker's traceback as its message; this keeps the one line that says
    what is wrong (and which worker)."""

    def __init__(self, message: str = "") -> None:
        if message.startswith("Caught ") and "\nOriginal Traceback" in message:
            where = message.split("\n", 1)[0].removeprefix("Caught _ShardDatasetError ").rstrip(".")
            last = message.rstrip().splitlines()[-1]
            message = f"{last.partition(': ')[2]} ({where})"
        super().__init__(message)


def _distributed(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """This process's (rank, world size): as given, else torch.distributed's, else torchrun's
    environment, else (0, 1)."""
    if rank is not None and world_size is not None:
        return rank, world_size
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        got = dist.get_rank(), dist.get_world_size()
    else:
        got = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    return (got[0] if rank is None else rank), (got[1] if world_size is None else world_size)


def round_robin(counts: list[int]) -> list[int]:
    """The reader of each batch of an epoch in the order a DataLoader delivers them: it takes a
    batch from each worker in turn, passing over the workers that have none left."""
    left, order = list(counts), []
    while any(left):
        for w, n in enumerate(left):
            if n:
                order.append(w)
                left[w] -= 1
    return order


def resumed_part(counts: list[int], delivered: int, worker: int) -> tuple[int, int]:
    """(part, batches of it to skip) of DataLoader worker `worker` when a pass resumes after
    `delivered` batches: the workers play the parts rotated so that worker 0 plays the part whose
    turn it is, and the DataLoader's turns go on as in the pass that was left."""
    order = round_robin(counts)
    if delivered >= len(order):
        return worker, counts[worker]
    part = (worker + order[delivered]) % len(counts)
    return part, order[:delivered].count(part)


class ShardDataset(IterableDataset):
    """Batches of one split of a shard set (a folder or an s3:// URL); see docs/api.md.

    Each item is a dict: `image` (B, C, H, W) float32 normalised (`normalize` names the
    statistics) or uint16 stored values (`normalize=None`); `label` (classification: int64 (B,)
    0-based classes, or int64 (B, classes) 0/1 for multi_label) or `mask` (segmentation:
    int64 (B, H, W), 255 = ignore); `key`: the B sample keys.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", *, input: str = "s2",
                 label_type: str = "multi_label", igbp: str = "simple", threshold: float = 0.1,
                 task: str = "classification", no_savanna: bool = False, normalize: str | None = "official",
                 batch_size: int = 32, shuffle: bool | None = None, seed: int = 0, augment: bool = False,
                 verify: bool = True, skip_bad_shards: bool = False, workers: int | str = 0, threads: int = 0,
                 streams: int = 8, shuffle_buffer: int = 1000, rank: int | None = None,
                 world_size: int | None = None, pin_memory: bool = False, manifest: Manifest | None = None) -> None:
        super().__init__()
        self.root = str(root)
        try:
            self.manifest = manifest or load_manifest(self.root)
            self.spec = self._spec(split, input, label_type, igbp, threshold, task, no_savanna, normalize,
                                   batch_size, split == "train" if shuffle is None else bool(shuffle), seed,
                                   augment, verify, skip_bad_shards, workers, threads, streams, shuffle_buffer,
                                   pin_memory)
        except DataError:
            raise
        except Sen12msError as exc:  # a manifest, band, label or statistics error: one DataError
            raise _ShardDatasetError(str(exc).splitlines()[0]) from None
        self.normalize = normalize or None
        self.rank, self.world_size = rank, world_size
        self.shards = len(self.manifest.shards(split))
        self._epoch, self._batch = 0, 0  # the pass's epoch and the batches it handed out
        self._resume = 0  # the batch the next pass starts at (load_state_dict)
        self._loaders: dict[tuple[Any, ...], Loader] = {}
        self._skipped: list[str] = []
        self._input = None
        self._receiver = Receiver()  # the batch slots of DataLoader workers, on this process's side
        self._handover: Handover | None = None
        self._floats = BufferPool(np.float32, keep=4)  # model input batches, back once freed
        if self.normalize:
            # The training loop's CPU conversion (one implementation of it: train.run.device).
            self._input = InputTransform(self.spec.transform, torch.device("cpu"))
        self.loader()  # missing or (verify) wrong-sized shards fail here, as one ShardError

    def _spec(self, split: str, input: str, label_type: str, igbp: str, threshold: float, task: str,
              no_savanna: bool, normalize: str | None, batch_size: int, shuffle: bool, seed: int, augment: bool,
              verify: bool, skip_bad_shards: bool, workers: int | str, threads: int, streams: int,
              shuffle_buffer: int, pin_memory: bool) -> LoaderSpec:
        m = self.manifest
        if split not in m.splits:
            raise DataError(f"{self.root}: no {split!r} split in this shard set (it has: {', '.join(m.splits)})")
        if task not in TASK_TARGETS:
            raise DataError(f"unknown task {task!r} (choose one of: {', '.join(TASK_TARGETS)})")
        if batch_size < 1:
            raise DataError(f"batch_size must be at least 1, not {batch_size}")
        bands = resolve_bands(input)
        check_modalities(m, bands, self.root, split, "convert them with those modalities or choose another input")
        spec = LoaderSpec(root=self.root, manifest=m, split=split, bands=bands,
                          rule=LabelRule(label_type, igbp, threshold), batch_size=batch_size,
                          transform=channel_transform(bands, normalize or "official", m.stats), train=shuffle,
                          seed=seed, workers=resolve_workers(workers, streams), threads=threads, streams=streams,
                          shuffle_buffer=shuffle_buffer, pin_memory=pin_memory, verify=verify, skip_bad_shards=skip_bad_shards,
                          augment=augment and shuffle, targets=TASK_TARGETS[task],
                          no_savanna=no_savanna and task == "segmentation")
        mask_source(spec)  # a split that cannot give the task's targets fails here
        return spec

    def input_transform(self, device: str | torch.device = "cpu", stats: str | None = None):
        """Stored uint16 batches (`normalize=None`) -> normalised float32 model input on `device`,
        with the statistics named by `stats` (default: `normalize`, else official): call it on a
        GPU after moving the batch there, the cheapest place to convert."""
        transform = channel_transform(self.spec.bands, stats or self.normalize or "official", self.manifest.stats)
        return InputTransform(transform, torch.device(device))

    # --- epochs and resuming ----------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next pass reads (its shuffle and augmentation), from its first batch."""
        self._epoch, self._batch, self._resume = int(epoch), 0, 0
        self._receiver.purge()  # the slots of last epoch's workers, if they ended

    def state_dict(self) -> dict[str, int]:
        """Where this pass stands: its epoch and the batches this process has handed out of it."""
        return {"epoch": self._epoch, "batch": self._batch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume: the next pass reads epoch `state["epoch"]` from batch `state["batch"]` on (the
        batches a DataLoader delivered so far, with any number of workers); later passes start
        at their first batch."""
        self._epoch, self._resume = int(state["epoch"]), int(state.get("batch", 0))
        self._batch = self._resume

    # --- sizes ----------------------------------------------------------------------------------

    def _plan(self, part: int = 0, parts: int = 1):
        rank, world = _distributed(self.rank, self.world_size)
        s = self.spec
        return epoch_plan([e.samples for e in self.manifest.shards(s.split)], batch_size=s.batch_size, seed=s.seed,
                          epoch=self._epoch, shuffle=s.train, streams=s.streams, rank=rank, world_size=world,
                          part=part, parts=parts)

    @property
    def samples(self) -> int:
        """Samples of an epoch on this rank (every DataLoader worker together)."""
        return self._plan().samples

    def __len__(self) -> int:
        """Batches of an epoch on this rank, whatever the number of DataLoader workers."""
        return self._plan().batches

    # --- reading --------------------------------------------------------------------------------

    def loader(self, part: int = 0, parts: int = 1, in_worker: bool = False) -> Loader:
        """The native loader of reader `part` of `parts` on this rank (kept across epochs)."""
        rank, world = _distributed(self.rank, self.world_size)
        key = (part, parts, rank, world, in_worker)
        if key not in self._loaders:
            spec = dataclasses.replace(self.spec, part=part, parts=parts, rank=rank, world_size=world)
            if in_worker:
                # A DataLoader worker reads in its own process, its share of the CPUs as threads;
                # stored values go out as decoded: they are decoded into the slots they cross in.
                as_decoded = self._input is None and not spec.augment
                spec = dataclasses.replace(spec, workers=0, threads=spec.threads or max(1, usable_cpus() // parts),
                                           batch_buffers=self._handover if as_decoded else None)
            self._loaders[key] = make_loader("shards", spec)
        return self._loaders[key]

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[dict[str, Any]]:
        """The native batches of `epoch` on this rank from `start_batch` on (uint16 `image`,
        `target`/`prob` or `mask`, `symmetry` codes): what `python -m train` reads."""
        return self.loader().epoch(epoch, start_batch)

    @property
    def skipped(self) -> list[str]:
        """"shard: reason" of every shard or sample skipped so far (`skip_bad_shards`), by every
        reader of this dataset, closed ones too. One list for the dataset's life: a caller may
        append what it skips itself (train.run.labelcheck does)."""
        for loader in self._loaders.values():
            self._skipped.extend(s for s in loader.skipped if s not in self._skipped)
        return self._skipped

    def close(self) -> None:
        self.skipped  # noqa: B018  (keeps what the readers skipped before they go)
        for loader in self._loaders.values():
            loader.close()
        self._loaders = {}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        part, parts = (info.id, info.num_workers) if info is not None else (0, 1)
        if parts > self.shards:
            raise _ShardDatasetError(f"{self.root}: {parts} DataLoader workers for the {self.shards} shard(s) of "
                                     f"the {self.spec.split} split: use num_workers={self.shards} or fewer")
        epoch, start = self._epoch, self._resume
        self._resume, self._batch = 0, start
        if start:
            part, start = resumed_part([self._plan(p, parts).batches for p in range(parts)], start, part)
        if info is not None:
            if self._handover is None:
                # A new worker. The mappings it inherited by a fork would keep ended workers' slots
                # alive; what it inherited stays out of its garbage collections (traversing the main
                # process's heap, a training script's, would cost each full collection that much).
                forget_inherited()
                gc.freeze()
                # Batches written into shared slots the DataLoader sends as they are (`handover`).
                self._handover = Handover(self._receiver, info.id, self.spec.batch_size)
            self._handover.drop_unhanded()  # what a pass left early had decoded ahead
        try:
            for batch in self.loader(part, parts, info is not None).epoch(epoch, start):
                self._batch += 1
                yield self._view(batch)
        except Sen12msError as exc:
            if info is None:
                raise
            raise _ShardDatasetError(str(exc).splitlines()[0]) from None

    def _view(self, batch: dict[str, Any]) -> dict[str, Any]:
        """A native batch in TorchGeo's keys, augmented and (with `normalize`) model input; in a
        DataLoader worker its image and mask written into shared slots (`handover`)."""
        sym, image, hand = batch.get("symmetry"), batch["image"], self._handover
        if self._input is not None:
            shape = tuple(image.shape)
            into = hand.place(shape, torch.float32) if hand is not None else self._float_batch(shape)
            image = self._input(image, sym, out=into)
        else:
            image = apply_symmetries(image, sym)
            image = image if hand is None else hand.lay(image)
        out: dict[str, Any] = {"image": image}
        if "mask" in batch:
            mask = apply_symmetries(batch["mask"], sym)
            out["mask"] = mask.long() if hand is None else hand.lay(mask, torch.int64)
        else:
            # Multi-label 0/1 rows as int64, as TorchGeo's multi-label datasets (BigEarthNet) give
            # them: its metrics count them; its BCE loss (and yours) takes `.float()`.
            out["label"] = batch["target"].to(torch.int64)
        out["key"] = batch["key"]
        return out if hand is None else hand.hand(out)

    def _float_batch(self, shape: tuple[int, ...]) -> torch.Tensor:
        """A float32 batch of `shape` over a reused buffer (a fresh one is mapped page by page)."""
        full = (max(shape[0], self.spec.batch_size), *shape[1:])
        return lent_tensor(self._floats, full)[:shape[0]]

    def __getstate__(self) -> dict[str, Any]:
        # To DataLoader workers (spawn, forkserver): each makes its own loader and buffers.
        return {**self.__dict__, "_loaders": {}, "_handover": None, "_floats": BufferPool(np.float32, keep=4)}


__all__ = ["ShardDataset"]
