"""The loader's worker processes: they live as long as their loader and decode into reused
shared-memory slots; an epoch left early, a worker killed, a consumer holding every batch, a
loader closed or dropped."""

from __future__ import annotations

import gc
import os
import signal
from pathlib import Path

import pytest

from test_loader import keys_of, spec, write_shards
from test_loader_threads import check_against_truth
from train.data import make_loader
from sen12ms_common.errors import DataError


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("procs") / "shards"
    truth = write_shards(root, {"train": [5, 7, 3, 6, 4], "val": [4, 6]}, seed=5)
    return root, truth


def workers_of(loader) -> list:
    feeds = loader._feeds
    return [] if feeds is None else list(feeds.procs)


def test_workers_outlive_epochs_and_an_epoch_left_early(shards):
    root, truth = shards
    threads = make_loader("webdataset", spec(root, "train", train=True, seed=4, streams=3, workers=0, threads=1))
    want = [keys_of(threads, e) for e in range(3)]
    threads.close()
    loader = make_loader("webdataset", spec(root, "train", train=True, seed=4, streams=3, workers=2))
    it = loader.epoch(0)
    first = next(it)
    pids = [p.pid for p in workers_of(loader)]
    assert len(pids) == 2 and all(p.is_alive() for p in workers_of(loader))
    it.close()  # left after one batch: what the workers had read ahead is dropped
    check_against_truth([first], truth)
    assert first["key"] == want[0][:len(first["key"])]
    for e in range(3):
        batches = list(loader.epoch(e))
        check_against_truth(batches, truth)
        assert [k for b in batches for k in b["key"]] == want[e]
    assert [p.pid for p in workers_of(loader)] == pids  # the same processes, their buffers warm
    procs = workers_of(loader)
    loader.close()
    assert not any(p.is_alive() for p in procs)


def test_a_resumed_epoch_with_workers_starts_at_its_batch(shards):
    root, _ = shards
    loader = make_loader("webdataset", spec(root, "train", train=True, seed=1, streams=2, workers=2))
    whole = keys_of(loader, 1)
    assert keys_of(loader, 1, start_batch=2) == whole[2 * 4:]
    loader.close()


def test_a_consumer_holding_every_batch_of_several_epochs_gets_intact_batches(shards):
    root, truth = shards
    loader = make_loader("webdataset", spec(root, "train", train=True, seed=3, streams=1, workers=1, batch_size=2))
    held = [b for e in range(3) for b in loader.epoch(e)]  # far more batches than slots
    check_against_truth(held, truth)
    assert len(held) == 3 * 13
    loader.close()


def test_a_killed_worker_stops_the_epoch_with_one_line(shards):
    root, _ = shards
    loader = make_loader("webdataset", spec(root, "train", train=True, seed=2, streams=2, workers=2, batch_size=2))
    it = loader.epoch(0)
    next(it)
    victim = workers_of(loader)[1]
    os.kill(victim.pid, signal.SIGKILL)
    with pytest.raises(DataError, match=r"^loader worker process 1 died \(killed by signal 9; out of memory\?\): "
                                        r"run again with --resume"):
        for _ in it:
            pass
    loader.close()


def test_a_loader_dropped_without_close_stops_its_workers(shards):
    root, _ = shards
    loader = make_loader("webdataset", spec(root, "val", workers=2, streams=2))
    keys_of(loader)
    procs = workers_of(loader)
    assert all(p.is_alive() for p in procs)
    del loader
    gc.collect()
    for p in procs:
        p.join(timeout=10)
    assert not any(p.is_alive() for p in procs)


def test_workers_auto_is_a_worker_process_per_cpu_where_there_are_several(monkeypatch):
    from train.data import resolve_workers

    cpus = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(cpus)})
        assert resolve_workers("auto", streams=8) == 0  # one CPU: the process reads, in a thread
        if len(cpus) > 1:
            os.sched_setaffinity(0, cpus)
            assert resolve_workers("auto", streams=8) == min(len(cpus), 8)
            assert resolve_workers("auto", streams=1) == 0  # one stream: a lone worker would only cost
            monkeypatch.setenv("LOCAL_WORLD_SIZE", str(len(cpus)))  # torchrun: the node's CPUs shared by its ranks
            assert resolve_workers("auto", streams=8) == 0
    finally:
        os.sched_setaffinity(0, cpus)
    assert resolve_workers(3) == 3 and resolve_workers(0) == 0


def test_the_workers_option_takes_auto_or_a_number():
    import click

    from train.cli.options import MAX_WORKERS, WorkersParam

    param = WorkersParam()
    assert param.convert("auto", None, None) == "auto" and param.convert("AUTO", None, None) == "auto"
    assert param.convert("4", None, None) == 4 and param.convert(0, None, None) == 0
    for bad, says in (("lots", "neither auto nor a number"), (str(MAX_WORKERS + 1), "not in the range"),
                      (MAX_WORKERS + 1, "not in the range"), (-1, "not in the range")):
        with pytest.raises(click.BadParameter, match=says):
            param.convert(bad, None, None)
