"""TorchGeo's ClassificationTask (multi-label) trained from ShardDataModule
(pip install '.[torchgeo]'): python examples/torchgeo_train.py SHARDS [STEPS] [BATCH]"""
import sys

import lightning as L
from torchgeo.trainers import ClassificationTask

from train.data import ShardDataModule

if __name__ == "__main__":
    shards = sys.argv[1]
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 500
    batch_size = int(sys.argv[3]) if len(sys.argv) > 3 else 16
    data = ShardDataModule(shards, input="s1s2", label_type="multi_label", igbp="simple",
                           batch_size=batch_size, num_workers=2)
    task = ClassificationTask(model="resnet18", weights=None, in_channels=12, task="multilabel",
                              num_labels=10, loss="bce")
    trainer = L.Trainer(max_steps=steps, accelerator="auto", logger=False, enable_checkpointing=False)
    trainer.fit(task, datamodule=data)
    print(f"{trainer.global_step} steps, metrics {({k: round(float(v), 4) for k, v in trainer.logged_metrics.items()})}")
