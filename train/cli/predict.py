"""`python -m train.predict`: land-cover maps from a segmentation checkpoint, one georeferenced
GeoTIFF per patch of a shard split or of a folder of S1/S2 GeoTIFFs never converted, and preview
pages; details in docs/segmentation.md ("Land-cover maps")."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Callable, Iterator

import click
import numpy as np

from sen12ms_common.errors import DataError, InputError, report_errors
from sen12ms_common.progress import Counter, ProgressOptions, progress_options
from sen12ms_common.storage import files as storage
from sen12ms_common.storage.redaction import log_warnings_to_stderr, redacting
from sen12ms_common.vocab.dfc import DfcScheme, train_to_dfc
from sen12ms_common.words import plural

from ..tasks.segfiles import (Georef, PreviewRow, colourise, geotiff_bytes, prediction_name, preview_png, s2_rgb,
                              write_bytes)
from .optionkinds import click_options
from .schema import PREDICT

if TYPE_CHECKING:
    import torch

# torch is imported by the functions that use it, not at the top: --help builds without it.

Echo = Callable[[str], None]
S2_RGB = (3, 2, 1)  # B4, B3, B2 in the 13-band file


@dataclass
class Item:
    """One patch on its way through the model."""

    key: str
    stored: dict[str, np.ndarray]   # modality -> stored values (uint16)
    truth: np.ndarray | None        # training classes, 255 ignored
    georef: Georef | None


@dataclass
class PredictResult:
    written: list[str] = field(default_factory=list)
    previews: list[str] = field(default_factory=list)
    ungeoreferenced: int = 0


# --- sources ---------------------------------------------------------------------------------------

def tiff_items(root: str, bands, savanna: bool) -> tuple[int, Iterator[Item]]:
    """Patches of a GeoTIFF folder; every missing input is reported before anything is written."""
    from ..data.tiffdir import check_inputs, find_patches, read_sample  # start-up time: the command's work imports torch

    patches = check_inputs(find_patches(root), bands, root)

    def items() -> Iterator[Item]:
        for p in patches:
            s = read_sample(p, bands, savanna)
            yield Item(p.key, s.stored, s.truth, s.georef)
    return len(patches), items()


def shard_items(root: str, split: str, bands, savanna: bool, verify: bool) -> tuple[int, Iterator[Item]]:
    """Samples of one split of a shard set, in manifest order, with every member decoded."""
    from sen12ms_common.vocab.dfc import dfc_to_train, igbp_to_dfc  # start-up time: the command's work imports torch
    from sen12ms_common.format.manifest import load_manifest  # start-up time: the command's work imports torch
    from sen12ms_common.format.sample import decode_sample  # start-up time: the command's work imports torch

    from ..data.shardread import check_shards  # start-up time: the command's work imports torch
    from ..data.allmembers import AllMembers, read_split  # start-up time: the command's work imports torch

    manifest = load_manifest(root)
    entries = tuple(manifest.shards(split)) if split in manifest.splits else ()
    if not entries or manifest.samples(split) == 0:
        raise DataError(f"{root}: no {split} samples in this shard set")
    layout = manifest.layout_of(split)  # DFC2020 splits have their own: dfc masks, no labels
    missing = [m for m in {b.modality for b in bands} if m not in layout.modalities]
    if missing:
        raise DataError(f"{root}: its {split} samples hold no {', '.join(missing)} (they hold "
                        f"{', '.join(layout.modalities)})")
    problems = check_shards(root, entries, verify)
    if problems:
        raise DataError(problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
    src = AllMembers(root=root, entries=entries, layout=layout, bands=tuple(bands), rule=None,  # type: ignore[arg-type]
                     verify=verify, skip_bad=False)

    def items() -> Iterator[Item]:
        for key, members, shard in read_split(src):
            try:
                sample = decode_sample(members, layout)
            except ValueError as exc:
                raise DataError(f"{storage.join(root, shard)}: sample {key}: {exc}") from None
            meta = sample.get("meta") or {}
            truth = (dfc_to_train(sample["dfc"][0], savanna) if "dfc" in sample
                     else igbp_to_dfc(sample["lc"][0], savanna) if "lc" in sample else None)
            stored = {m: sample[m] for m in ("s2", "s1") if m in sample}
            yield Item(key, stored, truth, _georef(meta))
    return manifest.samples(split), items()


def _georef(meta: dict[str, Any]) -> Georef | None:
    """The sample's CRS and transform from its metadata (None when it has none)."""
    crs, t = meta.get("crs"), meta.get("transform")
    if not isinstance(crs, str) or not crs or not isinstance(t, list) or len(t) < 6:
        return None
    try:
        return Georef(crs, tuple(float(v) for v in t[:6]))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


# --- the loop --------------------------------------------------------------------------------------

def _input(items: list[Item], bands) -> torch.Tensor:
    """The model's channels of a batch as stored values (uint16 (B, C, H, W))."""
    import torch  # not at the top: --help builds without it
    from sen12ms_common.vocab.inputs import select_channels  # start-up time: the command's work imports torch

    return torch.from_numpy(np.stack([select_channels(it.stored, bands) for it in items]))


def _batches(items: Iterator[Item], batch_size: int) -> Iterator[list[Item]]:
    """Consecutive patches of one size (GeoTIFFs of other sizes start a new batch)."""
    batch: list[Item] = []
    for it in items:
        shape = next(iter(it.stored.values())).shape[1:]
        if batch and (len(batch) == batch_size or next(iter(batch[0].stored.values())).shape[1:] != shape):
            yield batch
            batch = []
        batch.append(it)
    if batch:
        yield batch


def _preview_row(it: Item, pred_dfc: np.ndarray, scheme: DfcScheme) -> PreviewRow:
    s2 = it.stored.get("s2")
    rgb = s2_rgb(*(s2[i] for i in S2_RGB)) if s2 is not None else None
    truth = colourise(train_to_dfc(it.truth, scheme.savanna)) if it.truth is not None else None
    return PreviewRow(it.key, rgb, colourise(pred_dfc), truth)


def run_prediction(net: torch.nn.Module, spec, items: Iterator[Item], out: str, *, batch_size: int,
                   device: torch.device, previews: int, preview_rows: int, total: int,
                   echo: Echo = print, name: Callable[[str], str] = prediction_name,
                   progress: ProgressOptions = ProgressOptions()) -> PredictResult:
    """Predict every item, write its GeoTIFF, and preview pages of the first `previews` items."""
    import torch  # start-up time: --help builds without it

    from sen12ms_common.storage.outputs import writing  # start-up time: the command's work imports torch

    from ..run.device import InputTransform  # start-up time: the command's work imports torch

    scheme = spec.scheme
    to_input = InputTransform(spec.transform, device, reuse=True)  # each batch is consumed before the next
    result = PredictResult()
    rows: list[PreviewRow] = []

    def flush() -> None:
        if rows:
            url = storage.join(out, "previews", f"preview_{len(result.previews):04d}.png")
            write_bytes(url, preview_png(rows, scheme))
            result.previews.append(url)
            rows.clear()

    with torch.no_grad(), Counter(progress, "predict", total, "patch") as bar:
        for batch in _batches(items, batch_size):
            classes = net(to_input(_input(batch, spec.bands))).argmax(dim=1).to(torch.uint8).cpu().numpy()
            for it, pred in zip(batch, classes):
                dfc = train_to_dfc(pred, scheme.savanna)
                map_name = name(it.key)  # a key from a folder keeps its sub-folders
                if "/" in map_name:
                    with writing(out):
                        storage.makedirs(storage.join(out, map_name.rpartition("/")[0]))
                url = storage.join(out, map_name)
                write_bytes(url, geotiff_bytes(dfc, it.georef, scheme))
                result.written.append(url)
                result.ungeoreferenced += it.georef is None or not it.georef.crs
                if len(result.written) <= previews:
                    rows.append(_preview_row(it, dfc, scheme))
                    if len(rows) == preview_rows:
                        flush()
                bar.update(1)
    flush()
    return result


def predict(*, checkpoint: str, out: str, shards: str | None = None, split: str = "test", data: str | None = None,
            batch_size: int = 8, device: str = "auto", stats: str | None = None, previews: int = 32,
            preview_rows: int = 8, verify: bool = True, echo: Echo = print, config: str | None = None,
            names: str = "ours", progress: ProgressOptions = ProgressOptions()) -> PredictResult:
    """Load the checkpoint, read the patches (every input checked first), write maps and previews.
    `config`: the DFC2020 baseline's args.pkl for its checkpoints (default: one beside the checkpoint);
    `names`: "baseline" names the maps as its predict.py (`_dfc_`, `_lc_`, `_pred_`)."""
    from sen12ms_common.storage.outputs import output_folder, writing  # start-up time: the command's work imports torch

    from ..config.baseline_files import attach_config, baseline_prediction_name  # start-up time: the command's work imports torch
    from ..run.checkpoint import load_checkpoint  # start-up time: the command's work imports torch
    from ..run.device import resolve_device  # start-up time: the command's work imports torch
    from ..tasks.segconfig import load_segmentation_model  # start-up time: the command's work imports torch

    out = output_folder(out, "--out")
    dev = resolve_device(device)
    ckpt, text_config = attach_config(load_checkpoint(checkpoint), checkpoint, config, echo)
    if text_config:
        raise InputError(f"{text_config}: not the DFC2020 baseline's args.pkl (a pickle); our checkpoints "
                         "need no --config")
    spec, net = load_segmentation_model(ckpt, checkpoint, dev, stats)
    name = prediction_name if names == "ours" else partial(baseline_prediction_name, split=None if data else split)
    if data is not None:
        total, items = tiff_items(data, spec.bands, spec.savanna)
        source = data
    else:
        assert shards is not None
        total, items = shard_items(shards, split, spec.bands, spec.savanna, verify)
        source = f"{shards} ({split})"
    with writing(out):
        storage.makedirs(out)
    echo(f"{checkpoint}: {spec.model}, input {spec.input}, {spec.scheme.num_classes} classes; "
         f"{total} patches from {source}")
    result = run_prediction(net, spec, items, out, batch_size=batch_size, device=dev, previews=previews,
                            preview_rows=preview_rows, total=total, echo=echo, name=name, progress=progress)
    pages = len(result.previews)
    echo(f"wrote {len(result.written)} {plural('map', len(result.written))} to {out}"
         + (f" and {pages} preview {plural('page', pages)} to {storage.join(out, 'previews')}" if pages else ""))
    if result.ungeoreferenced:
        n = result.ungeoreferenced
        echo(f"note: {n} {plural('map', n)} {'has' if n == 1 else 'have'} no CRS/transform: "
             f"{'its input' if n == 1 else 'their inputs'} had none")
    return result


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click_options(PREDICT)
@progress_options(counted=True)
@report_errors
def main(checkpoint, shards, split, data, out, batch_size, device, stats, previews, preview_rows, no_verify, config,
         names, progress, progress_interval) -> None:
    """Predict a land-cover map (DFC2020 classes) for every patch of a shard split or a GeoTIFF folder."""
    log_warnings_to_stderr()
    if (shards is None) == (data is None):
        raise click.UsageError("give either --shards DIR (with --split) or --data FOLDER_OF_GEOTIFFS")
    predict(checkpoint=checkpoint, out=out, shards=shards, split=split, data=data, batch_size=batch_size,
            device=device, stats=stats, previews=previews, preview_rows=preview_rows, verify=not no_verify,
            echo=redacting(click.echo), config=config, names=names,
            progress=ProgressOptions(progress, progress_interval))


if __name__ == "__main__":
    main(prog_name="python -m train.predict")
