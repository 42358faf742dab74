"""The options of a training run (a plain dataclass made from `train.cli.schema`) and their
arguments-file form."""

from __future__ import annotations

import logging
from dataclasses import field, make_dataclass
from pathlib import Path
from typing import Any, Mapping

from sen12ms_common.storage import files as storage
from sen12ms_common.vocab.bands import BandRef  # noqa: F401  (the annotation of TrainConfig.bands)

from ..cli.schema import TRAIN, read_input
from ..data import canonical_loader, resolve_workers
from .argsfile import ORIGINAL_KEYS, options_to_original

# Options whose change makes a resumed run read its data in another order.
DATA_ORDER_KEYS: tuple[str, ...] = ("seed", "batch_size", "streams", "shuffle_buffer", "augment")

log = logging.getLogger(__name__)


class _Run:
    """What every TrainConfig can do; its fields come from `train.cli.schema.TRAIN`."""

    def __post_init__(self) -> None:
        read = read_input(self.input)  # a text, or the bands the command line's edge already read
        self.input, self.bands = read.text, read.bands
        self.loader = renamed_loader(self.loader)

    def resolved_run_dir(self) -> str:
        """--run-dir (a local path or an s3:// URL), else runs/<model>."""
        return str(self.run_dir) if self.run_dir else str(Path("runs") / self.model)

    def to_dict(self) -> dict[str, Any]:
        """The options (not the bands read from `input`): a checkpoint's stored configuration."""
        return {name: getattr(self, name) for name in OPTION_NAMES}

    def loader_options(self) -> dict[str, Any]:
        """The options that are LoaderSpec fields (`train.run.setup.loader_spec`)."""
        return {name: getattr(self, name) for name in LOADER_OPTIONS}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        return cls(**{k: v for k, v in d.items() if k in OPTION_NAMES})


OPTION_NAMES: tuple[str, ...] = tuple(name for name, o in TRAIN.items() if o.in_config)
LOADER_OPTIONS: tuple[str, ...] = tuple(name for name, o in TRAIN.items() if o.in_config and o.loader)

# The options of a run, one field per declaration in train.cli.schema (in its order), plus `bands`:
# what `input` names, read once (an arguments file and a checkpoint keep the text).
TrainConfig = make_dataclass(
    "TrainConfig",
    [(o.name, o.field_type or type(o.default).__name__, field(default=o.default))
     for o in TRAIN.values() if o.in_config]
    + [("bands", "tuple[BandRef, ...]", field(init=False, default=(), repr=False, compare=False))],
    bases=(_Run,), namespace={"__doc__": "The options of a training run (train.cli.schema.TRAIN)."})
TrainConfig.__module__ = __name__  # pickles and reprs as train.config.trainconfig.TrainConfig


def renamed_loader(name: str) -> str:
    """`webdataset` -> `shards` (the loader's old name, from an old command line or arguments
    file), said once per run configuration."""
    now = canonical_loader(name)
    if now != name:
        log.warning("--loader %s is now called --loader %s (same loader; the old name still works)", name, now)
    return now


def canonical_input(spec: str) -> str:
    """A set name in lower case, or the band names joined by commas (no spaces: the original's
    reader splits arguments-file lines on whitespace)."""
    return read_input(spec).text


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
