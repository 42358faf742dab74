"""The front door and the loaders: `ShardDataset` (a torch IterableDataset over the `shards`
loader) and `ShardDataModule` (Lightning), docs/api.md; `--loader NAME` -> a factory.

`python -m train` reads through the same `ShardDataset`; DALI is the other factory.

A factory takes a `LoaderSpec` and returns a `Loader`:

    loader = make_loader("shards", spec)
    len(loader)                # batches per epoch on this rank (defined before reading)
    loader.samples             # samples per epoch on this rank
    for batch in loader.epoch(epoch, start_batch=0): ...

Every batch is a dict:
- `image`: tensor (B, C, H, W). `torch.uint16` = stored values (S2 reflectance, S1 codes) that
  the training loop turns into model input with the spec's `ChannelTransform` on the device;
  a floating tensor is already model input (a loader that normalises itself, e.g. DALI on GPU).
- `target`: int64 (B,) class indices (single-label) or float32 (B, classes) 0/1 (multi-label).
- `prob`: float32 (B, 17) the stored IGBP probability vectors (metrics derive true labels).
- `key`: list of B sample keys (the S2 stem, `ROIs1158_spring_s2_1_p30`).
- `shard` (optional): list of B shard URLs the samples came from (error messages name them).
- `symmetry` (with `augment`): uint8 (B,) codes of the symmetry of the square each sample is to
  be moved by, applied where the batch becomes model input (`train.data.symmetry`); the image
  itself is as stored. A loader that augments on its own (DALI) hands no codes.

With `LoaderSpec(targets="mask")` (segmentation; shards loader only) a batch holds `image`,
`mask`, `key` and `shard`, no `target` or `prob`:
- `mask`: torch.uint8 (B, H, W), 0-based DFC2020 training classes, 255 = ignore: from a dfc
  member (DFC2020 splits) as `sen12ms_common.vocab.dfc.dfc_to_train` maps it, else from lc band 1
  (IGBP) as `igbp_to_dfc` maps it; `no_savanna` folds savanna away (9 classes). The `symmetry`
  codes move the mask with its image.

`epoch(e, start_batch=s)` yields batches s, s+1, ... of epoch e; the order of an epoch is a
function of the spec (seed, batch size, streams, rank, world size) and e, not of the number of
worker processes (see `train.data.plan`).
"""

from __future__ import annotations

from typing import Any

from sen12ms_common.errors import DataError

from .registry import LOADERS, RENAMED, canonical_loader, get_factory, loader_names, make_loader
from .spec import AUTO, TARGETS, Loader, LoaderSpec, check_modalities, mask_source, resolve_workers

__all__ = ["AUTO", "TARGETS", "DataError", "Loader", "LoaderSpec", "LOADERS", "RENAMED",
           "canonical_loader", "check_modalities", "get_factory", "loader_names", "make_loader", "mask_source",
           "resolve_workers", "ShardDataset", "ShardDataModule"]


def __getattr__(name: str) -> Any:
    # The front door (docs/api.md), imported when first used: `import train.data` needs neither
    # the readers nor Lightning.
    if name == "ShardDataset":
        from . import dataset  # start-up time: torch only when the front door is used

        return getattr(dataset, name)
    if name == "ShardDataModule":
        from .datamodule import ShardDataModule  # optional extra: Lightning

        return ShardDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
