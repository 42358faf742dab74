"""How many CPUs this process may use: the default of every `--workers` and of the loader's
`--workers auto` (a container or `taskset` gives fewer than the machine has)."""

from __future__ import annotations

import os


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
