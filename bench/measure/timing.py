"""Timing primitives: one repeat of a rate, the statistics of repeats, CPU pinning."""

from __future__ import annotations

import os
import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator


@dataclass
class Repeat:
    """One timed repeat: `items` (samples, or steps) in `seconds`."""

    items: float
    seconds: float
    startup_s: float = 0.0  # time to the first batch (not part of `seconds`)

    @property
    def rate(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Stat:
    """Median, min and max of the repeats of one figure."""

    values: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")

    @property
    def min(self) -> float:
        return min(self.values) if self.values else float("nan")

    @property
    def max(self) -> float:
        return max(self.values) if self.values else float("nan")

    def scaled(self, factor: float) -> "Stat":
        return Stat([v * factor for v in self.values])


def warm_up(batches: Iterable[Any], settle: float = 0.2) -> None:
    """Run through a warm-up epoch keeping none of its batches, so that the timed epoch finds
    every reused batch buffer of the loader free; after the first batch, wait `settle` seconds
    so that the loader fills everything it holds in flight (docs/DESIGN.md)."""
    for i, _ in enumerate(batches):
        if i == 0:
            time.sleep(settle)


def steady_rate(batches: Iterable[Any], count: Callable[[Any], int],
                consume: Callable[[Any], Any] = lambda b: None) -> Repeat:
    """Iterate a loader's batches (after `consume`, e.g. the float conversion) and time them."""
    t0 = time.perf_counter()
    first = None
    n = n_first = 0
    for batch in batches:
        consume(batch)
        k = count(batch)
        if first is None:
            first, n_first = time.perf_counter(), k
        n += k
    end = time.perf_counter()
    if first is None:
        raise RuntimeError("the loader yielded no batch")
    if n == n_first:  # a single batch: all we can say is the whole time
        return Repeat(n, end - t0, 0.0)
    return Repeat(n - n_first, end - first, first - t0)


def one_cpu(repeat: int) -> int:
    """The CPU a one-core measurement pins to; rotated by repeat so that a busy CPU does not
    penalise the same rows every time."""
    cpus = sorted(os.sched_getaffinity(0))
    return cpus[repeat % len(cpus)]


@contextmanager
def pinned(cpu: int | None) -> Iterator[None]:
    """Run the block (and every process or thread it starts) on one CPU, torch on one thread;
    `None`: as it is (all cores)."""
    if cpu is None:
        yield
        return
    import torch  # start-up time: torch only when used

    old_mask, old_threads = os.sched_getaffinity(0), torch.get_num_threads()
    os.sched_setaffinity(0, {cpu})
    torch.set_num_threads(1)
    try:
        yield
    finally:
        os.sched_setaffinity(0, old_mask)
        torch.set_num_threads(old_threads)
