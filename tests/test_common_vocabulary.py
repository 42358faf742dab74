"""sen12ms_common: bands, IGBP tables and label rules, patch names, the restricted unpickler."""

from __future__ import annotations

from sen12ms_common.errors import InputError, UnsafePickleError

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from sen12ms_common.datafiles import safepickle
from sen12ms_common.vocab import bands, igbp, patches


def test_importing_common_does_not_import_torch_or_rasterio():
    code = ("import sys, sen12ms_common.vocab.bands, sen12ms_common.vocab.igbp, sen12ms_common.vocab.patches, "
            "sen12ms_common.format.sample, sen12ms_common.format.manifest, sen12ms_common.storage.files, "
            "sen12ms_common.datafiles.safepickle, sen12ms_common.vocab.inputs; "
            "print(sorted(m for m in ('torch', 'rasterio', 'fsspec', 'webdataset') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("name, expected", [
    ("rgb", ["B2", "B3", "B4"]),
    ("s2", ["B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12"]),
    ("s1", ["VV", "VH"]),
    ("s1s2", ["B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12", "VV", "VH"]),
    ("rgbs1", ["B2", "B3", "B4", "VV", "VH"]),
])
def test_input_sets_match_the_original_band_order(name, expected):
    refs = bands.resolve_bands(name)
    assert [r.name for r in refs] == expected
    # The original's 1-based indices into the 13-band S2 file.
    s2_idx = [r.index + 1 for r in refs if r.modality == "s2"]
    if name in ("s2", "s1s2"):
        assert s2_idx == [2, 3, 4, 5, 6, 7, 8, 9, 12, 13]
    if name in ("rgb", "rgbs1"):
        assert s2_idx == [2, 3, 4]


def test_selection_by_band_names_and_errors():
    refs = bands.resolve_bands("b8, B4,vv")
    assert [(r.modality, r.name, r.index) for r in refs] == [("s2", "B8", 7), ("s2", "B4", 3), ("s1", "VV", 0)]
    assert bands.resolve_bands(["B10", "VH"])[0].index == 10
    with pytest.raises(InputError, match="unknown input set 'rgbx'"):
        bands.resolve_bands("rgbx")
    with pytest.raises(InputError, match="unknown band 'B13'"):
        bands.resolve_bands("B2,B13")
    with pytest.raises(InputError, match="twice"):
        bands.resolve_bands("B2,B2")


def test_band_tables():
    assert len(bands.S2_BANDS) == 13 and bands.S2_BANDS[8] == "B8A" and bands.S2_BANDS[-1] == "B12"
    assert bands.S1_BANDS == ("VV", "VH") and len(bands.LC_BANDS) == 4
    assert bands.OFFICIAL_MEAN["B2"] == pytest.approx(1226.4215) and bands.OFFICIAL_STD["VH"] == pytest.approx(4.3586307)
    assert bands.OFFICIAL_MEAN["B12"] == pytest.approx(1356.0801) and bands.OFFICIAL_MEAN["VV"] == pytest.approx(-11.76858)


def test_igbp_tables():
    assert len(igbp.IGBP_NAMES) == 17 and len(igbp.SIMPLE_NAMES) == 10
    assert igbp.IGBP_NAMES[16] == "Water Bodies" and igbp.SIMPLE_NAMES[5] == "Croplands"
    # 12 Croplands and 14 Cropland/Natural Vegetation Mosaics both become simplified 6.
    assert igbp.SIMPLE_OF_FULL[11] == 6 and igbp.SIMPLE_OF_FULL[13] == 6 and igbp.SIMPLE_OF_FULL[12] == 7
    assert igbp.FULL_TO_SIMPLE.sum(axis=0).tolist() == [5, 2, 2, 1, 1, 2, 1, 1, 1, 1]
    assert igbp.DFC2020_OF_IGBP[0] == 0 and igbp.DFC2020_OF_IGBP[17] == 10 and igbp.DFC2020_OF_IGBP[14] == 6
    assert len(igbp.IGBP_COLOURS) == 17 and len(igbp.DFC2020_COLOURS) == 10


def test_probability_from_igbp_band():
    band = np.zeros((4, 4), dtype=np.uint8)
    band[:2] = 4
    band[2, :] = 17
    band[3, :2] = 16
    band[3, 2:] = 0  # no data: not counted
    p = igbp.probability_from_igbp(band)
    assert p.shape == (17,) and p.sum() == pytest.approx(1.0)
    assert p[3] == pytest.approx(8 / 14) and p[16] == pytest.approx(4 / 14) and p[15] == pytest.approx(2 / 14)
    with pytest.raises(InputError, match="outside 0..17: 255"):
        igbp.probability_from_igbp(np.full((2, 2), 255, np.uint8))
    with pytest.raises(InputError, match="no valid"):
        igbp.probability_from_igbp(np.zeros((2, 2), np.uint8))


def test_label_rules_ties_threshold_and_simplification():
    p = np.zeros(17)
    p[[0, 5]] = 0.4  # tie between class 1 and class 6: the first wins
    p[16] = 0.2
    assert igbp.single_label(p) == 1
    simple = igbp.to_simple(p)
    assert simple.tolist() == pytest.approx([0.4, 0.4, 0, 0, 0, 0, 0, 0, 0, 0.2])
    # Summing members: 12 + 14 beat 13 in the simplified scheme but not in the full one.
    q = np.zeros(17)
    q[[11, 13]] = 0.3
    q[12] = 0.4
    assert igbp.single_label(q) == 13 and igbp.single_label(igbp.to_simple(q)) == 6
    assert igbp.one_hot(np.array([1, 10]), 10).tolist()[1] == [0] * 9 + [1]
    r = np.zeros(17)
    r[[2, 3, 4]] = [0.1, 0.0999, 0.8001]
    assert igbp.multi_label(r, 0.1)[2:5].tolist() == [1, 0, 1]  # >=, not >
    rule = igbp.LabelRule("multi_label", "full", 0.1)
    assert rule.targets(r[None]).dtype == np.float32 and rule.num_classes == 17
    rule = igbp.LabelRule("single_label", "simple")
    assert rule.targets(np.stack([p, q])).tolist() == [0, 5]  # 0-based for CrossEntropyLoss
    with pytest.raises(InputError):
        igbp.LabelRule("multi", "simple")


def test_check_probability():
    p = np.full(17, 1 / 17)
    assert igbp.check_probability(p).sum() == pytest.approx(1)
    with pytest.raises(InputError, match="sums to 0.9000"):
        igbp.check_probability(p * 0.9)
    with pytest.raises(InputError, match="16 values"):
        igbp.check_probability(np.ones(16) / 16)


@pytest.mark.parametrize("name", ["ROIs1158_spring_s2_1_p30", "ROIs1158_spring_s2_1_p30.tif",
                                  "/data/ROIs1158_spring/s2_1/ROIs1158_spring_s2_1_p30.tif"])
def test_parse_patch_names(name):
    pid = patches.parse_patch(name)
    assert (pid.season, pid.scene, pid.patch, pid.modality) == ("ROIs1158_spring", 1, 30, "s2")
    assert pid.filename() == "ROIs1158_spring_s2_1_p30.tif"
    assert pid.relpath("s1") == "ROIs1158_spring/s1_1/ROIs1158_spring_s1_1_p30.tif"
    assert pid.relpath("lc") == "ROIs1158_spring/lc_1/ROIs1158_spring_lc_1_p30.tif"
    assert pid.key == "ROIs1158_spring_s2_1_p30" and pid.scene_id.key == "ROIs1158_spring_1"


def test_patch_name_errors_name_the_input():
    for bad in ("ROIs1158_autumn_s2_1_p30.tif", "foo.tif", "ROIs1158_spring_s3_1_p30.tif", "ROIs1158_spring_s2_1.tif"):
        with pytest.raises(InputError, match=bad.replace(".", r"\.")):
            patches.parse_patch(bad)
    assert patches.parse_scene("ROIs1158_spring/s1_63") == patches.SceneId("ROIs1158_spring", 63)
    with pytest.raises(InputError, match="not a SEN12MS scene name"):
        patches.parse_scene("spring/63")


def test_known_broken_triplet():
    assert patches.parse_patch("ROIs1868_summer_s1_146_p202").with_modality("s2").is_known_broken
    assert not patches.parse_patch("ROIs1868_summer_s1_146_p203").is_known_broken


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_restricted_unpickler_loads_data_and_refuses_code(tmp_path):
    good = {"ROIs1158_spring_s2_1_p30.tif": np.arange(17, dtype=np.float64) / 136, "n": [1, 2.5, "x", (3,)]}
    path = tmp_path / "labels.pkl"
    path.write_bytes(pickle.dumps(good, protocol=2))
    loaded = safepickle.load(path)
    assert np.array_equal(loaded["ROIs1158_spring_s2_1_p30.tif"], good["ROIs1158_spring_s2_1_p30.tif"])
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"a": _Evil()}))
    with pytest.raises(UnsafePickleError, match=r"evil\.pkl: refused to load: .*system"):
        safepickle.load(evil)
    broken = tmp_path / "cut.pkl"
    broken.write_bytes(path.read_bytes()[:20])
    with pytest.raises(UnsafePickleError, match=r"cut\.pkl: not a readable pickle"):
        safepickle.load(broken)


def test_real_test_list_pickle_loads_through_the_restricted_unpickler(toolbox_dir):
    names = safepickle.load(toolbox_dir / "test_list.pkl")
    txt = (toolbox_dir / "test_list.txt").read_text().split()
    assert isinstance(names, list) and names == txt and len(names) == 18106


# --- each word of the vocabulary declared once ------------------------------------------------------

def _choices(command, name: str) -> tuple[str, ...]:
    return tuple(next(p for p in command.params if p.name == name).type.choices)


def test_split_names_and_shard_names_are_declared_once():
    from convert.shards import outfolder, verify
    from sen12ms_common.datafiles import read as datafiles
    from sen12ms_common.format import manifest
    from sen12ms_common.vocab import names

    assert manifest.SPLITS is names.SPLITS and datafiles.SPLITS is names.SPLITS
    assert names.SPLITS == ("train", "val", "test") and names.REQUIRED_SPLITS == ("train", "test")
    assert outfolder.SHARD_FILE_RE is names.SHARD_FILE_RE and verify.is_shard_name is names.is_shard_name
    whole = names.shard_name("val", 12)
    part = names.shard_name(f"train-{names.part_tag(3, 16)}", 0)
    assert (whole, part) == ("val-000012.tar", "train-p0003of0016-000000.tar")
    for name, split in ((whole, "val"), (part, "train")):
        m = names.SHARD_FILE_RE.match(name)
        assert m and m["split"] == split and names.is_shard_name(name, split)
        assert names.SHARD_FILE_RE.match(names.index_name(name))["ext"] == "idx"
    for bad in ("val-12.tar", "val-000012.tar.gz", "../val-000012.tar", "train-p3of16-000000.tar", "Val-000012.tar"):
        assert not names.SHARD_FILE_RE.match(bad) and not names.is_shard_name(bad, bad.split("-")[0])
    # A manifest may name other splits; the converter writes only these three.
    assert names.is_shard_name("extra-000000.tar", "extra") and not names.SHARD_FILE_RE.match("extra-000000.tar")


def test_label_types_schemes_devices_and_loaders_come_from_one_place():
    import train.cli.train as train_cli
    import train.cli.evaluate as evaluate_cli
    from sen12ms_common.vocab.names import ALL_SPLITS
    from train.tasks import metrics
    from train.cli import options
    from train.data import LOADERS, RENAMED, loader_names

    assert metrics.LABEL_TYPES is igbp.LABEL_TYPES
    assert _choices(train_cli.main, "label_type") == igbp.LABEL_TYPES == ("single_label", "multi_label")
    assert _choices(train_cli.main, "igbp") == igbp.SCHEMES == ("simple", "full")
    # The loaders by name, then their old names (`webdataset`, now `shards`), which still work.
    assert _choices(train_cli.main, "loader") == tuple(loader_names()) + tuple(RENAMED)
    assert tuple(loader_names()) == tuple(LOADERS)
    assert _choices(train_cli.main, "device") == _choices(evaluate_cli.main, "device") == options.DEVICES
    assert _choices(evaluate_cli.main, "split") == ALL_SPLITS
    # The option check (checkpoints, arguments files) accepts exactly the same words.
    for key, words in (("label_type", igbp.LABEL_TYPES), ("igbp", igbp.SCHEMES), ("device", options.DEVICES),
                       ("loader", tuple(loader_names()) + tuple(RENAMED))):
        assert all(options.CHECKS[key](w) is None for w in words)
        assert options.CHECKS[key]("nonsense") is not None


def test_an_arguments_file_with_an_unknown_label_type_or_scheme_names_the_choices(tmp_path):
    from train.config.argsfile import original_to_options
    from sen12ms_common.errors import InputError

    base = {"model": "ResNet50", "label_type": "multi_label", "input": "s1s2", "igbp": "simple"}
    assert original_to_options(base)["igbp"] == "simple"
    with pytest.raises(InputError, match="label_type must be one of single_label, multi_label, not 'x'"):
        original_to_options({**base, "label_type": "x"})
    with pytest.raises(InputError, match="igbp must be simple or full, not 'x'"):
        original_to_options({**base, "igbp": "x"})
