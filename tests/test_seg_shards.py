"""`convert shards` of DFC2020 trees (issue 16): the layout recognised by its folders, the splits
dfc2020_val / dfc2020_test with the dfc masks and no labels, converted together with a SEN12MS
tree into one OUT; the manifest says which mask each split carries."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import rasterio

from convert.shards.scan import scan_tree
from segdata import band1, convert_both, make_trees, read_all, run_convert
from sen12ms_common.format.manifest import load_manifest
from sen12ms_common.format.sample import LABEL_EXT, decode_sample, dequantize_s1
from sen12ms_common.vocab.patches import parse_any_patch

pytestmark = pytest.mark.slow  # conversions of generated trees


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> tuple[Path, Path]:
    return make_trees(tmp_path_factory.mktemp("segtrees"))


@pytest.fixture(scope="module")
def both(trees, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("segshards") / "shards"
    proc = convert_both(*trees, out)
    assert "dfc2020_val" in proc.stdout and "dfc2020_test" in proc.stdout
    return out


def samples(out: Path, split: str) -> dict[str, dict[str, bytes]]:
    """key -> members of every sample of a split, read with tarfile (not our reader)."""
    found: dict[str, dict[str, bytes]] = {}
    for entry in load_manifest(str(out)).shards(split):
        with tarfile.open(out / entry.name) as tar:
            for m in tar.getmembers():
                key, ext = m.name.split(".", 1)
                found.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return found


def test_both_trees_in_one_out_with_the_mask_of_each_split(trees, both):
    sen, dfc = trees
    m = load_manifest(str(both))
    assert list(m.layout.modalities) == ["s2", "s1", "lc"] and m.layout.labels
    assert {s: m.samples(s) for s in m.splits} == {"train": 8, "val": 4, "test": 4, "dfc2020_val": 6,
                                                    "dfc2020_test": 6}
    doc = json.loads((both / "manifest.json").read_text())
    assert {s: v["mask"] for s, v in doc["splits"].items()} == {"train": "lc", "val": "lc", "test": "lc",
                                                                "dfc2020_val": "dfc", "dfc2020_test": "dfc"}
    for split in ("dfc2020_val", "dfc2020_test"):
        layout = m.layout_of(split)
        assert layout.modalities == ("s2", "s1", "dfc") and not layout.labels
        assert doc["splits"][split]["layout"]["members"]["dfc"]["ext"] == "dfc.zst"
        assert "label" not in doc["splits"][split]["layout"]["members"]
    assert "layout" not in doc["splits"]["train"]
    report = json.loads((both / "report.json").read_text())
    assert report["rejected"] == [] and report["converted"]["dfc2020_test"] == 6
    proc = run_convert("verify", str(both), "--no-progress")
    assert proc.returncode == 0 and "OK: " in proc.stdout, proc.stdout + proc.stderr


def test_dfc_masks_equal_the_geotiff_band_and_samples_carry_no_label(trees, both):
    sen, dfc = trees
    m = load_manifest(str(both))
    for split, subset in (("dfc2020_val", "ROIs0000_validation"), ("dfc2020_test", "ROIs0000_test")):
        got = samples(both, split)
        want = sorted(p.name[:-4] for p in (dfc / subset).glob("s2_*/*.tif"))
        assert sorted(got) == want and len(want) == 6
        for key, members in got.items():
            assert sorted(members) == ["dfc.zst", "dfc.zstsizes", "json", "s1.zst", "s1.zstsizes", "s2.zst",
                                       "s2.zstsizes"]
            out = decode_sample(members, m.layout_of(split))
            pid = parse_any_patch(key)
            assert out["dfc"].dtype == np.uint8 and out["dfc"].shape == (1, 256, 256)
            assert np.array_equal(out["dfc"][0], band1(dfc / pid.relpath("dfc")))
            assert np.array_equal(out["s2"], read_all(dfc / pid.relpath("s2")))
            s1 = read_all(dfc / pid.relpath("s1"))
            assert np.abs(dequantize_s1(out["s1"]) - np.clip(s1, -25, 0)).max() < 2e-4
            assert "label" not in out and "label" not in out["meta"] and out["meta"]["season"] == subset


def test_sen12ms_samples_keep_lc_and_labels(trees, both):
    sen, _ = trees
    m = load_manifest(str(both))
    got = samples(both, "train")
    for key, members in got.items():
        assert LABEL_EXT in members and "lc.zst" in members and "dfc.zst" not in members
        out = decode_sample(members, m.layout_of("train"))
        assert np.array_equal(out["lc"], read_all(sen / parse_any_patch(key).relpath("lc")))
        assert out["label"].shape == (17,)


def test_a_dfc2020_tree_alone_and_its_bad_patches(trees, tmp_path):
    """Default modalities (s1, s2): the dfc mask is stored all the same; a mask value above 10 and
    a missing s1 are rejected with their reasons, a class-0 pixel warned."""
    _, dfc = trees
    tree = tmp_path / "dfc2020"
    shutil.copytree(dfc, tree)
    s2s = sorted(scan_tree(str(tree), dfc2020=None).triplets, key=lambda t: t.key)
    bad, gone, zero = s2s[0].id, s2s[1].id, s2s[2].id
    for pid, value in ((bad, 12), (zero, 0)):
        path = tree / pid.relpath("dfc")
        with rasterio.open(path, "r+") as ds:
            arr = ds.read()
            arr[0, 5, 7] = value
            ds.write(arr)
    (tree / gone.relpath("s1")).unlink()
    out = tmp_path / "out"
    proc = run_convert("shards", "--data", str(tree), "--out", str(out), "--workers", "1", "--no-progress",
                       "--max-rejected", "0.5")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    m = load_manifest(str(out))
    assert m.samples("train") == m.samples("val") == m.samples("test") == 0
    assert m.samples("dfc2020_val") + m.samples("dfc2020_test") == 10
    assert m.layout_of("dfc2020_val").modalities == ("s2", "s1", "dfc")
    report = json.loads((out / "report.json").read_text())
    reasons = {r["id"]: r["reason"] for r in report["rejected"]}
    assert reasons[bad.key].endswith("DFC2020 band holds values outside 0..10: 12")
    assert reasons[gone.key] == f"missing sibling {gone.relpath('s1')}"
    warned = [w for w in report["warnings"] if w["id"] == zero.key]
    assert warned and warned[0]["reason"] == "DFC2020 band holds 1 pixels without a class (0); stored unchanged"


def test_parts_refuse_a_dfc2020_tree_in_one_line(trees, tmp_path):
    sen, dfc = trees
    proc = run_convert("shards", "--data", str(sen), "--data", str(dfc), "--out", str(tmp_path / "out"),
                       "--part", "1/2", "--no-progress")
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "a DFC2020 patch; a conversion in parts (--part) takes SEN12MS trees only" in lines[0]


def test_the_same_tree_twice_is_refused(trees, tmp_path):
    _, dfc = trees
    proc = run_convert("shards", "--data", str(dfc), "--data", str(dfc), "--out", str(tmp_path / "out"),
                       "--no-progress")
    assert proc.returncode == 1 and "is also in another --data tree" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_resume_of_a_finished_conversion_of_both_keeps_everything(trees, both, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(both, out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.suffix == ".tar"}
    proc = convert_both(*trees, out, "--resume")
    assert "resuming: keeping" in proc.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.suffix == ".tar"} == before
    assert (out / "manifest.json").read_text() == (both / "manifest.json").read_text()


def test_resume_after_a_stop_inside_a_dfc2020_split_gives_the_same_bytes(trees, both, tmp_path):
    """What a run stopped after dfc2020_val's first shards leaves (its committed shards, no later
    split, no manifest): --resume keeps those, writes the rest, and every byte equals one run's."""
    out = tmp_path / "stopped"
    shutil.copytree(both, out)
    m = load_manifest(str(both))
    kept = m.shards("dfc2020_val")[:2]
    for entry in m.shards("dfc2020_val")[2:] + m.shards("dfc2020_test"):
        for name in (entry.name, entry.index, f".parts/{entry.name[:-4]}.json"):
            (out / name).unlink()
    for name in (".parts/dfc2020_val.end.json", ".parts/dfc2020_test.end.json", "manifest.json", "report.json"):
        (out / name).unlink()
    stamps = {e.name: (out / e.name).stat().st_mtime_ns for e in kept}
    proc = convert_both(*trees, out, "--resume")
    n_kept = sum(len(m.shards(s)) for s in ("train", "val", "test")) + len(kept)
    assert f"resuming: keeping {n_kept} finished shard(s)" in proc.stderr
    files = sorted(p.name for p in both.iterdir() if p.is_file())
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == files
    assert all((out / f).read_bytes() == (both / f).read_bytes() for f in files)
    assert {name: (out / name).stat().st_mtime_ns for name in stamps} == stamps  # kept, not rewritten
