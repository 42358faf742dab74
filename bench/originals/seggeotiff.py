"""The DFC2020 baseline's data path for segmentation, re-implemented: one sample = open its s2, s1
and mask GeoTIFFs with rasterio.

Per sample, as the baseline's `code/datasets.py` does it: the chosen S2 bands as float32,
clip(0, 10000) / 10000; both S1 bands as float32, NaN -> 0, clip(-25, 0) dB, / 25 + 1; S2 then
S1. The mask is band 1 of the lc patch mapped IGBP -> DFC2020 (a SEN12MS patch) or of the dfc
patch as stored (a DFC2020 patch), 0-based, 255 = ignore, savanna folded away with
`no_savanna` (`sen12ms_common.vocab.dfc`), as int64 like the baseline's. `make bench` measures "the
baseline's way" with it, beside the shard loader's image + mask batches.

    ds = SegGeoTiffDataset("/sen12ms", keys, input_spec="s2hr+s2mr+s1", no_savanna=True)
    loader = original_loader(ds, batch_size=32, workers=4)   # bench.originals.geotiff
    for batch in loader: batch["image"], batch["mask"], batch["id"]
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from sen12ms_common.errors import InputError
from sen12ms_common.storage import files as storage
from sen12ms_common.vocab.bands import BandRef, resolve_bands
from sen12ms_common.vocab.dfc import dfc_to_train, igbp_to_dfc
from sen12ms_common.vocab.patches import is_dfc2020, parse_any_patch

from bench.originals.geotiff import _open_raster, read_s1, read_s2


class SegGeoTiffDataset(Dataset):
    """A SEN12MS or DFC2020 tree (local or URL) and S2 keys or file names -> the baseline's
    samples: `{"image": float32 (C, 256, 256), "mask": int64 (256, 256), "id": S2 file name}`."""

    def __init__(self, root: str, names: Sequence[str], *, input_spec: str = "s2hr+s2mr+s1",
                 no_savanna: bool = False) -> None:
        self.root = str(root)
        self.bands: tuple[BandRef, ...] = resolve_bands(input_spec)
        self.savanna = not no_savanna
        try:
            ids = {parse_any_patch(n).with_modality("s2") for n in names}
        except InputError as exc:
            raise InputError(str(exc)) from exc
        self.ids = sorted(ids, key=lambda p: p.filename())
        s2 = [b for b in self.bands if b.modality == "s2"]
        self.s2_indexes = tuple(b.index + 1 for b in s2)
        self.s1 = any(b.modality == "s1" for b in self.bands)
        if [b.modality for b in self.bands] != ["s2"] * len(s2) + ["s1"] * (len(self.bands) - len(s2)) \
                or list(self.s2_indexes) != sorted(self.s2_indexes) or (self.s1 and len(self.bands) - len(s2) != 2):
            raise InputError(f"input {input_spec!r}: the baseline reads S2 bands in file order, then both "
                             "S1 bands (e.g. s2hr+s2mr+s1)")

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        pid = self.ids[index]
        mask_modality = "dfc" if is_dfc2020(pid) else "lc"
        parts = []
        try:
            if self.s2_indexes:
                parts.append(read_s2(storage.join(self.root, pid.relpath("s2")), self.s2_indexes, False))
            if self.s1:
                parts.append(read_s1(storage.join(self.root, pid.relpath("s1")), False))
            with _open_raster(storage.join(self.root, pid.relpath(mask_modality))) as ds:
                band = ds.read(1)
        except Exception as exc:  # rasterio, GDAL and storage raise many types; name the patch
            raise InputError(f"{pid.filename()}: cannot read its GeoTIFFs ({exc})") from exc
        img = np.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]
        mask = (dfc_to_train if mask_modality == "dfc" else igbp_to_dfc)(band, self.savanna)
        return {"image": torch.from_numpy(img), "mask": torch.from_numpy(mask.astype(np.int64)),
                "id": pid.filename()}
