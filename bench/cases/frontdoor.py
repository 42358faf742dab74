"""The front door's rows: `ShardDataset` under a torch DataLoader (0 and 1 workers), uint16
batches, against the native loader (one worker process) measured beside them in the same round on
the same core, over the same number of epochs."""

from __future__ import annotations

import itertools

from bench.measure.results import Results, Row, fmt_ratio
from bench.measure.timing import Repeat, steady_rate, warm_up

WORKERS = (0, 1)
# Timed epochs per repeat: one epoch of the bench's 1,012 samples lasts about half a second on
# uncompressed shards, and one hiccup of a shared VM then decides a round's ratio.
EPOCHS = 2


def key(codec: str, workers: int) -> str:
    return f"door/{codec}/{workers}"


def native_key(codec: str) -> str:
    """The native loader measured beside the front door's rows (its reference)."""
    return f"door/{codec}/native"


def dataset_repeat(root: str, settings, num_workers: int, seed: int) -> Repeat:
    """`EPOCHS` shuffled epochs of the train split through `DataLoader(ShardDataset(...),
    batch_size=None)` after a warm-up epoch (the worker is persistent, so that it keeps its reused
    buffers as the native loader does; it reads the same epoch again, which costs what any other
    epoch does)."""
    from torch.utils.data import DataLoader  # start-up time: torch only when used

    from train.data import ShardDataset  # start-up time: imports torch

    ds = ShardDataset(root, "train", input=settings.input_spec, label_type=settings.label_type, normalize=None,
                      batch_size=settings.batch_size, shuffle=True, seed=seed)
    ds.set_epoch(seed)
    loader = DataLoader(ds, batch_size=None, num_workers=num_workers, persistent_workers=num_workers > 0)
    try:
        warm_up(loader)
        return steady_rate(itertools.chain.from_iterable(loader for _ in range(EPOCHS)), lambda b: len(b["key"]))
    finally:
        ds.close()
        del loader  # its persistent worker ends with it


def front_door_rows(res: Results, codec: str, codec_name: str, make_row) -> list[Row]:
    """`make_row(group, what, cores, key, unit, per_core=, compared=)` as bench.report.rows builds rows."""
    native = native_key(codec)
    return [make_row("Loader (train split, shuffled)",
                     f"ShardDataset via DataLoader, {w} worker{'s' if w != 1 else ''}, {codec_name}, uint16 batches",
                     "1", key(codec, w), "samples/s", per_core=1,
                     compared=fmt_ratio(res.ratio(key(codec, w), native), "the native loader (goal >= 0.9x)"))
            for w in WORKERS]
