"""A debugging aid: the keys of every sample a rank used, one `split epoch key` line each."""

from __future__ import annotations

from pathlib import Path


class KeyTrace:
    """Appends `split epoch key` lines of every sample this rank used to `<dir>/keys-rank<R>.txt`
    (enabled by SEN12MS_TRACE_KEYS=DIR; checks that ranks read disjoint parts)."""

    def __init__(self, folder: str | None, rank: int) -> None:
        self.path = Path(folder) / f"keys-rank{rank}.txt" if folder else None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, split: str, epoch: int | str, keys: list[str]) -> None:
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as f:
                f.writelines(f"{split} {epoch} {k}\n" for k in keys)

    def writer(self, split: str, epoch: int | str) -> "SplitTrace":
        return SplitTrace(self, split, epoch)


class SplitTrace:
    """`KeyTrace` bound to one split and epoch: called with a batch's keys."""

    def __init__(self, trace: KeyTrace, split: str, epoch: int | str) -> None:
        self.trace, self.split, self.epoch = trace, split, epoch

    def __call__(self, keys: list[str]) -> None:
        self.trace(self.split, self.epoch, keys)


__all__ = ["KeyTrace", "SplitTrace"]
