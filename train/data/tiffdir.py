"""S1/S2 GeoTIFFs never converted, as `python -m train.predict --data` reads them: grouped into
patches by the `s1`/`s2`/`lc`/`dfc` part of their names, read into the shards' stored values
(docs/segmentation.md, "Land-cover maps")."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sen12ms_common.errors import InputError
from sen12ms_common.format.sample import quantize_s1
from sen12ms_common.vocab.bands import MODALITY_BANDS, BandRef, modalities_of
from sen12ms_common.vocab.dfc import dfc_to_train, igbp_to_dfc

from ..tasks.segfiles import Georef

MODALITIES = ("s1", "s2", "lc", "dfc")
# A modality token: a whole `_`-separated part of a name (`x_s2_1`, `s2_7`, `s2`).
_TOKEN = re.compile(r"(?:(?<=_)|^)(s1|s2|lc|dfc)(?=_|$)", re.IGNORECASE)
_SUFFIXES = (".tif", ".tiff")
# The sides of a GeoTIFF predict reads: a model's downsampling needs 32 pixels (an 8-pixel
# patch leaves nothing after its pooling); a model's activations at 2048 x 2048 take several GB.
MIN_SIDE, MAX_SIDE = 32, 2048


@dataclass
class TiffPatch:
    key: str                                         # the S2 file's path under the folder (or another member's)
    files: dict[str, Path] = field(default_factory=dict)  # modality -> file


def _modality_and_key(rel: Path) -> tuple[str | None, str]:
    """The modality a relative path names (None: none or two) and the path with it blanked."""
    found: set[str] = set()
    parts = []
    for i, part in enumerate(rel.parts):
        name = part[:-len(rel.suffix)] if i == len(rel.parts) - 1 else part
        for m in _TOKEN.findall(name):
            found.add(m.lower())
        parts.append(_TOKEN.sub("{m}", name))
    if len(found) != 1:
        return None, ""
    return found.pop(), "/".join(parts)


def find_patches(root: str | Path) -> list[TiffPatch]:
    """The patches under `root`, sorted by key; files without one modality token are ignored."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: not a folder")
    groups: dict[str, TiffPatch] = {}
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in _SUFFIXES and p.is_file()):
        modality, key = _modality_and_key(path.relative_to(root))
        if modality is None:
            continue
        patch = groups.setdefault(key, TiffPatch(key=""))
        if modality in patch.files:
            raise InputError(f"{path}: a second {modality} file for the patch of {patch.files[modality]}")
        patch.files[modality] = path
    for key, patch in groups.items():
        first = patch.files.get("s2") or patch.files.get("s1") or next(iter(patch.files.values()))
        patch.key = first.relative_to(root).as_posix()  # two folders may hold the same file name
    return sorted(groups.values(), key=lambda p: p.key)


def check_inputs(patches: list[TiffPatch], bands: tuple[BandRef, ...], root: str | Path) -> list[TiffPatch]:
    """The patches that hold every modality the model needs; a patch lacking one is an error
    (before anything is written), a folder without a patch too. Ground truth only is left out."""
    need = modalities_of(bands)
    usable = [p for p in patches if any(m in p.files for m in ("s1", "s2"))]
    if not usable:
        raise InputError(f"{root}: no S1/S2 GeoTIFFs (file or folder names with _s1_ / _s2_ tokens)")
    for p in usable:
        missing = [m for m in need if m not in p.files]
        if missing:
            have = next(iter(p.files.values()))
            raise InputError(f"{have}: no {' and '.join(missing)} file beside it (the model's input "
                             f"needs {', '.join(need)})")
    for p in usable:
        for m in ("s2", "s1"):
            if m in p.files:
                _open_checked(p.files[m], m, lambda ds: None)
    return usable


@dataclass
class TiffSample:
    stored: dict[str, np.ndarray]  # modality -> stored values (s2 uint16, s1 uint16 codes)
    truth: np.ndarray | None       # 0-based training classes (255 ignored), from dfc or lc
    georef: Georef


def check_header(path: Path, ds, modality: str) -> None:
    """What a file declares (format, bands, size), checked before a pixel is read: reading
    allocates what the header says, and a few-KB sparse file may declare 100,000 pixels a side."""
    if ds.driver != "GTiff":
        raise InputError(f"{path}: a {ds.driver} file, not a GeoTIFF")
    want = len(MODALITY_BANDS[modality]) if modality in ("s1", "s2") else None  # lc has 4 bands, dfc 1
    if want is not None and ds.count != want:
        raise InputError(f"{path}: {ds.count} bands, a {modality} patch has {want}")
    if min(ds.width, ds.height) < MIN_SIDE:
        raise InputError(f"{path}: {ds.width} x {ds.height} pixels, fewer than the models take (at least "
                         f"{MIN_SIDE} pixels a side)")
    if max(ds.width, ds.height) > MAX_SIDE:
        raise InputError(f"{path}: {ds.width} x {ds.height} pixels, more than train.predict reads (at most "
                         f"{MAX_SIDE} pixels a side)")


def _open_checked(path: Path, modality: str, use):
    """`use(ds)` on the opened file once its header passed `check_header`; one line on failure."""
    import rasterio  # start-up time: rasterio only when used
    from rasterio.errors import RasterioError  # start-up time: rasterio only when used

    try:
        with rasterio.open(path) as ds:
            check_header(path, ds, modality)
            return use(ds)
    except (RasterioError, OSError) as exc:
        text = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise InputError(f"{path}: not a readable GeoTIFF ({text})") from None


def _read(path: Path, modality: str) -> tuple[np.ndarray, Georef]:
    data, crs, transform = _open_checked(path, modality, lambda ds: (ds.read(), ds.crs, ds.transform))
    if modality == "s2" and not np.issubdtype(data.dtype, np.integer):
        raise InputError(f"{path}: dtype {data.dtype}, S2 reflectance x 10000 must be integers")
    crs_text = ""
    if crs is not None:
        epsg = crs.to_epsg()
        crs_text = f"EPSG:{epsg}" if epsg else crs.to_wkt()
    return data, Georef(crs_text, tuple(float(v) for v in tuple(transform)[:6]))


def read_sample(patch: TiffPatch, bands: tuple[BandRef, ...], savanna: bool) -> TiffSample:
    """The stored values of the modalities the model needs (and S2 for the preview when there
    is one), the ground truth when the patch has dfc (preferred) or lc, and the georeference of
    the S2 file (else S1)."""
    need = set(modalities_of(bands)) | ({"s2"} if "s2" in patch.files else set())
    stored: dict[str, np.ndarray] = {}
    georef: Georef | None = None
    shape = None
    for m in ("s2", "s1"):
        if m not in need:
            continue
        data, ref = _read(patch.files[m], m)
        if shape is not None and data.shape[1:] != shape:
            raise InputError(f"{patch.files[m]}: {data.shape[2]} x {data.shape[1]} pixels, its S2 file has "
                             f"{shape[1]} x {shape[0]}")
        shape, georef = data.shape[1:], georef or ref
        if m == "s2":
            stored[m] = np.clip(data, 0, 65535).astype(np.uint16)
        else:
            stored[m] = quantize_s1(data)
    truth = None
    for m, to_train in (("dfc", dfc_to_train), ("lc", igbp_to_dfc)):
        if m in patch.files:
            data, _ = _read(patch.files[m], m)
            if data.shape[1:] == shape and np.issubdtype(data.dtype, np.integer) and data.min() >= 0 \
                    and data.max() <= 255:
                truth = to_train(data[0].astype(np.uint8), savanna)
            break
    assert georef is not None  # check_inputs: every patch has S1 or S2
    return TiffSample(stored, truth, georef)
