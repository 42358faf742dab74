"""The converter's worker pool (convert/workers.py): results in input order for any number of
workers, a worker's exception named in the parent, and a worker that dies - also half-way
through sending a large result, where ProcessPoolExecutor waits forever - ends the map with
`ConvertError` at once, leaving no process behind."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from convert.workers import WorkerPool
from sen12ms_common.errors import ConvertError


def _square_and_pid(i: int) -> tuple[int, int]:
    return i * i, os.getpid()


def _fails_on_three(i: int) -> int:
    if i == 3:
        raise ValueError(f"bad item {i}")
    return i


def _slow_first_then_killed_while_sending(i: int) -> bytes:
    if i == 0:
        time.sleep(2.0)  # the parent waits for this result while worker 1 is stuck sending its own
        return b""
    # Worker 1: 64 MB fill the pipe and block the send (nobody reads it yet); then it is killed.
    threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGKILL)).start()
    return b"x" * (64 << 20)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("workers", [1, 2, 3])
@pytest.mark.parametrize("window", [None, 1, 5])
def test_results_come_in_input_order_from_every_worker(workers: int, window: int | None):
    with WorkerPool(_square_and_pid, workers) as pool:
        first = list(pool.map(range(20), window))
        second = list(pool.map(range(5)))  # the same processes serve another map
        pids = pool.pids
    assert [r for r, _ in first] == [i * i for i in range(20)] and [r for r, _ in second] == [0, 1, 4, 9, 16]
    if workers == 1:
        assert pids == [] and {p for _, p in first} == {os.getpid()}
    else:
        assert len(pids) == workers and {p for _, p in first} == set(pids)  # item k ran on worker k % n
        assert [p for _, p in first[:workers]] == pids
        assert not any(_alive(p) for p in pids)


def test_an_exception_in_a_worker_is_raised_in_the_parent_with_its_traceback():
    with pytest.raises(RuntimeError, match=r"in worker process \d+: ValueError: bad item 3\n") as err:
        with WorkerPool(_fails_on_three, 2) as pool:
            pids = pool.pids
            got = []
            for r in pool.map(range(10)):
                got.append(r)
    assert got == [0, 1, 2] and "_fails_on_three" in str(err.value)
    assert not any(_alive(p) for p in pids)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="reads process states from /proc")
def test_a_worker_killed_while_sending_a_large_result_ends_the_map_at_once():
    start = time.monotonic()
    with pytest.raises(ConvertError, match=r"worker process \d+ died \(killed by signal 9\)"):
        with WorkerPool(_slow_first_then_killed_while_sending, 2) as pool:
            pids = pool.pids
            for _ in pool.map(range(2)):
                pass
    assert time.monotonic() - start < 30
    assert not any(_alive(p) for p in pids)  # the other worker is stopped too
