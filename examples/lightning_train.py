"""A Lightning module trained from ShardDataModule (pip install '.[lightning]'):
python examples/lightning_train.py SHARDS [STEPS] [BATCH]"""
import sys

import lightning as L
import torch

from train.data import ShardDataModule


class SmallClassifier(L.LightningModule):
    def __init__(self, channels: int, classes: int) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Conv2d(channels, 32, 5, stride=4), torch.nn.ReLU(),
                                       torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(32, classes))
        self.loss = torch.nn.CrossEntropyLoss()

    def training_step(self, batch, batch_idx):
        loss = self.loss(self.net(batch["image"]), batch["label"])
        self.log("train_loss", loss, batch_size=len(batch["key"]))
        return loss

    def validation_step(self, batch, batch_idx):
        accuracy = (self.net(batch["image"]).argmax(1) == batch["label"]).float().mean()
        self.log("val_accuracy", accuracy, batch_size=len(batch["key"]))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


if __name__ == "__main__":
    shards = sys.argv[1]
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 500
    batch_size = int(sys.argv[3]) if len(sys.argv) > 3 else 16
    data = ShardDataModule(shards, input="s1s2", label_type="single_label", igbp="simple",
                           batch_size=batch_size, num_workers=2, augment=True)
    trainer = L.Trainer(max_steps=steps, accelerator="auto", logger=False, enable_checkpointing=False)
    trainer.fit(SmallClassifier(channels=12, classes=10), datamodule=data)
    print(f"{trainer.global_step} steps, metrics {({k: round(float(v), 4) for k, v in trainer.logged_metrics.items()})}")
