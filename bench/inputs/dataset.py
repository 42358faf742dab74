"""The bench dataset: a SEN12MS tree with the real reference patches in it, its labels and splits,
and its shard sets (one per codec), generated once and reused while their parameters hold."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from convert.datafiles.labels import derive_labels, write_label_files
from convert.sample.sen12ms import SceneSpec, patch_arrays, scene_landcover, synthesize
from convert.shards.conversion import ShardsOptions, convert_shards
from convert.shards.scan import scan_tree
from sen12ms_common.errors import UnavailableError
from sen12ms_common.format.manifest import MANIFEST_NAME, load_manifest
from sen12ms_common.format.sample import DEFAULT_LEVEL, SampleLayout
from sen12ms_common.vocab.patches import parse_patch

REPO = Path(__file__).resolve().parents[2]
DATASET_VERSION = 1
STAMP = "dataset.json"
SHARD_STAMP = "bench-shards.json"

# The real patches of ../shared/reference/real/ under their SEN12MS names, per S2 key; the other
# members of these triplets are generated (the reference folder holds no complete triplet).
REAL_TRIPLETS: dict[str, dict[str, str]] = {
    "ROIs1158_spring_s2_101_p30": {"s2": "sen12mscr_ROIs1158_spring_s2_101_p30.tif",
                                   "s1": "sen12mscr_ROIs1158_spring_s1_101_p30.tif"},
    "ROIs1158_spring_s2_101_p31": {"s2": "sen12mscr_ROIs1158_spring_s2_101_p31.tif"},
    "ROIs1158_spring_s2_15_p30": {"s2": "sen12mscr_ROIs1158_spring_s2_15_p30.tif"},
    "ROIs1158_spring_s2_1_p30": {"s1": "ROIs1158_spring_s1_1_p30.tif", "lc": "ROIs1158_spring_lc_1_p30.tif"},
    "ROIs1868_summer_s2_19_p30": {"s1": "sen12mscr_ROIs1868_summer_s1_19_p30.tif"},
}


def reference_root() -> Path:
    """../shared/reference beside the clone, or $SEN12MS_REFERENCE (as the tests find it)."""
    env = os.environ.get("SEN12MS_REFERENCE")
    return Path(env) if env else REPO.parent / "shared" / "reference"


@dataclass(frozen=True)
class DatasetParams:
    scenes: int = 42
    patches_per_scene: int = 24
    seed: int = 2024
    subset: int = 256  # triplets of the conversion timing and the S3 rows
    version: int = DATASET_VERSION


@dataclass
class BenchDataset:
    root: Path               # the data folder
    params: DatasetParams
    keys: list[str]          # S2 keys of every triplet (sorted)
    subset_keys: list[str]   # the subset (sorted)
    real: dict[str, list[str]]  # modality -> keys whose member is real

    @property
    def tree(self) -> Path:
        return self.root / "sen12ms"

    @property
    def labels(self) -> Path:
        return self.root / "labels" / "IGBP_probability_labels.json"

    @property
    def splits(self) -> Path:
        return self.root / "splits"

    @property
    def subset_splits(self) -> Path:
        return self.root / "splits-subset"

    def shards(self, codec: str, lc: bool = False) -> Path:
        return self.root / "shards" / (f"{codec}-lc" if lc else codec)

    def files(self, keys: list[str], modalities: tuple[str, ...] = ("s2", "s1")) -> list[Path]:
        return [self.tree / parse_patch(k).relpath(m) for k in keys for m in modalities]


def _write_like(src: Path, dst: Path, data: np.ndarray) -> None:
    """A generated member with the georeference of a real one, in the SEN12MS file layout."""
    import rasterio  # start-up time: rasterio only when used

    with rasterio.open(src) as ds:
        crs, transform = ds.crs, ds.transform
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp")
    with rasterio.open(tmp, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                       dtype=data.dtype.name, crs=crs, transform=transform, interleave="pixel", tiled=False,
                       compress="none") as ds:
        ds.write(data)
    os.replace(tmp, dst)


def add_real_patches(tree: Path, real_dir: Path, seed: int) -> dict[str, list[str]]:
    """Put the real patches into the tree under their SEN12MS names; members without a real file
    get generated content (the sample generator's class spectra), written with the real member's
    georeference. Returns modality -> keys with a real member."""
    missing = [f for files in REAL_TRIPLETS.values() for f in files.values() if not (real_dir / f).is_file()]
    if missing:
        raise UnavailableError(f"{real_dir}: the real reference patches are missing ({', '.join(missing)}); "
                               "set SEN12MS_REFERENCE to the folder that holds real/")
    real: dict[str, list[str]] = {"s2": [], "s1": [], "lc": []}
    for key, files in REAL_TRIPLETS.items():
        pid = parse_patch(key)
        spec = SceneSpec(pid.season, pid.scene, (pid.patch,), 32633, (500000.0, 5000000.0), False)
        arrays = patch_arrays(spec, pid.patch, scene_landcover(spec, seed), seed)
        like = real_dir / next(iter(files.values()))
        for m in ("s2", "s1", "lc"):
            dst = tree / pid.relpath(m)
            dst.parent.mkdir(parents=True, exist_ok=True)
            if m in files:
                shutil.copyfile(real_dir / files[m], dst)
                real[m].append(key)
            else:
                _write_like(like, dst, arrays[m])
    return {m: sorted(v) for m, v in real.items()}


def _write_lists(folder: Path, train: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train_list.txt").write_text("".join(f"{parse_patch(k).filename()}\n" for k in train))
    (folder / "val_list.txt").write_text("")
    (folder / "test_list.txt").write_text("")


def _subset(keys: list[str], n: int, seed: int) -> list[str]:
    """n keys drawn evenly from the scenes (the real triplets always among them)."""
    rng = np.random.default_rng([seed, 77])
    real = [k for k in keys if k in REAL_TRIPLETS]
    rest = [k for k in keys if k not in REAL_TRIPLETS]
    take = max(0, min(n, len(keys)) - len(real))
    chosen = [rest[i] for i in sorted(rng.choice(len(rest), size=min(take, len(rest)), replace=False))]
    return sorted(real + chosen)


def prepare(root: Path, params: DatasetParams, echo: Callable[[str], None] = print,
            progress: bool = True) -> BenchDataset:
    """Make (or reuse) the tree, labels and split lists under `root`."""
    root = Path(root)
    stamp_path = root / STAMP
    wanted = asdict(params)
    if stamp_path.is_file():
        stamp = json.loads(stamp_path.read_text())
        if stamp.get("params") == wanted and (root / "sen12ms").is_dir():
            ds = BenchDataset(root, params, stamp["keys"], stamp["subset_keys"], stamp["real"])
            if ds.labels.is_file():
                echo(f"bench dataset: reusing {len(ds.keys)} triplets in {ds.tree}")
                return ds
    if root.exists():
        for name in ("sen12ms", "labels", "splits", "splits-subset", "shards", STAMP):
            p = root / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    tree = root / "sen12ms"
    n = params.scenes * params.patches_per_scene
    echo(f"bench dataset: generating about {n} triplets in {tree} (once; reused by later runs)")
    synthesize(tree, scenes=params.scenes, patches_per_scene=params.patches_per_scene, seed=params.seed,
               broken=False, progress=progress)
    real = add_real_patches(tree, reference_root() / "real", params.seed)
    scan = scan_tree(str(tree))
    if scan.problems:
        raise UnavailableError(f"{tree}: the generated tree has problems: {scan.problems[0]}")
    keys = sorted(t.key for t in scan.triplets)
    labels, problems = derive_labels(scan.triplets, workers=1, progress=progress)
    if problems:
        raise UnavailableError(f"{tree}: labels: {problems[0]}")
    write_label_files(labels, root / "labels")
    subset_keys = _subset(keys, params.subset, params.seed)
    _write_lists(root / "splits", keys)
    _write_lists(root / "splits-subset", subset_keys)
    stamp_path.write_text(json.dumps({"params": wanted, "keys": keys, "subset_keys": subset_keys, "real": real},
                                     indent=1) + "\n")
    return BenchDataset(root, params, keys, subset_keys, real)


def shard_options(ds: BenchDataset, out: Path, codec: str, workers: int, *, subset: bool, shard_size: int,
                  progress: bool = False, lc: bool = False):
    modalities = ("s2", "s1", "lc") if lc else ("s2", "s1")
    layout = SampleLayout(codec=codec, level=DEFAULT_LEVEL[codec], modalities=modalities)
    splits = ds.subset_splits if subset else ds.splits
    # The subset's split lists leave the rest of the tree out on purpose: those are rejected.
    return ShardsOptions(str(ds.tree), str(out), labels=str(ds.labels), splits=str(splits), layout=layout,
                         shard_size=shard_size, workers=workers, seed=0, progress=progress, max_rejected=1.0)


def ensure_shards(ds: BenchDataset, codec: str, shard_size: int, workers: int, echo: Callable[[str], None] = print,
                  progress: bool = True, lc: bool = False) -> Path:
    """The shard set of the whole dataset for one codec (converted once, reused while it matches);
    `lc`: with the lc member (segmentation)."""
    out = ds.shards(codec, lc)
    stamp = {"dataset": asdict(ds.params), "codec": codec, "shard_size": shard_size, "samples": len(ds.keys),
             **({"lc": True} if lc else {})}
    stamp_path = out / SHARD_STAMP
    if (out / MANIFEST_NAME).is_file() and stamp_path.is_file() and json.loads(stamp_path.read_text()) == stamp:
        return out
    if out.exists():
        shutil.rmtree(out)
    echo(f"bench dataset: converting {len(ds.keys)} triplets to {codec} shards in {out}")
    convert_shards(shard_options(ds, out, codec, workers, subset=False, shard_size=shard_size, progress=progress,
                                 lc=lc))
    manifest = load_manifest(str(out))
    if manifest.samples("train") != len(ds.keys):
        raise UnavailableError(f"{out}: {manifest.samples('train')} samples converted, expected {len(ds.keys)} "
                               f"(see {out / 'report.json'})")
    stamp_path.write_text(json.dumps(stamp) + "\n")
    return out


def preread(paths: list[Path] | list[str], chunk: int = 1 << 22) -> int:
    """Read files once so that the page cache, not the disk, is measured next; returns bytes read."""
    total = 0
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while True:
                b = f.read(chunk)
                if not b:
                    break
                total += len(b)
    return total


def shard_files(root: Path) -> list[Path]:
    manifest = load_manifest(str(root))
    return [root / e.name for entries in manifest.splits.values() for e in entries]


def geotiff_bytes(ds: BenchDataset, keys: list[str], modalities: tuple[str, ...]) -> int:
    return sum((ds.tree / parse_patch(k).relpath(m)).stat().st_size for k in keys for m in modalities)


def real_patch_bytes(real_dir: Path, codecs: tuple[str, ...]) -> dict[str, float]:
    """Bytes of the real S2 and S1 patches: GeoTIFF, and encoded per codec (mean per patch)."""
    import rasterio  # start-up time: rasterio only when used

    from sen12ms_common.format.sample import DEFAULT_LEVEL, SampleLayout, encode_array, quantize_s1  # start-up time: only on this path

    files: dict[str, list[Path]] = {"s2": [], "s1": []}
    for triplet in REAL_TRIPLETS.values():
        for m in ("s2", "s1"):
            if m in triplet:
                files[m].append(real_dir / triplet[m])
    out: dict[str, float] = {}
    arrays: dict[str, list] = {"s2": [], "s1": []}
    for m, paths in files.items():
        out[f"bytes/real/geotiff/{m}"] = sum(p.stat().st_size for p in paths) / len(paths)
        for p in paths:
            with rasterio.open(p) as src:
                a = src.read()
            arrays[m].append(quantize_s1(a) if m == "s1" else a)
    for codec in codecs:
        layout = SampleLayout(codec=codec, level=DEFAULT_LEVEL[codec], modalities=("s2", "s1"))
        for m in ("s2", "s1"):
            sizes = [sum(len(v) for v in encode_array(a, m, layout).values()) for a in arrays[m]]
            out[f"bytes/real/{codec}/{m}"] = sum(sizes) / len(sizes)
    out["bytes/real/count/s2"] = float(len(files["s2"]))
    out["bytes/real/count/s1"] = float(len(files["s1"]))
    return out
