"""The front door's rows: `ShardDataset` under a torch DataLoader (0 and 1 workers), uint16
batches, against the native loader reading in this process on the same core."""

from __future__ import annotations

from bench.measure.results import Results, Row, fmt_ratio
from bench.measure.timing import Repeat, steady_rate, warm_up

WORKERS = (0, 1)


def key(codec: str, workers: int) -> str:
    return f"door/{codec}/{workers}"


def dataset_repeat(root: str, settings, num_workers: int, seed: int) -> Repeat:
    """A shuffled epoch of the train split through `DataLoader(ShardDataset(...), batch_size=None)`
    after a warm-up epoch (the worker is persistent, so that it keeps its reused buffers as the
    native loader does; it reads the same epoch twice, which costs what any other epoch does)."""
    from torch.utils.data import DataLoader  # start-up time: torch only when used

    from train.data import ShardDataset  # start-up time: imports torch

    ds = ShardDataset(root, "train", input=settings.input_spec, label_type=settings.label_type, normalize=None,
                      batch_size=settings.batch_size, shuffle=True, seed=seed)
    ds.set_epoch(seed)
    loader = DataLoader(ds, batch_size=None, num_workers=num_workers, persistent_workers=num_workers > 0)
    try:
        warm_up(loader)
        return steady_rate(loader, lambda b: len(b["key"]))
    finally:
        ds.close()
        del loader  # its persistent worker ends with it


def front_door_rows(res: Results, codec: str, codec_name: str, make_row) -> list[Row]:
    """`make_row(group, what, cores, key, unit, per_core=, compared=)` as bench.report.rows builds rows."""
    native = f"wds/{codec}/uint16/1"
    return [make_row("Loader (train split, shuffled)",
                     f"ShardDataset via DataLoader, {w} worker{'s' if w != 1 else ''}, {codec_name}, uint16 batches",
                     "1", key(codec, w), "samples/s", per_core=1,
                     compared=fmt_ratio(res.ratio(key(codec, w), native), "the native loader (goal >= 0.9x)"))
            for w in WORKERS]
