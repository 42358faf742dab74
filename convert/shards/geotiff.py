"""Read and validate one SEN12MS GeoTIFF patch (local path or URL)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sen12ms_common.errors import InputError
from sen12ms_common.storage import files as storage
from sen12ms_common.vocab.bands import MODALITY_BANDS, MODALITY_DTYPES, PATCH_SIZE


@dataclass
class Patch:
    data: np.ndarray  # (bands, 256, 256) in the file's dtype
    crs: str  # "EPSG:32737", or WKT where the CRS has no EPSG code
    transform: tuple[float, float, float, float, float, float]  # affine a, b, c, d, e, f


def _describe(exc: BaseException, url: str) -> str:
    """One line for a rasterio/GDAL failure: GDAL's own message sits in the chained exception."""
    cause = exc.__cause__ or exc.__context__
    text = str(cause if cause is not None and "previous exception" in str(exc) else exc)
    text = (text.splitlines() or [exc.__class__.__name__])[0]
    name = url.rsplit("/", 1)[-1]
    for prefix in (f"{url}: ", f"{name}: ", f"{name}, "):
        text = text.removeprefix(prefix)
    if "No such file" in text:
        return "file not found"
    if "Permission denied" in text:
        return "cannot read: permission denied"
    if "TIFFRead" in text or "IReadBlock" in text:
        return f"truncated or damaged GeoTIFF ({text})"
    return f"not a readable GeoTIFF ({text})"


def check_header(url: str, ds, modality: str) -> None:
    """The format, band count, dtype and size a file declares, checked before a pixel is read:
    a few-KB sparse file may declare 100,000 x 100,000 pixels, which reading would allocate."""
    if ds.driver != "GTiff":
        raise InputError(f"{url}: a {ds.driver} file, not a GeoTIFF")
    want_bands, want_dtype = len(MODALITY_BANDS[modality]), MODALITY_DTYPES[modality]
    if ds.count != want_bands:
        raise InputError(f"{url}: {ds.count} bands, a SEN12MS {modality} patch has {want_bands}")
    if set(ds.dtypes) != {np.dtype(want_dtype).name}:
        raise InputError(f"{url}: dtype {ds.dtypes[0]}, a SEN12MS {modality} patch is {want_dtype}")
    if (ds.height, ds.width) != (PATCH_SIZE, PATCH_SIZE):
        raise InputError(f"{url}: size {ds.width} x {ds.height}, expected {PATCH_SIZE} x {PATCH_SIZE}")


def _read_checked(ds, url: str, modality: str):
    check_header(url, ds, modality)
    return ds.read(), ds.crs, ds.transform


def read_patch(url: str, modality: str) -> Patch:
    """Read a patch and check format, band count, dtype and size against the SEN12MS format
    (from the header, before the pixels are read)."""
    import rasterio  # start-up time: rasterio only when used
    from rasterio.errors import RasterioError  # start-up time: rasterio only when used

    try:
        if storage.is_remote(url):
            with rasterio.MemoryFile(storage.read_bytes(url)) as mem, mem.open() as ds:
                data, crs, transform = _read_checked(ds, url, modality)
        else:
            with rasterio.open(url) as ds:
                data, crs, transform = _read_checked(ds, url, modality)
    except InputError:
        raise
    except PermissionError as exc:
        raise InputError(f"{url}: cannot read: permission denied") from exc
    except FileNotFoundError as exc:
        raise InputError(f"{url}: file not found") from exc
    except (RasterioError, OSError, ValueError, MemoryError) as exc:
        raise InputError(f"{url}: {_describe(exc, url)}") from exc
    if crs is None:
        crs_text = ""
    else:
        epsg = crs.to_epsg()
        crs_text = f"EPSG:{epsg}" if epsg else crs.to_wkt()
    return Patch(data, crs_text, tuple(float(v) for v in tuple(transform)[:6]))
