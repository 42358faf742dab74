"""The DFC2020 data layout: names, the scanner, the generated sample tree (issue 16, item 5)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from click.testing import CliRunner

from convert.cli import cli
from convert.shards.scan import scan_tree
from sen12ms_common.errors import InputError
from sen12ms_common.vocab.dfc import DfcScheme, dfc_to_train, igbp_to_dfc
from sen12ms_common.vocab.patches import PatchId, parse_dfc2020_patch, parse_patch
from train.tasks.segmetrics import ConfusionMatrix

# The folders of the contest data as the baseline's README lists them.
FOLDERS = {"ROIs0000_validation": ("s1_validation", "s2_validation", "lc_validation", "dfc_validation"),
           "ROIs0000_test": ("s1_0", "s2_0", "lc_0", "dfc_0")}
FORMAT = {"s1": ("float32", 2), "s2": ("uint16", 13), "lc": ("uint8", 4), "dfc": ("uint8", 1)}


@pytest.fixture(scope="module")
def dfc_tree(tmp_path_factory) -> Path:
    """`python -m convert synth --layout dfc2020`: 4 regions x 4 patches (2 validation, 2 test)."""
    root = tmp_path_factory.mktemp("dfc") / "dfc2020"
    result = CliRunner().invoke(cli, ["synth", "--layout", "dfc2020", "--out", str(root), "--scenes", "4",
                                      "--patches-per-scene", "4", "--seed", "0"])
    assert result.exit_code == 0, result.output
    assert "wrote 16 DFC2020 patches" in result.output
    return root


def _read(path: str | Path, band: int | None = None) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(band) if band else ds.read()


def test_names_and_paths_as_the_baseline_finds_them():
    pid = parse_dfc2020_patch("ROIs0000_validation_s2_0_p123.tif")
    assert pid == PatchId("ROIs0000_validation", 0, 123, "s2")
    assert pid.relpath() == "ROIs0000_validation/s2_validation/ROIs0000_validation_s2_0_p123.tif"
    test = parse_dfc2020_patch("some/where/ROIs0000_test_dfc_0_p5127")
    assert test.relpath() == "ROIs0000_test/dfc_0/ROIs0000_test_dfc_0_p5127.tif"
    assert test.key == "ROIs0000_test_s2_0_p5127"
    # The baseline's DFC2020 class finds the siblings of an s2 path by string replacement.
    for s2 in (pid.relpath(), test.with_modality("s2").relpath()):
        sid = parse_dfc2020_patch(s2)
        assert sid.relpath("s1") == s2.replace("_s2_", "_s1_").replace("s2_", "s1_")
        assert sid.relpath("dfc") == s2.replace("_dfc_", "_lc_").replace("s2_", "dfc_")
        assert sid.relpath("lc") == s2.replace("s2_", "lc_")
    assert pid.with_modality("dfc").filename() == "ROIs0000_validation_dfc_0_p123.tif"
    # SEN12MS names are unchanged: no dfc member, and parse_patch does not take DFC2020 names.
    with pytest.raises(InputError, match="unknown modality 'dfc'"):
        parse_patch("ROIs1158_spring_s2_1_p30").with_modality("dfc")
    with pytest.raises(InputError, match="not a SEN12MS patch name"):
        parse_patch("ROIs0000_test_s2_0_p1.tif")
    with pytest.raises(InputError, match="not a DFC2020 patch name"):
        parse_dfc2020_patch("ROIs0000_train_s2_0_p1.tif")


def test_generated_tree_has_the_contest_layout_and_formats(dfc_tree):
    assert sorted(p.name for p in dfc_tree.iterdir()) == sorted([*FOLDERS, "SYNTHETIC_SAMPLE_DATA.txt"])
    for season, folders in FOLDERS.items():
        assert sorted(p.name for p in (dfc_tree / season).iterdir()) == sorted(folders)
        for folder in folders:
            mod = folder.split("_")[0]
            names = sorted(p.name for p in (dfc_tree / season / folder).iterdir())
            assert names == sorted(f"{season}_{mod}_0_p{i}.tif" for i in range(8))  # numbered from 0
    for pid in (PatchId("ROIs0000_validation", 0, 7), PatchId("ROIs0000_test", 0, 0)):
        refs = {}
        for mod, (dtype, count) in FORMAT.items():
            with rasterio.open(dfc_tree / pid.relpath(mod)) as ds:
                assert (ds.dtypes[0], ds.count, ds.width, ds.height) == (dtype, count, 256, 256)
                assert ds.compression is None and ds.profile["tiled"] is False
                assert count == 1 or ds.profile["interleave"] == "pixel"
                refs[mod] = (ds.crs, ds.transform)
        assert len(set(refs.values())) == 1  # the members of a patch overlay each other


def test_masks_are_dfc_classes_consistent_with_lc(dfc_tree):
    scan = scan_tree(str(dfc_tree), dfc2020=True)
    seen = set()
    for t in scan.triplets:
        dfc = _read(t.paths["dfc"], 1)
        seen |= set(np.unique(dfc).tolist())
        # The 10 m mask and the 500 m IGBP cells agree except where s2 shows a finer structure.
        assert (igbp_to_dfc(_read(t.paths["lc"], 1)).astype(int) + 1 == dfc).mean() > 0.8
    assert seen <= set(range(1, 11)) - {3, 8} and len(seen) >= 3  # neither savanna nor snow, as DFC2020


@pytest.mark.slow
def test_the_scanner_recognises_the_layout(dfc_tree, sample_tree, tmp_path):
    scan = scan_tree(str(dfc_tree), dfc2020=True)
    assert scan.problems == [] and len(scan.triplets) == 16
    assert all(sorted(t.paths) == ["dfc", "lc", "s1", "s2"] for t in scan.triplets)
    assert sorted(t.key for t in scan.triplets)[0] == "ROIs0000_test_s2_0_p0"
    # Without asking for DFC2020 the scanner is unchanged: every file is a problem.
    plain = scan_tree(str(dfc_tree))
    assert plain.triplets == [] and len(plain.problems) == 64
    assert all("not a SEN12MS patch name" in p.reason for p in plain.problems)
    # One root holding both layouts; a misplaced mask and an incomplete patch are reported / kept.
    both = tmp_path / "both"
    shutil.copytree(sample_tree, both)
    shutil.copytree(dfc_tree, both, dirs_exist_ok=True)
    wrong = both / "ROIs0000_validation" / "dfc_0"
    wrong.mkdir()
    (both / "ROIs0000_validation/dfc_validation/ROIs0000_validation_dfc_0_p3.tif").rename(
        wrong / "ROIs0000_validation_dfc_0_p3.tif")
    (both / "ROIs0000_test/dfc_0/ROIs0000_test_dfc_0_p1.tif").unlink()
    (both / "ROIs0000_test/notes.txt").write_text("x")
    mixed = scan_tree(str(both), dfc2020=True)
    assert len(mixed.triplets) == len(scan_tree(str(sample_tree)).triplets) + 16
    reasons = {Path(p.path).name: p.reason for p in mixed.problems}
    assert "wrong folder" in reasons["ROIs0000_validation_dfc_0_p3.tif"]
    assert "ROIs0000_validation/dfc_validation/" in reasons["ROIs0000_validation_dfc_0_p3.tif"]
    assert "not a SEN12MS or DFC2020 patch name" in reasons["notes.txt"]
    incomplete = next(t for t in mixed.triplets if t.key == "ROIs0000_test_s2_0_p1")
    assert mixed.missing(incomplete, ("s1", "s2", "dfc")) == ["dfc"]


@pytest.mark.slow
def test_same_seed_same_tree_and_refusals(dfc_tree, tmp_path):
    again = tmp_path / "again"
    runner = CliRunner()
    args = ["synth", "--layout", "dfc2020", "--out", str(again), "--scenes", "4", "--patches-per-scene", "4"]
    assert runner.invoke(cli, args).exit_code == 0
    digest = lambda root: {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
                           for p in sorted(root.rglob("*.tif"))}
    assert digest(again) == digest(dfc_tree)
    refused = runner.invoke(cli, args + ["--broken"])
    assert refused.exit_code == 2 and "not with --layout dfc2020" in refused.output


@pytest.mark.slow
def test_a_model_of_the_sample_trees_lc_scores_on_the_dfc_masks(sample_tree, dfc_tree):
    """A per-pixel nearest-centroid model fitted on the SEN12MS sample tree's lc (mapped to DFC2020
    classes) recognises, in the DFC2020 tree, each class it has seen."""
    bands = [1, 2, 3, 4, 5, 6, 7, 8, 11, 12]  # the 10 S2 bands, 0-based
    scheme = DfcScheme(savanna=True)
    sums, counts = np.zeros((scheme.num_classes, 10)), np.zeros(scheme.num_classes)
    for t in scan_tree(str(sample_tree)).triplets:
        x = _read(t.paths["s2"])[bands].reshape(10, -1).astype(np.float64)
        y = igbp_to_dfc(_read(t.paths["lc"], 1)).ravel()
        for c in np.unique(y[y != 255]):
            sums[c] += x[:, y == c].sum(axis=1)
            counts[c] += (y == c).sum()
    centroids = sums / np.maximum(counts, 1)[:, None]
    acc = ConfusionMatrix(scheme.num_classes)
    for t in scan_tree(str(dfc_tree), dfc2020=True).triplets:
        x = _read(t.paths["s2"])[bands].reshape(10, -1).astype(np.float64)
        dist = ((x[None] - centroids[:, :, None]) ** 2).sum(axis=1)
        dist[counts == 0] = np.inf
        pred = torch.from_numpy(dist.argmin(axis=0).reshape(1, 256, 256))
        acc.update(torch.from_numpy(dfc_to_train(_read(t.paths["dfc"], 1))[None]), pred)
    scores = acc.scores(scheme.names)
    shared = [c for c in range(scheme.num_classes) if counts[c] > 0 and sum(scores["confusion"][c]) > 0]
    assert len(shared) >= 2, scores
    for c in shared:
        assert scores["recall"][c] > 0.75, (scheme.names[c], scores["recall"])
