"""The names of a shard set: splits, shard and index files, the part tag of a conversion in parts."""

from __future__ import annotations

import re

SPLITS: tuple[str, ...] = ("train", "val", "test")
# The DFC2020 contest subsets -> the splits they are converted into (with dfc masks, no labels).
DFC2020_SPLIT_OF: dict[str, str] = {"ROIs0000_validation": "dfc2020_val", "ROIs0000_test": "dfc2020_test"}
DFC2020_SPLITS: tuple[str, ...] = tuple(DFC2020_SPLIT_OF.values())
ALL_SPLITS: tuple[str, ...] = SPLITS + DFC2020_SPLITS
REQUIRED_SPLITS: tuple[str, ...] = ("train", "test")  # a split file set without val is complete
# `pNNNNofNNNN`: part I of N of a conversion in parts (`convert shards --part I/N`).
PART_TAG = r"p\d{4,}of\d{4,}"
SPLIT_NAME = re.compile(r"^[a-z][a-z0-9_]*$")  # what a manifest may call a split
# A shard or its DALI index in a shard set folder, with the part tag where it was made in parts.
SHARD_FILE_RE = re.compile(rf"^(?P<split>{'|'.join(ALL_SPLITS)})-(?:(?P<part>{PART_TAG})-)?(?P<i>\d{{6}})\.(?P<ext>tar|idx)$")


def part_tag(index: int, count: int) -> str:
    return f"p{index:04d}of{count:04d}"


def shard_name(split: str, index: int) -> str:
    """`train-000003.tar` (`split` may carry a part tag: `train-p0001of0004`)."""
    return f"{split}-{index:06d}.tar"


def is_shard_name(name: str, split: str) -> bool:
    """`<split>-NNNNNN.tar`, or `<split>-pNNNNofNNNN-NNNNNN.tar` of a conversion in parts."""
    return (SPLIT_NAME.match(split) is not None
            and re.fullmatch(rf"{re.escape(split)}-(?:{PART_TAG}-)?\d{{6}}\.tar", name) is not None)


def index_name(shard: str) -> str:
    """The DALI index file of a shard: `train-000000.idx`."""
    return shard[: -len(".tar")] + ".idx"
