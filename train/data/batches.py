"""Raw samples -> one uint16 batch: each used band decoded straight into its channel of a
preallocated batch, the samples of a batch spread over decoding threads."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from sen12ms_common.format.buffers import BufferPool
from sen12ms_common.errors import ShardError
from sen12ms_common.format.codecs import BandDecoder
from sen12ms_common.format.sample import LABEL_EXT, N_LABEL, decode_bands_into, decode_label
from sen12ms_common.storage import files as storage
from sen12ms_common.vocab.bands import modality_runs
from sen12ms_common.vocab.dfc import DfcScheme

from .leases import lent_tensor
from .shardread import RawSample, ShardSource
from .spec import BatchBuffers

log = logging.getLogger(__name__)

KEEP = 6  # free batch buffers kept per shape: those a training step and the loader's queue hold


class BatchDecoder:
    """Decodes lists of raw samples into batch dicts (see `train.data`) for one source."""

    def __init__(self, src: ShardSource, threads: int = 1, pin_memory: bool = False,
                 buffers: BatchBuffers | None = None) -> None:
        self.src, self.threads, self.pin_memory, self.buffers = src, max(1, threads), pin_memory, buffers
        # Only these bands are ever decoded, a run at a time.
        self.runs = modality_runs(src.bands)
        # A batch's buffers go back to these pools when its tensors are freed (`leases`).
        self._pool = BufferPool(np.uint16, keep=KEEP)
        self._masks = BufferPool(np.uint8, keep=KEEP)
        # Stored mask value -> 0-based training class (255 = ignore), for the mask's member.
        scheme = DfcScheme(src.savanna)
        self.lut = None if src.mask is None else scheme.dfc_lut() if src.mask == "dfc" else scheme.igbp_lut()
        self._local = threading.local()
        self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix="decode") if self.threads > 1 else None
        self.slots: Any = None  # in a worker process: its shared-memory slots (`procs.WorkerSlots`)
        self._urls: dict[str, str] = {}  # shard name -> url (a path join per sample costs 2 %)

    def _url(self, shard: str) -> str:
        url = self._urls.get(shard)
        if url is None:
            url = self._urls[shard] = storage.join(self.src.root, shard)
        return url

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)

    def _band_decoder(self) -> BandDecoder:
        d = getattr(self._local, "decoder", None)
        if d is None:
            # Verified shards are checked whole before a sample leaves them (`read_slice`): the
            # frames' own checksums would check the same bytes again.
            d = self._local.decoder = BandDecoder(frame_checksums=not self.src.verify)
        return d

    def _buffer(self, shape: tuple[int, ...], full: int, pool: BufferPool, dtype: torch.dtype) -> torch.Tensor:
        if self.pin_memory and torch.cuda.is_available():
            return torch.empty(shape, dtype=dtype, pin_memory=True)  # torch's pinned cache reuses it
        if self.buffers is not None:
            return self.buffers.place(shape, dtype)
        tensor = lent_tensor(pool, (full,) + shape[1:])
        return tensor[:shape[0]] if shape[0] < full else tensor

    def _dropped(self, old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        """`new`, a copy of what `old` holds: `old`'s buffer goes back now if it is not ours."""
        if self.buffers is not None:
            self.buffers.drop(old)
        return new

    def _decode_one(self, sample: RawSample, out: np.ndarray, prob: np.ndarray | None,
                    mask: np.ndarray | None) -> str | None:
        """Fill one batch slot and its label row, or its mask; returns the problem ("url: sample
        key: reason") or None."""
        key, members, shard = sample
        layout = self.src.layout
        try:
            decoder = self._band_decoder()
            for modality, bands, first in self.runs:
                if modality not in layout.modalities:
                    raise ShardError(f"these shards hold no {modality}")
                decode_bands_into(members, modality, layout, bands, out[first:first + len(bands)], decoder)
            if mask is not None:
                assert self.lut is not None and self.src.mask is not None
                decode_bands_into(members, self.src.mask, layout, [0], mask[None], decoder)
                mask[...] = self.lut[mask]
            else:
                assert prob is not None
                if LABEL_EXT not in members:
                    raise ShardError(f"member .{LABEL_EXT} is missing")
                prob[...] = decode_label(members[LABEL_EXT])
        except ShardError as exc:
            return f"{storage.join(self.src.root, shard)}: sample {key}: {exc}"
        return None

    def decode(self, chunk: list[RawSample], full: int, events: list[str],
               symmetries: np.ndarray | None = None) -> dict[str, Any] | None:
        """One batch of `chunk` (a batch of `full` samples, or the shorter last one); None if
        every sample failed (with `skip_bad`). `symmetries`: per sample one of the 8 symmetries of
        the square, handed on as the batch's `symmetry` codes (applied where the batch becomes
        model input, `train.data.symmetry`)."""
        got = self.decode_slotted(chunk, full, events, symmetries)
        return None if got is None else got[0]

    def decode_slotted(self, chunk: list[RawSample], full: int, events: list[str],
                       symmetries: np.ndarray | None = None) -> tuple[dict[str, Any], int | None] | None:
        """`decode`, and the worker process's slot the batch's image (and mask) lie in, if any."""
        n, size = len(chunk), self.src.layout.size
        slot = self.slots.take() if self.slots is not None else None
        if slot is not None:
            image = torch.from_numpy(slot[1][:n])
            masks = None if self.lut is None else torch.from_numpy(slot[2][:n])
        else:
            image = self._buffer((n, len(self.src.bands), size, size), full, self._pool, torch.uint16)
            masks = None if self.lut is None else self._buffer((n, size, size), full, self._masks, torch.uint8)
        out = image.numpy()
        mask = None if masks is None else masks.numpy()
        prob = np.empty((n, N_LABEL), dtype=np.float32) if mask is None else None

        def one(i: int) -> str | None:
            return self._decode_one(chunk[i], out[i], None if prob is None else prob[i],
                                    None if mask is None else mask[i])

        if self._executor is None:
            problems = [one(i) for i in range(n)]
        else:
            problems = list(self._executor.map(one, range(n)))
        good = [i for i, p in enumerate(problems) if p is None]
        for p in problems:
            if p is None:
                continue
            if not self.src.skip_bad:
                raise ShardError(p)
            log.warning("skipping bad sample: %s", p)
            events.append(p)
        if not good:
            if slot is not None:
                self.slots.give(slot[0])
            return None
        keys = [chunk[i][0] for i in good]
        extra: dict[str, Any] = {"key": keys, "shard": [self._url(chunk[i][2]) for i in good]}
        in_slot = None
        if slot is not None:
            if len(good) == n:
                in_slot = slot[0]  # the batch is the slot's
            else:
                self.slots.give(slot[0])  # the good samples are copied out below
        if symmetries is not None:
            extra["symmetry"] = torch.from_numpy(np.asarray(symmetries, dtype=np.uint8)[good])
        if masks is not None:
            if len(good) < n:  # the rare path of a bad sample: copies
                image, masks = self._dropped(image, image[good]), self._dropped(masks, masks[good])
            return {"image": image, "mask": masks, **extra}, in_slot
        assert prob is not None
        if len(good) < n:
            image, prob = self._dropped(image, image[good]), prob[good]
        return {"image": image, "target": torch.from_numpy(self.src.rule.targets(prob)),
                "prob": torch.from_numpy(prob), **extra}, in_slot
