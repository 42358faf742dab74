"""The bench's timing harness measures a loader's steady state: its warm-up leaves the loader's
reused batch buffers free for the timed epoch."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Iterator

from bench.loaders import LoaderSettings, webdataset_spec
from bench.measure import steady_rate, warm_up
from train.data import make_loader


def _recording(batches: Iterable[dict[str, Any]], ptrs: set[int]) -> Iterator[dict[str, Any]]:
    for batch in batches:
        ptrs.add(batch["image"].data_ptr())
        yield batch


def test_the_timed_epoch_fills_the_buffers_of_the_warm_up_epoch(sample_shards: Path):
    """A batch of the warm-up held into the timed epoch kept one buffer from the loader, so the
    timed epoch allocated (and first touched) another: up to a quarter of a bench epoch here."""
    loader = make_loader("webdataset", webdataset_spec(str(sample_shards), LoaderSettings(), 0, 0, batch_size=4))
    try:
        warmed: set[int] = set()
        warm_up(_recording(loader.epoch(0), warmed))
        timed: set[int] = set()
        rep = steady_rate(_recording(loader.epoch(1), timed), lambda b: len(b["key"]))
    finally:
        loader.close()
    assert rep.items > 0 and len(warmed) >= 2
    assert timed <= warmed
