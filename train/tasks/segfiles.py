"""What `python -m train.predict` writes: a land-cover map per patch as a georeferenced GeoTIFF
with the baseline's colour table, and PNG preview pages (S2 RGB | prediction | ground truth).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from sen12ms_common.storage import files as storage
from sen12ms_common.storage.outputs import writing
from sen12ms_common.vocab.dfc import IGNORE_INDEX, DfcScheme
from sen12ms_common.vocab.igbp import DFC2020_COLOURS

# S2 reflectance x 10000 shown as white at most (previews stretch each patch to its 98th percentile).
RGB_WHITE = 3000.0
TILE_GAP = 4
HEADER = 14  # pixels above each tile for its title


@dataclass(frozen=True)
class Georef:
    """Where a patch lies: CRS (EPSG:xxxx or WKT; "" when unknown) and affine a, b, c, d, e, f."""

    crs: str
    transform: tuple[float, float, float, float, float, float]


def prediction_name(key: str) -> str:
    """The file name of a patch's map: `_s2_` -> `_pred_` as the baseline names its TIFF-folder
    predictions (`ROIs1158_spring_pred_1_p30.tif`), else `<key>_pred.tif`."""
    stem = key[:-4] if key.lower().endswith(".tif") else key
    if "_s2_" in stem:
        head, _, tail = stem.rpartition("_s2_")
        return f"{head}_pred_{tail}.tif"
    return f"{stem}_pred.tif"


def geotiff_bytes(dfc_values: np.ndarray, georef: Georef | None, scheme: DfcScheme) -> bytes:
    """One band, uint8, DFC2020 values 1..10, deflate-compressed, with the colour table of
    `scheme` and, when known, the input patch's CRS and transform."""
    import rasterio  # start-up time: rasterio only when used
    from affine import Affine  # start-up time: affine only when used
    from rasterio.io import MemoryFile  # start-up time: rasterio only when used

    values = np.ascontiguousarray(dfc_values, dtype=np.uint8)
    h, w = values.shape
    profile = dict(driver="GTiff", width=w, height=h, count=1, dtype="uint8", compress="deflate")
    if georef is not None and georef.crs:
        profile.update(crs=rasterio.crs.CRS.from_user_input(georef.crs), transform=Affine(*georef.transform))
    with MemoryFile() as mem:
        with mem.open(**profile) as ds:
            ds.write(values, 1)
            ds.write_colormap(1, scheme.colormap())
            ds.update_tags(1, classes=",".join(f"{c}={n}" for c, n in zip(scheme.dfc_classes, scheme.names)))
        return bytes(mem.read())


def write_bytes(url: str, data: bytes) -> None:
    """Write a file whole or not at all (local or s3://); a local failure is one line."""
    with writing(url):
        storage.write_bytes(url, data)


# --- previews ----------------------------------------------------------------------------------

def _palette() -> np.ndarray:
    """(256, 3) uint8: DFC2020 value -> colour; 0 (no class) black, 255 (ignored) white."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    for c, hex_colour in enumerate(DFC2020_COLOURS, start=1):
        lut[c] = [int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)]
    lut[IGNORE_INDEX] = 255
    return lut


PALETTE = _palette()


def colourise(dfc_values: np.ndarray) -> np.ndarray:
    """DFC2020 values (H, W) -> RGB uint8 (H, W, 3) in the baseline's colours."""
    return PALETTE[np.asarray(dfc_values, dtype=np.uint8)]


def s2_rgb(red: np.ndarray, green: np.ndarray, blue: np.ndarray) -> np.ndarray:
    """B4, B3, B2 reflectance x 10000 -> RGB uint8 (H, W, 3): linear, the 98th percentile of the
    patch white (at most RGB_WHITE, so that bright scenes are not darkened)."""
    rgb = np.stack([red, green, blue], axis=-1).astype(np.float32)
    white = min(float(np.percentile(rgb, 98)), RGB_WHITE) if rgb.size else RGB_WHITE
    return (np.clip(rgb / max(white, 1.0), 0, 1) * 255).astype(np.uint8)


@dataclass
class PreviewRow:
    title: str
    rgb: np.ndarray | None      # (H, W, 3) or None when the input has no S2 RGB
    prediction: np.ndarray      # (H, W, 3)
    truth: np.ndarray | None    # (H, W, 3) or None without ground truth


def preview_png(rows: Sequence[PreviewRow], scheme: DfcScheme) -> bytes:
    """A page: one row per patch (S2 RGB | prediction | ground truth), a legend at the bottom."""
    from PIL import Image, ImageDraw  # start-up time: PIL only when used

    h, w = rows[0].prediction.shape[:2]
    cols = ("S2 RGB", "prediction", "ground truth")
    cell_w, cell_h = w + TILE_GAP, h + HEADER + TILE_GAP
    legend_h = 16 * ((scheme.num_classes + 1) // 2) + TILE_GAP
    page = Image.new("RGB", (3 * cell_w + TILE_GAP, len(rows) * cell_h + legend_h + TILE_GAP), "white")
    draw = ImageDraw.Draw(page)
    for r, row in enumerate(rows):
        y = TILE_GAP + r * cell_h
        for c, tile in enumerate((row.rgb, row.prediction, row.truth)):
            x = TILE_GAP + c * cell_w
            label = f"{row.title}: {cols[c]}" if c == 0 else cols[c]
            draw.text((x, y), label if tile is not None else f"{cols[c]}: none", fill="black")
            if tile is not None:
                page.paste(Image.fromarray(np.ascontiguousarray(tile[:h, :w])), (x, y + HEADER))
    y0 = TILE_GAP + len(rows) * cell_h
    for i, (value, name) in enumerate(zip(scheme.dfc_classes, scheme.names)):
        x, y = TILE_GAP + (i % 2) * (cell_w + cell_w // 2), y0 + 16 * (i // 2)
        draw.rectangle([x, y, x + 11, y + 11], fill=tuple(int(v) for v in PALETTE[value]), outline="black")
        draw.text((x + 16, y), f"{value} {name}", fill="black")
    buf = io.BytesIO()
    page.save(buf, format="PNG")
    return buf.getvalue()
