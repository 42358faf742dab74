"""What one bench run measures and where: `BenchConfig` (the options of `python -m bench`), the
`--quick` variant, and the ways of using the cores that every row is measured in."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from bench.cases.loaders import LoaderSettings
from bench.cases.training import TrainingSettings
from bench.inputs.dataset import DatasetParams
from bench.measure.timing import one_cpu
from sen12ms_common.cpus import usable_cpus
from sen12ms_common.format.codecs import CODECS  # every codec of the shard format

REPO = Path(__file__).resolve().parents[2]
OUTPUTS = ("uint16", "float", "uint16-noverify")
SEG_CODEC = "zstd"  # the segmentation rows read shards of this codec that hold lc


@dataclass
class BenchConfig:
    data: Path = REPO / "bench" / "data"
    scratch: Path = REPO / "bench" / "out"
    dataset: DatasetParams = field(default_factory=DatasetParams)
    repeats: int = 3
    codecs: tuple[str, ...] = CODECS
    shard_size: int = 8_000_000
    loader: LoaderSettings = field(default_factory=LoaderSettings)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    s3: bool = True
    dali: bool = True
    progress: bool = True
    quick: bool = False
    gpu_rate: float | None = None  # model-alone samples/s of a GPU to plan for, where none is measured
    peers: bool = True  # litdata, MosaicML streaming and TorchGeo rows (the `.[bench]` extra)
    only: tuple[str, ...] = ()  # measure only the loader rows whose keys start with one of these

    def wants(self, prefix: str) -> bool:
        """Whether `--only` leaves a row key starting with `prefix` (or within it) measured."""
        return not self.only or any(o.startswith(prefix) or prefix.startswith(o) for o in self.only)


def quick_config(cfg: BenchConfig) -> BenchConfig:
    """`--quick`: one round; the same dataset (reused)."""
    return replace(cfg, repeats=1, quick=True)


def cores_configs() -> list[tuple[str, int, Callable[[int], int | None]]]:
    """(label, workers, cpu of round r): one worker pinned to one CPU, and one per CPU unpinned."""
    n = usable_cpus()
    one = ("1", 1, one_cpu)
    return [one] if n == 1 else [one, (str(n), n, lambda r: None)]
