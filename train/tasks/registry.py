"""The learning task of a run: what differs between classification and segmentation.

The run (`train.run.loop`) and the scoring loop (`train.run.scoring`) call only what `Task` declares; a
new task is a class with these members, registered in `TASKS` by a factory.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Protocol, Sequence

from sen12ms_common.vocab.igbp import LabelRule

if TYPE_CHECKING:  # annotations only: the task names are read by --help, which must not load torch
    import torch
    from torch import nn



class Collector(Protocol):
    """Gathers one rank's model outputs over an evaluation pass."""

    def add(self, batch: Mapping[str, Any], logits: torch.Tensor) -> None: ...

    def part(self) -> Any:
        """What this rank collected, picklable (gathered from every rank for `Task.merge`)."""


class Result(Protocol):
    loss: float    # mean loss per sample over the split
    samples: int


class Task(Protocol):
    name: str
    targets: str         # what its batches hold: labels (target, prob) or mask (LoaderSpec.targets)
    best_metric: str     # validation metric that picks the best checkpoint (higher is better)
    num_classes: int
    class_names: Sequence[str]
    loss_fn: nn.Module

    def build_model(self, model_name: str, in_channels: int) -> nn.Module: ...

    def target(self, batch: Mapping[str, Any], device: torch.device) -> torch.Tensor:
        """The loss's target for a batch, on the device."""

    def collector(self) -> Collector: ...

    def merge(self, parts: Sequence[Any], loss: float) -> Result:
        """The whole split's result from every rank's `Collector.part()`, in rank order."""

    def score(self, result: Result) -> dict[str, Any]:
        """Every metric (JSON values), as test_scores.json holds them."""

    def scalars(self, metrics: Mapping[str, Any]) -> dict[str, float]:
        """The single-number metrics (TensorBoard, metrics.csv)."""

    @property
    def summary_metrics(self) -> tuple[str, ...]:
        """Columns of the summary table; the training curves show the first ones."""

    def notes(self, metrics: Mapping[str, Any], split: str) -> list[str]:
        """Lines printed under the summary table (what a reader of the scores must know)."""

    def val_summary(self, metrics: Mapping[str, Any]) -> str: ...

    def test_summary(self, metrics: Mapping[str, Any]) -> str: ...

    def write(self, out_dir: str, split: str, metrics: Mapping[str, Any], result: Result) -> list[str]:
        """Write `<split>_scores.json` and the task's other files (a confusion-matrix PNG, say);
        the paths written."""


def _classification(rule: LabelRule, **options: Any) -> Task:
    from .classification import ClassificationTask  # start-up time: --help reads the names, not torch

    return ClassificationTask(rule, **options)


def _segmentation(rule: LabelRule, **options: Any) -> Task:
    from .segmentation import SegmentationTask  # start-up time: --help reads the names, not torch

    return SegmentationTask(rule, **options)


# name -> factory; the default first.
TASKS: dict[str, Any] = {"classification": _classification, "segmentation": _segmentation}


def task_names() -> list[str]:
    return list(TASKS)


def task_options(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of task `name` among a run's options (a TrainConfig's dict)."""
    if name == "segmentation":
        return {"savanna": not bool(options.get("no_savanna", False)),
                "output_stride": int(options.get("output_stride", 16))}
    return {}


def make_task(name: str, rule: LabelRule, **options: Any) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of: {', '.join(TASKS)}")
    return TASKS[name](rule, **options)


__all__ = ["TASKS", "Task", "Collector", "Result", "task_names", "task_options", "make_task"]
