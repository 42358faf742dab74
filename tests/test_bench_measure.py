"""The bench's timing harness measures a loader's steady state: its warm-up leaves the loader's
reused batch buffers free for the timed epoch."""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import Any, Iterable, Iterator

from bench.cases.loaders import LoaderSettings, webdataset_spec
from bench.measure.timing import warm_up
from train.data import make_loader


def _watched(batches: Iterable[dict[str, Any]], refs: list[weakref.ref]) -> Iterator[dict[str, Any]]:
    for batch in batches:
        refs.append(weakref.ref(batch["image"]))
        yield batch


def test_the_warm_up_epoch_holds_no_batch_when_the_timed_epoch_starts(sample_shards: Path):
    """A batch of the warm-up still held when the timed epoch starts keeps its buffer from the
    loader's pool, and the timed epoch then allocates (and first touches) another."""
    loader = make_loader("webdataset", webdataset_spec(str(sample_shards), LoaderSettings(), 0, 0, batch_size=4))
    try:
        refs: list[weakref.ref] = []
        warm_up(_watched(loader.epoch(0), refs), settle=0.05)
        assert len(refs) >= 2
        assert [r for r in refs if r() is not None] == []
    finally:
        loader.close()


def test_only_keeps_the_rows_under_its_prefixes_and_the_blocks_that_hold_them():
    from bench.run.config import BenchConfig

    every = BenchConfig()
    assert all(every.wants(k) for k in ("conv", "peer/litdata/zstd/1", "wds/none/float/1", "s3"))
    cfg = BenchConfig(only=("peer", "wds/zstd/float", "orig/1"))
    assert cfg.wants("peer/mds/none/1") and cfg.wants("wds/zstd/float/1") and cfg.wants("orig/1")
    assert cfg.wants("peer") and cfg.wants("wds")  # a block some wanted rows are in: prepared
    assert not any(cfg.wants(k) for k in ("wds/zstd/uint16/1", "orig/2", "conv", "train", "s3", "dali", "gpu"))
