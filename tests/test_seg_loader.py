"""Segmentation batches of the webdataset loader (`LoaderSpec(targets="mask")`, issue 16): masks from
lc (IGBP -> DFC2020 through the LUT) and from dfc (as stored), `no_savanna`, augmentation that
moves a mask with its image, worker processes, the baseline's way giving the same batches, the
refusals; on the sample trees and on the real lc patch of the reference folder."""

from __future__ import annotations

import dataclasses
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.inputs.dataset import add_real_patches
from bench.originals.geotiff import original_loader
from bench.originals.seggeotiff import SegGeoTiffDataset
from segdata import band1, convert_both, make_trees, read_all, run_convert
from sen12ms_common.errors import DataError, ShardError
from sen12ms_common.format.manifest import checksums_of, load_manifest
from sen12ms_common.vocab.bands import resolve_bands
from sen12ms_common.vocab.dfc import DfcScheme, dfc_to_train, igbp_to_dfc
from sen12ms_common.vocab.igbp import LabelRule
from sen12ms_common.vocab.inputs import channel_transform
from sen12ms_common.vocab.patches import parse_any_patch
from train.data import LoaderSpec, make_loader
from train.data.symmetry import apply_symmetries, symmetric_view
from train.run.device import InputTransform

pytestmark = pytest.mark.slow  # conversions of generated trees

INPUT = "s2hr+s2mr+s1"  # the baseline's published input: 12 channels


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("segloader")
    sen, dfc = make_trees(root)
    convert_both(sen, dfc, root / "shards")
    return sen, dfc, root / "shards"


def spec(root: Path, split: str, **kw) -> LoaderSpec:
    manifest = load_manifest(str(root))
    bands = resolve_bands(INPUT)
    base = dict(targets="mask", batch_size=3)
    base.update(kw)
    return LoaderSpec(str(root), manifest, split, bands, LabelRule("multi_label"), base.pop("batch_size"),
                      channel_transform(bands, "dfc2020"), **base)


def batches(s: LoaderSpec, epoch: int = 0) -> list[dict]:
    loader = make_loader("webdataset", s)
    try:
        return [{k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in b.items()} for b in loader.epoch(epoch)]
    finally:
        loader.close()


def by_key(bs: list[dict]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Image and mask per key, as the training step sees them: moved by the batch's symmetry codes."""
    out = {}
    for b in bs:
        image, mask = (apply_symmetries(b[k], b.get("symmetry")) for k in ("image", "mask"))
        out.update({k: (image[i].numpy(), mask[i].numpy()) for i, k in enumerate(b["key"])})
    return out


def stored_image(tree: Path, key: str) -> np.ndarray:
    """The uint16 s2 bands of the input (B2, B3, B4, B5, B6, B7, B8, B8A, B11, B12) of a patch."""
    s2 = read_all(tree / parse_any_patch(key).relpath("s2"))
    return s2[[1, 2, 3, 4, 5, 6, 7, 8, 11, 12]]


def through(a: np.ndarray, code: int) -> np.ndarray:
    """What lands in a batch slot when `a` (C, H, W) is written through symmetry `code`."""
    out = np.zeros_like(a)
    symmetric_view(out, code)[...] = a
    return out


@pytest.mark.parametrize("no_savanna", [False, True])
def test_lc_masks_are_the_lut_applied_to_the_geotiff(setup, no_savanna):
    sen, _, shards = setup
    got = by_key(batches(spec(shards, "train", no_savanna=no_savanna)))
    assert len(got) == 8
    for key, (image, mask) in got.items():
        lc = band1(sen / parse_any_patch(key).relpath("lc"))
        want = igbp_to_dfc(lc, savanna=not no_savanna)
        assert mask.dtype == np.uint8 and mask.shape == (256, 256)
        assert np.array_equal(mask, want)
        # The LUT written out: DFC2020 grouping, 0-based, 255 where there is no class.
        table = {1: 0, 5: 0, 6: 1, 7: 1, 8: 2, 9: 2, 10: 3, 11: 4, 12: 5, 13: 6, 14: 5, 15: 7, 16: 8, 17: 9, 0: 255}
        if no_savanna:
            table = {v: (255 if c == 2 else c - (c > 2 and c != 255)) for v, c in table.items()}
        for igbp, cls in table.items():
            assert np.all(mask[lc == igbp] == cls)
        assert np.array_equal(image[:10], stored_image(sen, key))


@pytest.mark.parametrize("no_savanna", [False, True])
def test_dfc_masks_are_the_stored_classes_zero_based(setup, no_savanna):
    _, dfc, shards = setup
    for split in ("dfc2020_val", "dfc2020_test"):
        got = by_key(batches(spec(shards, split, no_savanna=no_savanna)))
        assert len(got) == 6
        for key, (_, mask) in got.items():
            stored = band1(dfc / parse_any_patch(key).relpath("dfc"))
            assert np.array_equal(mask, dfc_to_train(stored, savanna=not no_savanna))
            assert np.array_equal(mask.astype(int), np.where(stored == 0, 255, stored.astype(int) - 1)
                                  - (no_savanna * (stored > 3)))  # the sample data holds no savanna
            assert mask.max() < DfcScheme(not no_savanna).num_classes or mask.max() == 255


def test_augmentation_moves_each_mask_with_its_image(setup):
    sen, _, shards = setup
    plain = by_key(batches(spec(shards, "train")))
    s = spec(shards, "train", train=True, augment=True, seed=5)
    first = batches(s, epoch=1)
    assert [b["key"] for b in batches(s, epoch=1)] == [b["key"] for b in first]  # seeded
    codes = []
    carried = {k: int(b["symmetry"][i]) for b in first for i, k in enumerate(b["key"])}
    for key, (image, mask) in by_key(first).items():
        found = [c for c in range(8) if np.array_equal(through(plain[key][0], c), image)]
        assert found == [carried[key]], key  # the sample images have no symmetry
        codes.append(found[0])
        assert np.array_equal(through(plain[key][1][None], found[0])[0], mask), key
    assert len(set(codes)) > 1  # the symmetries were drawn, not all the identity
    again = by_key(batches(s, epoch=1))
    assert all(np.array_equal(again[k][1], v[1]) for k, v in by_key(first).items())


def test_worker_processes_give_the_same_mask_batches(setup):
    _, _, shards = setup
    s = spec(shards, "train", train=True, augment=True, seed=2, streams=2)
    inline, workers = batches(s), batches(dataclasses.replace(s, workers=2))
    assert [b["key"] for b in inline] == [b["key"] for b in workers]
    for a, b in zip(inline, workers):
        assert set(b) == {"image", "mask", "key", "shard", "symmetry"} and b["mask"].dtype == torch.uint8
        assert all(torch.equal(a[k], b[k]) for k in ("image", "mask", "symmetry"))


def test_the_baselines_way_gives_the_same_samples(setup):
    """`bench.originals.seggeotiff` (the bench's reference) and our loader: the same masks, and model
    input within S1 quantisation."""
    sen, dfc, shards = setup
    for tree, split in ((sen, "train"), (dfc, "dfc2020_val")):
        s = spec(shards, split, no_savanna=True)
        ours = by_key(batches(s))
        ds = SegGeoTiffDataset(str(tree), list(ours), input_spec=INPUT, no_savanna=True)
        to_input = InputTransform(s.transform, torch.device("cpu"))
        for batch in original_loader(ds, batch_size=4, workers=0, shuffle=False):  # type: ignore[arg-type]
            for i, name in enumerate(batch["id"]):
                image, mask = ours[name[:-4]]
                assert batch["mask"].dtype == torch.int64
                assert np.array_equal(batch["mask"][i].numpy(), mask.astype(np.int64))
                x = to_input(torch.from_numpy(image)[None])[0].numpy()
                assert np.abs(x - batch["image"][i].numpy()).max() < 1e-5


def test_classification_batches_are_unchanged_and_dfc_splits_refuse_them(setup):
    _, _, shards = setup
    b = batches(spec(shards, "train", targets="labels"))[0]
    assert set(b) == {"image", "target", "prob", "key", "shard"}
    with pytest.raises(DataError, match=r"the dfc2020_val split holds no scene labels \(DFC2020 samples carry dfc "
                                        r"masks only\): use it for segmentation"):
        make_loader("webdataset", spec(shards, "dfc2020_val", targets="labels"))
    with pytest.raises(DataError, match="unknown targets 'pixels'"):
        make_loader("webdataset", spec(shards, "train", targets="pixels"))


def test_shards_without_lc_refuse_masks(setup, tmp_path):
    sen, _, _ = setup
    out = tmp_path / "nolc"
    proc = run_convert("shards", "--data", str(sen), "--out", str(out), "--workers", "1", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    with pytest.raises(DataError, match=r"the train split holds no masks \(they hold s2, s1\); convert with "
                                        r"--modalities s1,s2,lc"):
        make_loader("webdataset", spec(out, "train"))


def test_dali_refuses_masks_in_one_line(setup):
    pytest.importorskip("nvidia.dali")
    _, _, shards = setup
    with pytest.raises(DataError) as info:
        make_loader("dali", spec(shards, "train"))
    assert str(info.value) == "the dali loader makes no segmentation masks: use --loader shards for segmentation"


def test_real_lc_patch_masks_and_augmentation(real_dir, tmp_path):
    """The real lc patch (ROIs1158_spring_lc_1_p30, beside generated s2): its mask is the LUT
    applied to its band 1, and moves with its image."""
    tree = tmp_path / "sen12ms"
    add_real_patches(tree, real_dir, seed=1)
    out = tmp_path / "shards"
    proc = run_convert("shards", "--data", str(tree), "--out", str(out), "--modalities", "s1,s2,lc",
                       "--workers", "1", "--no-progress", "--val-fraction", "0")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    key = "ROIs1158_spring_s2_1_p30"
    lc = band1(real_dir / "ROIs1158_spring_lc_1_p30.tif")
    m = load_manifest(str(out))
    split = next(s for s in ("train", "test") if m.samples(s) and key in by_key(batches(spec(out, s))))
    image, mask = by_key(batches(spec(out, split)))[key]
    assert np.array_equal(mask, igbp_to_dfc(lc))
    assert len(np.unique(lc)) > 1  # a real patch with more than one class
    s = spec(out, split, train=True, augment=True, seed=0, batch_size=1)
    seen = set()
    for epoch in range(12):
        got = by_key(batches(s, epoch)).get(key)
        if got is None:
            continue
        found = [c for c in range(8) if np.array_equal(through(image, c), got[0])]
        assert found and all(np.array_equal(through(mask[None], c)[0], got[1]) for c in found)
        seen.update(found)
    assert len(seen) > 1



def test_a_damaged_mask_member_names_its_sample_or_is_skipped(setup, tmp_path):
    """A mask member that does not decode: one error naming shard and sample; with
    skip_bad_shards the batch holds the other samples, their masks unchanged."""
    sen, _, shards = setup
    out = tmp_path / "damaged"
    shutil.copytree(shards, out)
    entry = load_manifest(str(out)).shards("train")[0]
    with tarfile.open(out / entry.name) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".lc.zst"))
    victim = member.name.split(".", 1)[0]
    data = bytearray((out / entry.name).read_bytes())
    data[member.offset_data:member.offset_data + member.size] = b"\x5a" * member.size
    (out / entry.name).write_bytes(bytes(data))
    doc = json.loads((out / "manifest.json").read_text())
    shard = next(s for s in doc["splits"]["train"]["shards"] if s["name"] == entry.name)
    shard.update(checksums_of(str(out / entry.name)))
    (out / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(ShardError, match=rf"{entry.name}: sample {victim}: member \.lc\.zst"):
        batches(spec(out, "train"))
    s = spec(out, "train", skip_bad_shards=True)
    loader = make_loader("webdataset", s)
    got = {k: v for b in loader.epoch(0) for k, v in zip(b["key"], b["mask"].numpy())}
    assert victim not in got and len(got) == 7
    assert any(victim in p for p in loader.skipped)
    for key, mask in got.items():
        assert np.array_equal(mask, igbp_to_dfc(band1(sen / parse_any_patch(key).relpath("lc"))))
