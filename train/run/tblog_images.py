"""TensorBoard pictures of a segmentation run: the same few validation patches at every
validation, as input (S2 RGB, else the first channel), prediction and ground truth in the
DFC2020 baseline's colours, so that a user sees the maps change as the model learns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sen12ms_common.vocab.dfc import train_to_dfc

from ..data import Loader
from ..tasks.segfiles import colourise, s2_rgb
from .setup import Setup

RGB_BANDS = ("B4", "B3", "B2")  # red, green, blue
TAGS = ("images/input", "images/prediction", "images/ground_truth")


@dataclass
class ValImages:
    """The first `n` patches of a validation split, kept as stored values with their masks."""

    image: torch.Tensor   # uint16 (N, C, H, W), stored values
    mask: torch.Tensor    # uint8 (N, H, W) training classes, 255 ignored
    keys: list[str]

    @classmethod
    def take(cls, loader: Loader, n: int) -> "ValImages | None":
        """The first `n` samples of `loader`'s pass (copied: loaders reuse their batch buffers)."""
        images, masks, keys = [], [], []
        it = loader.epoch(0)
        try:
            for batch in it:
                if batch.get("mask") is None:
                    return None
                k = n - len(keys)
                images.append(batch["image"][:k].clone())
                masks.append(batch["mask"][:k].clone())
                keys.extend(batch["key"][:k])
                if len(keys) >= n:
                    break
        finally:
            it.close()  # its workers end here
        if not keys:
            return None
        return cls(torch.cat(images), torch.cat(masks), keys)

    def pictures(self, setup: Setup) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(input, prediction, ground truth) as uint8 (N, H, W, 3) arrays."""
        savanna = setup.task.scheme.savanna  # type: ignore[attr-defined]
        was_training = setup.forward.training
        setup.forward.eval()
        with torch.no_grad(), setup.precision.autocast():
            logits = setup.forward(setup.input_fn(self.image, None))
        setup.forward.train(was_training)
        pred = logits.float().argmax(dim=1).to(torch.uint8).cpu().numpy()
        truth = self.mask.numpy()
        shown = np.stack([_input_rgb(img, setup.bands) for img in self.image.numpy()])
        return (shown, np.stack([colourise(train_to_dfc(p, savanna)) for p in pred]),
                np.stack([colourise(train_to_dfc(t, savanna)) for t in truth]))

    def write(self, writer: Any, setup: Setup, step: int) -> None:
        for tag, pictures in zip(TAGS, self.pictures(setup)):
            writer.add_images(tag, pictures, step, dataformats="NHWC")


def step_validation(run: Any, step: int) -> None:
    """A `TrainingRun`'s validation inside an epoch (--val-every-steps; collective): scalars under
    `val_steps` and the images at `step`; the best checkpoint is still chosen by the epoch's own."""
    from .distributed import broadcast_state  # start-up time: imports torch
    from .scoring import predict_all  # start-up time: imports torch

    s = run.setup
    broadcast_state(run.dist, s.model, buffers_only=True)  # rank 0's BatchNorm statistics, as validate()
    result = predict_all(s, run.val_loader, run.dist, desc=f"validation at step {step}", labels=run.checks["val"],
                         progress=run.progress)
    metrics = s.task.score(result)
    s.step_forward.train()
    if run.files.events is not None:
        w = run.files.events.writer("val_steps")
        for tag, value in {**s.task.scalars(metrics), "loss": result.loss}.items():
            w.add_scalar(tag, value, step)
        run.write_images(step)
    run.log(f"step {step}: val loss {result.loss:.6f} {s.task.val_summary(metrics)}")


def _input_rgb(image: np.ndarray, bands) -> np.ndarray:
    """One patch's input as RGB: B4, B3, B2 when the model reads them, else its first channel grey,
    each stretched to the patch's 98th percentile."""
    names = [b.name for b in bands]
    if all(n in names for n in RGB_BANDS):
        return s2_rgb(*(image[names.index(n)] for n in RGB_BANDS))
    grey = image[0].astype(np.float32)
    top = max(float(np.percentile(grey, 98)), 1.0)
    return np.repeat((np.clip(grey / top, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=-1)


__all__ = ["ValImages", "TAGS", "step_validation"]
