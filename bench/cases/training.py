"""The training rows: seconds per optimisation step of a model on the device that is there."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch

from bench.cases.loaders import LoaderSettings, webdataset_spec
from bench.originals.geotiff import GeoTiffDataset, original_loader
from sen12ms_common.vocab.bands import resolve_bands
from train.data import make_loader
from train.run.setup import make_setup


@dataclass(frozen=True)
class TrainingSettings:
    model: str = "ResNet50"
    batch_size: int = 4
    warmup: int = 1
    steps: int = 2
    workers: int = 1
    device: str = "auto"


class StepBench:
    """Model, optimiser and the step function, built once for all repeats."""

    def __init__(self, shard_root: str, loader_settings: LoaderSettings, settings: TrainingSettings) -> None:
        self.settings = settings
        self.loader_settings = dataclasses.replace(loader_settings, batch_size=settings.batch_size)
        self.shard_root = shard_root
        self.setup = make_setup(shards=shard_root, model_name=settings.model, input_spec=loader_settings.input_spec,
                                label_type=loader_settings.label_type, igbp="simple", threshold=0.1,
                                stats="official", device=settings.device)
        self.optimizer = torch.optim.Adam(self.setup.model.parameters(), lr=1e-3, weight_decay=1e-5)
        self.device = self.setup.device
        self._held: dict[str, Any] | None = None

    def step(self, image: torch.Tensor, target: torch.Tensor) -> None:
        s = self.setup
        x = s.input_fn(image)
        y = target.to(s.device, non_blocking=True)
        self.optimizer.zero_grad(set_to_none=True)
        with s.precision.autocast():
            logits = s.forward(x)
        loss = s.loss_fn(logits.float(), y)
        loss.backward()
        self.optimizer.step()
        if s.device.type == "cuda":
            torch.cuda.synchronize(s.device)

    def _loader(self, seed: int):
        spec = webdataset_spec(self.shard_root, self.loader_settings, self.settings.workers, seed)
        return make_loader("webdataset", spec)

    def held_batch(self) -> dict[str, Any]:
        """The synthetic batch: a real one, read once and kept in memory."""
        if self._held is None:
            loader = self._loader(0)
            it = loader.epoch(0)
            try:
                batch = next(iter(it))
            finally:
                it.close()
            self._held = {"image": batch["image"].clone(), "target": batch["target"].clone()}
        return self._held

    def _skip(self, wanted: int, batches: int) -> int:
        """Start-up batches to draw untrained: `wanted`, as far as the epoch leaves enough for the
        warm-up and timed steps (tiny bench datasets)."""
        s = self.settings
        if batches < s.warmup + s.steps:
            raise ValueError(f"an epoch of {batches} batches is shorter than {s.warmup} + {s.steps} steps")
        return max(0, min(wanted, batches - s.warmup - s.steps))

    def _timed(self, batches: Iterator[tuple[torch.Tensor, torch.Tensor]], skip: int = 0) -> float:
        """Seconds per step over `steps` steps after `skip` batches drawn untrained and `warmup`
        untimed steps; the wait for a batch counts."""
        s = self.settings
        for _ in range(skip):
            next(batches)
        t0 = 0.0
        for i in range(s.warmup + s.steps):
            if i == s.warmup:
                t0 = time.perf_counter()
            image, target = next(batches)
            self.step(image, target)
        return (time.perf_counter() - t0) / s.steps

    def synthetic(self) -> float:
        held = self.held_batch()

        def forever() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            while True:
                yield held["image"], held["target"]

        return self._timed(forever())

    def fed_by_ours(self, seed: int) -> float:
        loader = self._loader(seed)
        it = loader.epoch(seed)
        try:
            return self._timed(((b["image"], b["target"]) for b in it),
                               skip=self._skip(loader.spec.streams + 2, len(loader)))
        finally:
            it.close()

    def fed_by_original(self, tree: str, names: list[str], labels: dict, seed: int) -> float:
        ls = self.loader_settings
        ds = GeoTiffDataset(tree, names, labels, input_spec=ls.input_spec, label_type=ls.label_type)
        loader = original_loader(ds, batch_size=self.settings.batch_size, workers=self.settings.workers,
                                 shuffle=True, seed=seed)
        it = iter(loader)
        rule = self.setup.rule
        to_target: Callable[[torch.Tensor], torch.Tensor] = (
            (lambda lab: lab) if rule.label_type == "multi_label" else (lambda lab: lab.argmax(dim=1)))
        try:
            return self._timed(((b["image"], to_target(b["label"])) for b in it), skip=self._skip(2, len(loader)))
        finally:
            shutdown = getattr(it, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()


def cuda_model_rate(model: str, input_spec: str, batch_size: int = 128, steps: int = 20) -> tuple[float | None, str]:
    """Training samples/s of `model` alone on the CUDA device (bfloat16 / float16 autocast,
    channels_last, a batch held on the device): what one GPU consumes. (None, why) without one."""
    if not torch.cuda.is_available():
        return None, "no CUDA device"
    from train.models.registry import build_model  # start-up time: torchvision only when used

    dev = torch.device("cuda")
    net = build_model(model, len(resolve_bands(input_spec)), 10).to(dev).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    x = torch.randn(batch_size, len(resolve_bands(input_spec)), 256, 256, device=dev).to(
        memory_format=torch.channels_last)
    y = torch.randint(0, 2, (batch_size, 10), device=dev).float()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=dtype):
            loss = loss_fn(net(x).float(), y)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return batch_size * steps / (time.perf_counter() - t0), torch.cuda.get_device_name(dev)
