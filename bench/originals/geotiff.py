"""The original toolbox's data path, re-implemented: one sample = open its GeoTIFFs with rasterio."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from sen12ms_common.datafiles.read import load_labels, read_split_list
from sen12ms_common.errors import InputError
from sen12ms_common.format.sample import S1_MAX_DB, S1_MIN_DB
from sen12ms_common.storage import files as storage
from sen12ms_common.vocab.bands import OFFICIAL_MEAN, OFFICIAL_STD, BandRef, resolve_bands
from sen12ms_common.vocab.igbp import LabelRule
from sen12ms_common.vocab.patches import KNOWN_BROKEN, parse_patch

S2_MAX = 10000.0


# --- one sample, the original's way ----------------------------------------------------------------

def _open_raster(url: str):
    import rasterio  # start-up time: rasterio only when used

    if storage.is_remote(url):
        # One GET per object; GDAL then reads the pixels from memory.
        return rasterio.MemoryFile(storage.read_bytes(url)).open()
    return rasterio.open(url)


def read_s2(url: str, band_indexes: Sequence[int], normalise: bool) -> np.ndarray:
    """S2 bands (1-based file indices) as float32; without normalisation clip(0, 10000) / 10000."""
    with _open_raster(url) as ds:
        s2 = ds.read(list(band_indexes))
    s2 = s2.astype(np.float32)
    if not normalise:
        s2 = np.clip(s2, 0, S2_MAX)
        s2 /= S2_MAX
    return s2


def read_s1(url: str, normalise: bool) -> np.ndarray:
    """Both S1 bands as float32 dB: NaN -> 0, clip to [-25, 0]; without normalisation dB / 25 + 1."""
    with _open_raster(url) as ds:
        s1 = ds.read()
    s1 = s1.astype(np.float32)
    s1 = np.nan_to_num(s1)
    s1 = np.clip(s1, S1_MIN_DB, S1_MAX_DB)
    if not normalise:
        s1 /= -S1_MIN_DB
        s1 += 1
    return s1


class GeoTiffDataset(Dataset):
    """A SEN12MS tree (local or URL) + label file + split list -> the original's samples.

    `names`: S2 file names (or a split list file); the known broken triplet is dropped and the
    names are sorted, as the original does. `labels`: a mapping or a label file. Each item is
    `{"image": float32 tensor (C, 256, 256), "label": float32 vector, "id": S2 file name}`.
    """

    def __init__(self, root: str, names: Sequence[str] | str, labels: Mapping[str, Any] | str, *,
                 input_spec: str = "s1s2", label_type: str = "multi_label", igbp: str = "simple",
                 threshold: float = 0.1, normalise: bool = True) -> None:
        self.root = str(root)
        names = read_split_list(names) if isinstance(names, str) else list(names)
        self.labels = load_labels(labels) if isinstance(labels, str) else dict(labels)
        self.bands: tuple[BandRef, ...] = resolve_bands(input_spec)
        self.rule = LabelRule(label_type, igbp, threshold)
        self.normalise = normalise
        ids = []
        for name in names:
            try:
                pid = parse_patch(name)
            except InputError as exc:
                raise InputError(str(exc)) from exc
            if pid.key in KNOWN_BROKEN:
                continue
            if pid.filename("s2") not in self.labels:
                raise InputError(f"{pid.filename('s2')}: no label in the label file")
            ids.append(pid.with_modality("s2"))
        self.ids = sorted(set(ids), key=lambda p: p.filename())
        s2 = [b for b in self.bands if b.modality == "s2"]
        s1 = [b for b in self.bands if b.modality == "s1"]
        self.s2_indexes = tuple(b.index + 1 for b in s2)
        # Channel order of the input: read S2 bands, then both S1 bands, then pick.
        read_order = s2 + [BandRef("s1", n, i) for i, n in enumerate(("VV", "VH"))] if s1 else s2
        self.pick = [read_order.index(b) for b in self.bands]
        self.mean = [OFFICIAL_MEAN[b.name] for b in self.bands]
        self.std = [OFFICIAL_STD[b.name] for b in self.bands]

    def __len__(self) -> int:
        return len(self.ids)

    def paths(self, index: int) -> dict[str, str]:
        pid = self.ids[index]
        return {m: storage.join(self.root, pid.relpath(m)) for m in ("s2", "s1")}

    def __getitem__(self, index: int) -> dict[str, Any]:
        pid = self.ids[index]
        parts = []
        try:
            if self.s2_indexes:
                parts.append(read_s2(storage.join(self.root, pid.relpath("s2")), self.s2_indexes, self.normalise))
            if len(self.pick) > len(self.s2_indexes):
                parts.append(read_s1(storage.join(self.root, pid.relpath("s1")), self.normalise))
        except Exception as exc:  # rasterio, GDAL and storage raise many types; name the patch
            raise InputError(f"{pid.filename()}: cannot read its GeoTIFFs ({exc})") from exc
        img = np.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]
        if self.pick != list(range(len(self.pick))):
            img = img[self.pick]
        image = torch.tensor(img)
        if self.normalise:
            for t, m, s in zip(image, self.mean, self.std):
                t.sub_(m).div_(s)
        label = self.rule.indicator(self.labels[pid.filename()][None])[0].astype(np.float32)
        return {"image": image, "label": label, "id": pid.filename()}


def original_loader(dataset: GeoTiffDataset, *, batch_size: int = 64, workers: int = 4, shuffle: bool = True,
                    seed: int | None = None) -> DataLoader:
    """The original's torch DataLoader over a `GeoTiffDataset` (shuffled, pinned on a GPU machine)."""
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return DataLoader(dataset, batch_size=batch_size, num_workers=workers, shuffle=shuffle,
                      pin_memory=torch.cuda.is_available(), generator=generator)
