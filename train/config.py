"""The options of a training run (a plain dataclass) and their arguments-file form."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping

from sen12ms_common import storage
from sen12ms_common.bands import INPUT_SETS, resolve_bands

from .argsfile import ORIGINAL_KEYS, options_to_original
from .data import resolve_workers

# Options whose change makes a resumed run read its data in another order.
DATA_ORDER_KEYS: tuple[str, ...] = ("seed", "batch_size", "streams", "shuffle_buffer", "augment")


@dataclass
class TrainConfig:
    shards: str = ""
    task: str = "classification"
    model: str = "ResNet50"
    input: str = "s2"
    label_type: str = "multi_label"
    igbp: str = "simple"
    threshold: float = 0.1
    epochs: int = 100
    batch_size: int = 64
    lr: float = 0.001
    decay: float = 1e-5
    optimizer: str = "adam"        # adam (the original's) | sgd | rmsprop (the DFC2020 baseline's)
    workers: int | str = "auto"    # worker processes, or auto (train.data.resolve_workers)
    threads: int = 0
    loader: str = "webdataset"
    device: str = "auto"
    amp: bool = False
    channels_last: bool = False
    compile: bool = False
    run_dir: str | None = None
    resume: str | None = None
    max_steps: int | None = None
    stats: str = "official"
    seed: int = 0
    shuffle_buffer: int = 1000
    streams: int = 8
    verify: bool = True
    skip_bad_shards: bool = False
    augment: bool = False
    no_savanna: bool = False       # segmentation: savanna ignored, 9 classes (the baseline's --no_savanna)
    output_stride: int = 16        # segmentation: DeepLabV3Plus output stride (8 or 16)
    val_split: str = "val"         # split validated every epoch (dfc2020_val: the DFC2020 validation set)
    test_split: str = "test"       # split the best checkpoint is scored on
    preset: str | None = None      # a published recipe's settings under the explicit flags (train.presets)
    init_from: str | None = None   # checkpoint a new run starts from (ours, the original's, the baseline's)
    init_partial: bool = False     # --init-from loads the tensors that fit, reports the others
    pretrained_backbone: str | None = None  # "imagenet" or a torchvision weights file (train.init_weights)
    val_every_steps: int = 0       # also validate (TensorBoard only) every N steps; 0: once per epoch
    tb_images: int = 4             # segmentation: validation patches shown in TensorBoard each validation

    def __post_init__(self) -> None:
        self.input = canonical_input(self.input)

    def resolved_run_dir(self) -> str:
        """--run-dir (a local path or an s3:// URL), else runs/<model>."""
        return str(self.run_dir) if self.run_dir else str(Path("runs") / self.model)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def canonical_input(spec: str) -> str:
    """A set name in lower case, or the band names joined by commas (no spaces: the original's
    reader splits arguments-file lines on whitespace)."""
    key = str(spec).strip().lower()
    if key in INPUT_SETS:
        return key
    return ",".join(b.name for b in resolve_bands(spec))


def arguments(cfg: TrainConfig, timestamp: str) -> dict[str, Any]:
    """The arguments file of a run: the original's keys in its order, then ours."""
    orig = options_to_original(cfg.to_dict())
    values = {
        "exp_name": storage.basename(cfg.resolved_run_dir()),
        "data_dir": cfg.shards,
        "label_split_dir": cfg.shards,  # labels and splits travel inside the shards
        "num_workers": resolve_workers(cfg.workers, cfg.streams),
        "resume": cfg.resume,
        **orig,
    }
    out: dict[str, Any] = {k: values[k] for k in ORIGINAL_KEYS}
    for k, v in cfg.to_dict().items():
        if k not in out and k not in ("shards", "workers"):
            out[k] = v
    out["timestamp"] = timestamp
    return out
