"""`train.data.ShardDataModule` (the `.[lightning]` extra): its loaders under a Lightning Trainer
(a new shuffle each epoch, every sample once), and TorchGeo's ClassificationTask and
SemanticSegmentationTask training a step from it on the sample shards."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from torchgeo.trainers import ClassificationTask, SemanticSegmentationTask

from sen12ms_common.format.manifest import load_manifest
from shardtools import run_shards
from train.data import ShardDataModule

REPO = Path(__file__).resolve().parents[1]


def trainer(**kw) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, **kw)


def test_import_needs_no_lightning():
    code = ("import sys, train.data; from train.data import ShardDataset; "
            "assert not [m for m in sys.modules if m.split('.')[0] in ('lightning', 'torchgeo')], 'imported'")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


class KeyRecorder(L.LightningModule):
    """The smallest module that trains: one weight, and the keys of every batch it saw per epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen: dict[int, list[str]] = {}

    def training_step(self, batch, batch_idx):
        self.seen.setdefault(self.current_epoch, []).extend(batch["key"])
        return (self.w * batch["image"].float().mean()).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_each_epoch_reads_the_split_once_in_a_new_order(sample_shards):
    dm = ShardDataModule(sample_shards, batch_size=4, num_workers=2, input="rgb", normalize=None)
    module = KeyRecorder()
    trainer(max_epochs=2, limit_val_batches=0).fit(module, datamodule=dm)
    n = load_manifest(str(sample_shards)).samples("train")
    assert sorted(module.seen[0]) == sorted(module.seen[1]) and len(set(module.seen[0])) == n
    assert module.seen[0] != module.seen[1]


def test_splits_and_options(sample_shards):
    dm = ShardDataModule(sample_shards, batch_size=3, input="s1s2", label_type="single_label", augment=True,
                         test_split="nope")
    dm.setup("fit")
    assert set(dm.datasets) == {"train", "val"} and dm.test_dataloader() == []
    assert dm.datasets["train"].spec.train and dm.datasets["train"].spec.augment
    assert not dm.datasets["val"].spec.train and not dm.datasets["val"].spec.augment
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].dtype == torch.float32 and batch["image"].shape[1] == 12
    assert batch["label"].dtype == torch.int64 and batch["label"].ndim == 1


def changed_after_one_step(task: L.LightningModule, dm: ShardDataModule) -> bool:
    before = [p.detach().clone() for p in task.parameters()]
    trainer(max_steps=1, limit_val_batches=0).fit(task, datamodule=dm)
    return any(not torch.equal(a, p.detach()) for a, p in zip(before, task.parameters()))


@pytest.mark.parametrize("label_type,task", [("single_label", "multiclass"), ("multi_label", "multilabel")])
def test_torchgeo_classification_task_trains_a_step(sample_shards, label_type, task):
    dm = ShardDataModule(sample_shards, batch_size=2, input="rgb", label_type=label_type, igbp="simple")
    kind = {"num_classes": 10} if task == "multiclass" else {"num_labels": 10, "loss": "bce"}
    model = ClassificationTask(model="resnet18", weights=None, in_channels=3, task=task, **kind)
    assert changed_after_one_step(model, dm)


@pytest.mark.slow
def test_torchgeo_segmentation_task_trains_a_step(sample_tree, tmp_path):
    out = tmp_path / "seg"
    run_shards(sample_tree, out, "--modalities", "s1,s2,lc", "--workers", "1", "--val-fraction", "0")
    dm = ShardDataModule(out, batch_size=2, input="rgb", task="segmentation")
    model = SemanticSegmentationTask(model="unet", backbone="resnet18", weights=None, in_channels=3,
                                     num_classes=10, ignore_index=255)
    assert changed_after_one_step(model, dm)
