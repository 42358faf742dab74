"""The measuring parts of `make gpu-check` (bench.gpu.check): the DALI pipeline's batches against
the webdataset loader's, and a short training run fed by one loader with its data-stall share.
Device-agnostic, so that the tests run them on the CPU (DALI's CPU pipeline, a small model)."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SPLIT_COMPARED = "test"  # not shuffled: both loaders hand out the same batches in the same order
SPLIT_TRAINED = "train"


@dataclass(frozen=True)
class Comparison:
    codec: str
    batches: int
    samples: int
    max_abs_diff: float  # largest |DALI - webdataset| over every normalised input value
    equal: bool          # same keys, targets and probabilities; inputs within float32 rounding


@dataclass(frozen=True)
class TrainRate:
    codec: str
    loader: str
    steps: int             # timed steps (after the warm-up)
    samples_per_s: float
    stall_share: float     # time spent waiting for the next batch / wall time of the timed steps
    precision: str         # autocast dtype ("bfloat16", "float16", "float32")
    channels_last: bool


def loader_spec(root: Path, split: str, *, batch_size: int, device: str, train: bool, workers: int = 0,
                input_spec: str = "s1s2"):
    """A LoaderSpec of the sample shards: s1s2 input, single labels (simple scheme), manifest stats."""
    from sen12ms_common.vocab.bands import resolve_bands  # start-up time: only on this path
    from sen12ms_common.vocab.igbp import LabelRule  # start-up time: only on this path
    from sen12ms_common.vocab.inputs import channel_transform  # start-up time: only on this path
    from sen12ms_common.format.manifest import load_manifest  # start-up time: only on this path
    from train.data import LoaderSpec  # start-up time: imports torch

    manifest = load_manifest(str(root))
    bands = resolve_bands(input_spec)
    return LoaderSpec(str(root), manifest, split, bands, LabelRule("single_label", "simple"), batch_size,
                      channel_transform(bands, "manifest", manifest.stats), train=train, workers=workers,
                      device=device, verify=False)


def make(loader: str, spec, device_id: int | None, threads: int):
    """(loader, uint16 batch -> model input) of a spec: `dali` normalises in its pipeline."""
    import torch  # start-up time: torch only when used

    from train.data import make_loader  # start-up time: imports torch
    from train.run.device import InputTransform  # start-up time: imports torch

    if loader == "dali":
        from train.data.dali import DaliLoader  # optional extra: DALI

        return DaliLoader(spec, device_id=device_id, num_threads=max(1, threads)), None
    return make_loader(loader, spec), InputTransform(spec.transform, torch.device(spec.device))


def compare(root: Path, codec: str, *, device: str = "cpu", device_id: int | None = None,
            batch_size: int = 16, threads: int = 2) -> Comparison:
    """Every batch of the compared split from the DALI pipeline (on `device_id`, None: its CPU
    pipeline) against the webdataset loader's, normalised on `device` as the training loop does."""
    import torch  # start-up time: torch only when used

    spec = loader_spec(root, SPLIT_COMPARED, batch_size=batch_size, device=device, train=False)
    # The DALI reader reads a rank's part as one stream: so does the reference.
    wds, to_input = make("webdataset", dataclasses.replace(spec, streams=1), None, threads)
    dali, _ = make("dali", spec, device_id, threads)
    equal, worst, batches, samples = len(dali) == len(wds), 0.0, 0, 0
    try:
        for got, want in zip(dali.epoch(0), wds.epoch(0), strict=True):
            x = to_input(want["image"])
            y = got["image"].to(x.device)
            equal &= list(got["key"]) == list(want["key"]) and y.shape == x.shape
            equal &= torch.equal(got["target"].cpu(), want["target"].cpu())
            equal &= torch.equal(got["prob"].cpu(), want["prob"].cpu())
            if y.shape == x.shape:
                worst = max(worst, float((y - x).abs().max()))
                equal &= bool(torch.allclose(y, x, rtol=1e-6, atol=1e-5))
            batches += 1
            samples += len(got["key"])
    except ValueError:  # zip(strict=True): one loader gave more batches than the other
        equal = False
    finally:
        dali.close()
        close = getattr(wds, "close", None)
        if close is not None:
            close()
    return Comparison(codec, batches, samples, worst, bool(equal))


def _batches(loader) -> Any:
    """The loader's batches, epoch after epoch."""
    epoch = 0
    while True:
        yield from loader.epoch(epoch)
        epoch += 1


def train_rate(root: Path, codec: str, loader: str, *, device: str = "cpu", device_id: int | None = None,
               model: str = "ResNet50", steps: int = 300, warmup: int = 20, batch_size: int = 32, amp: bool = True,
               channels_last: bool = True, workers: int = 4) -> TrainRate:
    """`warmup` + `steps` optimizer steps of `model` on the training split fed by `loader`; the
    timed steps' samples/s and the share of their wall time spent waiting for a batch. Each step
    ends with the loss read back (as the trainer does), so that a wait is a wait for data."""
    import torch  # start-up time: torch only when used
    import torch.nn.functional as F  # start-up time: torch only when used

    from train.run.device import precision  # start-up time: imports torch
    from train.models.registry import build_model  # start-up time: imports torch

    dev = torch.device(device)
    spec = loader_spec(root, SPLIT_TRAINED, batch_size=batch_size, device=device, train=True,
                       workers=0 if loader == "dali" else workers)
    ld, to_input = make(loader, spec, device_id, workers)
    net = build_model(model, len(spec.bands), spec.rule.num_classes).to(dev)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    prec = precision(dev, amp)
    wait = wall = 0.0
    seen = 0
    it = _batches(ld)
    try:
        for step in range(warmup + steps):
            if step == warmup:
                wait = wall = 0.0
                seen = 0
            t0 = time.perf_counter()
            batch = next(it)
            t1 = time.perf_counter()
            x = batch["image"] if to_input is None else to_input(batch["image"])
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y = batch["target"].to(dev, non_blocking=True)
            opt.zero_grad(set_to_none=True)
            with prec.autocast():
                logits = net(x)
            loss = F.cross_entropy(logits.float(), y)
            prec.scaler.scale(loss).backward()
            prec.scaler.step(opt)
            prec.scaler.update()
            float(loss.detach())  # the step is done when its loss is known
            wait += t1 - t0
            wall += time.perf_counter() - t0
            seen += len(batch["key"])
    finally:
        it.close()
        ld.close()
    return TrainRate(codec, loader, steps, seen / wall, wait / wall, prec.name, channels_last)


__all__ = ["Comparison", "TrainRate", "compare", "train_rate", "loader_spec", "SPLIT_COMPARED", "SPLIT_TRAINED"]
