"""`ShardDataModule`: train / val / test `ShardDataset` loaders of one shard set as a Lightning
data module (the optional extra `.[lightning]`), e.g. for TorchGeo's trainers (docs/api.md)."""

from __future__ import annotations

import os
from typing import Any, Callable

from torch.utils.data import DataLoader

try:
    import lightning as L
except ImportError as exc:  # one line for the user, not an import traceback
    from sen12ms_common.errors import DataError

    raise DataError(f"ShardDataModule needs Lightning ({exc}): pip install '.[lightning]'") from None

from sen12ms_common.format.manifest import Manifest, load_manifest

from .dataset import ShardDataset


class EpochLoader(DataLoader):
    """A DataLoader that hands its dataset the epoch before each pass (Lightning calls
    `set_epoch` only on samplers, which an iterable dataset has none of)."""

    def __init__(self, dataset: ShardDataset, epoch_of: Callable[[], int], **kwargs: Any) -> None:
        super().__init__(dataset, batch_size=None, **kwargs)
        self.epoch_of = epoch_of

    def __iter__(self):
        self.dataset.set_epoch(self.epoch_of())
        return super().__iter__()


class ShardDataModule(L.LightningDataModule):
    """Loaders of the `train`, `val` and `test` splits of `root` (a folder or s3:// URL); every
    other keyword is a `ShardDataset` option (input, label_type, igbp, task, normalize, ...).
    Training batches are shuffled and (with `augment`) augmented, the others are not. A split the
    shard set lacks gives no loader."""

    def __init__(self, root: str | os.PathLike, *, batch_size: int = 32, num_workers: int = 0,
                 train_split: str = "train", val_split: str = "val", test_split: str = "test",
                 pin_memory: bool = False, **options: Any) -> None:
        super().__init__()
        self.root, self.batch_size, self.num_workers = str(root), batch_size, num_workers
        self.splits = {"train": train_split, "val": val_split, "test": test_split}
        self.pin_memory, self.options = pin_memory, options
        self.datasets: dict[str, ShardDataset] = {}
        self.manifest: Manifest | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.manifest is None:
            self.manifest = load_manifest(self.root)
        for role, split in self.splits.items():
            if role not in self.datasets and split in self.manifest.splits:
                train = role == "train"
                opts = {**self.options, "augment": train and bool(self.options.get("augment", False))}
                self.datasets[role] = ShardDataset(self.root, split, batch_size=self.batch_size, shuffle=train,
                                                   manifest=self.manifest, **opts)

    def _loader(self, role: str) -> Any:
        ds = self.datasets.get(role)
        if ds is None:
            return []  # Lightning: no batches of this kind
        trainer = getattr(self, "trainer", None)
        return EpochLoader(ds, lambda: trainer.current_epoch if trainer is not None else 0,
                           num_workers=min(self.num_workers, ds.shards), pin_memory=self.pin_memory)

    def train_dataloader(self) -> Any:
        return self._loader("train")

    def val_dataloader(self) -> Any:
        return self._loader("val")

    def test_dataloader(self) -> Any:
        return self._loader("test")


__all__ = ["ShardDataModule", "EpochLoader"]
