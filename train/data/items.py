"""What a reader (a reading thread or a worker process) hands its loader, one typed item at a
time: a decoded batch, a batch whose samples all failed, the end of a stream, or the error that
stopped it. Each carries the problems met since the reader's last item (`events`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Decoded:
    """Batch j of stream v (`at` = (j, v)). `slot`: in a worker process, the shared-memory slot
    its image (and mask) were decoded into; they cross to the loader by that slot, not by value."""

    at: tuple[int, int]
    batch: dict[str, Any]
    events: list[str] = field(default_factory=list)
    slot: int | None = None


@dataclass(frozen=True)
class Skipped:
    """Batch `at` had no good sample (with skip_bad_shards): the epoch goes on without it."""

    at: tuple[int, int]
    events: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Ended:
    """Stream `stream` has no batch left (at its planned end, or early: skipped shards)."""

    stream: int
    events: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Failed:
    """A shard error that stops the epoch (`message` names the shard)."""

    message: str
    events: list[str] = field(default_factory=list)


Item = Decoded | Skipped | Ended | Failed


@dataclass(frozen=True)
class Done:
    """A worker process finished the epoch it was asked for (`token`)."""

    token: int


@dataclass(frozen=True)
class WorkerFailed:
    """A worker process stopped on an unexpected exception (`message`: its last line)."""

    message: str


def position(item: Item) -> tuple[int, int] | None:
    """The (batch, stream) an item stands for: a decoded or a skipped batch."""
    return item.at if isinstance(item, (Decoded, Skipped)) else None


__all__ = ["Decoded", "Done", "Ended", "Failed", "Item", "Skipped", "WorkerFailed", "position"]
