"""The keys of every batch a run uses, as log records a caller may subscribe to (the tests check
with them which samples each rank read)."""

from __future__ import annotations

import logging
from typing import Callable

# One DEBUG record per batch, with `split`, `epoch`, `keys` and `rank` as attributes. Nothing is
# built unless a handler has enabled the level, so a run pays nothing for it.
KEYS_LOG = logging.getLogger("sen12ms.train.keys")


def key_events(rank: int, split: str, epoch: int | str) -> Callable[[list[str]], None] | None:
    """The `on_keys` callback of one pass (None when nobody listens)."""
    if not KEYS_LOG.isEnabledFor(logging.DEBUG):
        return None

    def emit(keys: list[str]) -> None:
        KEYS_LOG.debug("%s %s: %d keys", split, epoch, len(keys),
                       extra={"split": split, "epoch": epoch, "keys": list(keys), "rank": rank})

    return emit


__all__ = ["KEYS_LOG", "key_events"]
