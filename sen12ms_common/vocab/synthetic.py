"""The mark of a tree written by `python -m convert synth`: a small text file at its root, so that
what is made from it (shards, the overview) can say that the data is synthetic, not SEN12MS."""

from __future__ import annotations

from sen12ms_common.storage import files as storage

MARKER_NAME = "SYNTHETIC_SAMPLE_DATA.txt"
MARKER_TEXT = ("This tree was written by `python -m convert synth` (seed {seed}): synthetic sample data in the "
               "SEN12MS format, not satellite imagery. Shards converted from it and their overview say so.\n")


def is_synthetic(root: str) -> bool:
    """Whether the tree at `root` (folder or URL) carries the marker of the sample generator."""
    try:
        return storage.exists(storage.join(root, MARKER_NAME))
    except OSError:
        return False


__all__ = ["MARKER_NAME", "MARKER_TEXT", "is_synthetic"]
