"""A plain PyTorch loop over SEN12MS shards: python examples/pytorch_loop.py SHARDS [STEPS] [BATCH]"""
import sys

import torch
from torch.utils.data import DataLoader

from train.data import ShardDataset

shards = sys.argv[1]
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 200
batch_size = int(sys.argv[3]) if len(sys.argv) > 3 else 16
ds = ShardDataset(shards, split="train", input="s2", label_type="multi_label", batch_size=batch_size,
                  augment=True)
model = torch.nn.Sequential(torch.nn.Conv2d(10, 32, 5, stride=4), torch.nn.ReLU(),
                            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(32, 10))
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
loss_fn = torch.nn.BCEWithLogitsLoss()
step, epoch = 0, 0
while step < steps:
    ds.set_epoch(epoch)  # a new shuffle and augmentation each epoch
    for batch in DataLoader(ds, batch_size=None, num_workers=2):  # it batches itself
        loss = loss_fn(model(batch["image"]), batch["label"].float())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step += 1
        if step == steps:
            break
    epoch += 1
print(f"{step} steps, {epoch} epoch(s), last loss {loss.item():.4f}")
