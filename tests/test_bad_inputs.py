"""Bad inputs to `convert shards`: each one gets a one-line reason naming its file and a line in
report.json (rejected, or warned where the patch is still usable), and every good input is still
converted. Each test asserts the exact reason, path and split bookkeeping."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import rasterio

from convert.datafiles.labels import derive_labels
from convert.shards.scan import scan_tree
from sen12ms_common.format.sample import SampleLayout, decode_sample
from shardtools import decode_all, read_tif, run_shards

pytestmark = pytest.mark.slow  # training runs on bad inputs, in subprocesses

REPO = Path(__file__).resolve().parents[1]


def rewrite(path: Path, data: np.ndarray) -> None:
    """Rewrite a GeoTIFF in place with other pixels (band count, dtype and size may change)."""
    with rasterio.open(path) as ds:
        profile = ds.profile
    profile.update(count=data.shape[0], dtype=data.dtype.name, height=data.shape[1], width=data.shape[2])
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data)


def check_bookkeeping(report: dict, n_inputs: int) -> None:
    """Nothing is lost: inputs = converted + rejected in every split, and in all."""
    for split in report["inputs"]:
        assert report["inputs"][split] == report["converted"][split] + report["rejected_count"][split], split
        assert report["rejected_count"][split] == sum(1 for r in report["rejected"] if r["split"] == split)
    assert sum(report["inputs"].values()) == n_inputs


# --- one tree with one of each bad input -------------------------------------------------------

@pytest.fixture(scope="module")
def bad_tree(tmp_path_factory) -> dict:
    """18 generated triplets; 0-13 are damaged one way each, 14-17 are good. Converted once."""
    from convert.sample.sen12ms import synthesize

    root = tmp_path_factory.mktemp("bad")
    data = root / "sen12ms"
    ids = synthesize(data, scenes=3, patches_per_scene=6, seed=3, progress=False)
    assert len(ids) == 18
    s2 = {i: data / pid.relpath("s2") for i, pid in enumerate(ids)}

    def sib(i: int, m: str) -> Path:
        return data / ids[i].relpath(m)

    os.remove(sib(0, "s1"))                                              # s2 without s1
    os.remove(sib(1, "lc"))                                              # s2 without lc (labels derived)
    rewrite(s2[2], read_tif(s2[2]).astype(np.float32))                   # wrong dtype
    rewrite(sib(3, "s1"), np.concatenate([read_tif(sib(3, "s1"))] * 2)[:3])  # wrong band count
    rewrite(s2[4], read_tif(s2[4])[:, :128, :128])                       # wrong size
    s2[5].write_bytes(s2[5].read_bytes()[: s2[5].stat().st_size // 2])   # truncated
    s1 = read_tif(sib(6, "s1"))
    s1[:, :128] = np.nan                                                 # half NaN: broken S1
    rewrite(sib(6, "s1"), s1)
    s1 = read_tif(sib(7, "s1"))
    s1[0, 10, :3] = [np.nan, np.inf, -np.inf]                            # a few non-finite pixels
    s1[1, 20, :2] = [np.inf, np.nan]
    rewrite(sib(7, "s1"), s1)
    bright = read_tif(s2[8])
    bright[3, :2, :] = 12000                                             # S2 above 10000
    bright[5, 7, 7] = 65535
    rewrite(s2[8], bright)
    lc = read_tif(sib(9, "lc"))
    lc[0, 0, 0] = 255                                                    # IGBP class 255
    rewrite(sib(9, "lc"), lc)
    nodata = read_tif(sib(10, "lc"))
    nodata[0, :4, :] = 0                                                 # IGBP class 0 (no data) in part
    rewrite(sib(10, "lc"), nodata)
    empty = read_tif(sib(11, "lc"))
    empty[0] = 0                                                         # IGBP class 0 everywhere
    rewrite(sib(11, "lc"), empty)
    duplicate = s2[12].with_suffix(".tiff")
    shutil.copyfile(s2[12], duplicate)                                   # duplicate patch id
    os.remove(s2[13])                                                    # s1 and lc without their s2
    stray = s2[14].parent / "notes.txt"
    stray.write_text("not a patch")                                      # a non-SEN12MS file

    out = root / "out"
    result = run_shards(data, out, "--workers", "2", "--max-rejected", "1")  # most inputs are bad here
    report = json.loads((out / "report.json").read_text())
    return dict(data=data, ids=ids, s2=s2, sib=sib, out=out, result=result, report=report, s1_7=s1,
                bright=bright, nodata=nodata, duplicate=duplicate, stray=stray)


def test_every_bad_input_is_rejected_with_its_file_and_reason(bad_tree):
    ids, s2, sib, report = bad_tree["ids"], bad_tree["s2"], bad_tree["sib"], bad_tree["report"]
    key = {i: pid.key for i, pid in enumerate(ids)}
    rejected = {r["id"]: (r["reason"], r["path"]) for r in report["rejected"]}
    half_s2 = s2[5].stat().st_size
    assert half_s2 < 1_706_432 // 2 + 1
    truncated_reason = rejected[key[5]][0]
    assert truncated_reason.startswith(f"{s2[5]}: truncated or damaged GeoTIFF (") and truncated_reason.endswith(")")
    stem = ids[12].filename().removesuffix(".tif")
    assert rejected == {
        key[0]: (f"missing sibling {ids[0].relpath('s1')}", str(s2[0])),
        key[1]: (f"missing sibling {ids[1].relpath('lc')}", str(s2[1])),
        key[2]: (f"{s2[2]}: dtype float32, a SEN12MS s2 patch is uint16", str(s2[2])),
        key[3]: (f"{sib(3, 's1')}: 3 bands, a SEN12MS s1 patch has 2", str(sib(3, "s1"))),
        key[4]: (f"{s2[4]}: size 128 x 128, expected 256 x 256", str(s2[4])),
        key[5]: (truncated_reason, str(s2[5])),
        key[6]: (f"{sib(6, 's1')}: broken S1: S1 holds 65536 non-finite pixels (50.0%), more than 1%",
                 str(sib(6, "s1"))),
        key[9]: (f"no label: {sib(9, 'lc')}: IGBP values outside 0..17: 255", str(sib(9, "lc"))),
        key[11]: (f"no label: {sib(11, 'lc')}: no valid IGBP pixel (all 0 = no data)", str(sib(11, "lc"))),
        key[12]: (f"duplicate patch id {stem} (also at {bad_tree['duplicate']}); "
                  f"duplicate patch id {stem} (also at {s2[12]})", str(s2[12])),
        key[13]: (f"lc patch without its s2 sibling {ids[13].relpath('s2')}; "
                  f"s1 patch without its s2 sibling {ids[13].relpath('s2')}", str(sib(13, "lc"))),
    }


def test_usable_oddities_are_converted_and_warned_with_their_file(bad_tree):
    ids, s2, sib, report = bad_tree["ids"], bad_tree["s2"], bad_tree["sib"], bad_tree["report"]
    samples = decode_all(bad_tree["out"])
    split_of = {k: s["split"] for k, s in samples.items()}
    k7, k8, k10 = ids[7].key, ids[8].key, ids[10].key
    zeros = 4 * 256
    assert report["warnings"] == sorted([
        {"id": "", "split": "", "path": str(bad_tree["stray"]),
         "reason": "not a SEN12MS patch name: 'notes.txt' (expected e.g. ROIs1158_spring_s2_1_p30.tif)"},
        {"id": k7, "split": split_of[k7], "path": str(sib(7, "s1")),
         "reason": "S1 holds 5 non-finite pixels (0.0%); stored as 0 dB (NaN, +inf) and -25 dB (-inf)"},
        {"id": k8, "split": split_of[k8], "path": str(s2[8]),
         "reason": "S2 holds 513 values above 10000 (max 65535); stored unchanged"},
        {"id": k10, "split": split_of[k10], "path": str(sib(10, "lc")),
         "reason": f"IGBP band holds {zeros} no-data pixels (class 0); the label is the share of the other "
                   f"{256 * 256 - zeros} pixels"},
    ], key=lambda r: (r["split"], r["id"], r["reason"]))
    # NaN and +inf are stored as 0 dB (the top code), -inf as -25 dB (code 0).
    assert samples[k7]["s1"][0, 10, :3].tolist() == [65535, 65535, 0]
    assert samples[k7]["s1"][1, 20, :2].tolist() == [65535, 65535]
    assert np.array_equal(samples[k8]["s2"], bad_tree["bright"])  # bright values kept bit for bit
    # The label of a patch with no-data pixels is the share of its valid pixels.
    igbp = bad_tree["nodata"][0]
    valid = igbp[igbp > 0]
    want = np.bincount(valid, minlength=18)[1:] / valid.size
    assert np.array_equal(samples[k10]["label"], want.astype(np.float32))
    assert samples[k10]["meta"]["label"] == pytest.approx(want.tolist(), abs=1e-15)


def test_good_inputs_are_all_converted_and_nothing_is_lost(bad_tree):
    ids, report = bad_tree["ids"], bad_tree["report"]
    samples = decode_all(bad_tree["out"])
    converted = {ids[i].key for i in (7, 8, 10, 14, 15, 16, 17)}
    assert set(samples) == converted
    check_bookkeeping(report, 18)
    assert sum(report["converted"].values()) == 7 and len(report["rejected"]) == 11
    for r in report["rejected"]:
        assert r["split"] in report["inputs"], r
    # The summary lists every rejection (one line each) and inputs = converted + rejected.
    out = bad_tree["result"].output
    assert "\ntotal             18          7        11\n" in out
    for r in report["rejected"]:
        assert f"  [{r['split']}] {r['id']}: {r['reason']}\n" in out
    assert f"warnings: 4 (listed in {bad_tree['out'] / 'report.json'})\n" in out


# --- label files ---------------------------------------------------------------------------------

def test_a_label_file_missing_a_patch_or_with_a_vector_not_summing_to_1_rejects_those_samples(tmp_path):
    from convert.sample.sen12ms import synthesize

    data = tmp_path / "sen12ms"
    synthesize(data, scenes=2, patches_per_scene=3, seed=4, progress=False)
    labels, _ = derive_labels(scan_tree(str(data)).triplets, workers=1, progress=False)
    names = sorted(labels)
    labels_json = {n: labels[n].tolist() for n in names[1:]}      # names[0] has no label
    labels_json[names[1]] = (labels[names[1]] * 0.5).tolist()     # sums to 0.5
    labels_json[names[2]] = (labels[names[2]] + 0.01).tolist()    # sums to 1.17
    labels_file = tmp_path / "labels.json"
    labels_file.write_text(json.dumps(labels_json))
    splits = tmp_path / "splits"
    splits.mkdir()
    (splits / "train_list.txt").write_text("".join(n + "\n" for n in names[:4]))
    (splits / "test_list.txt").write_text(names[4] + "\nROIs1970_fall_s2_99_p1.tif\n")  # one not in the tree
    out = tmp_path / "out"
    run_shards(data, out, "--labels", str(labels_file), "--splits", str(splits), "--workers", "1",
               "--max-rejected", "1")
    report = json.loads((out / "report.json").read_text())
    k = [n[:-4] for n in names]
    assert {r["id"]: (r["split"], r["reason"]) for r in report["rejected"]} == {
        k[0]: ("train", f"no label for {names[0]} in {labels_file}"),
        k[1]: ("train", f"label in {labels_file}: probability vector sums to 0.5000, not 1"),
        k[2]: ("train", f"label in {labels_file}: probability vector sums to 1.1700, not 1"),
        k[5]: ("unassigned", "in no split list"),
    }
    assert report["inputs"] == {"train": 4, "val": 0, "test": 1, "unassigned": 1}
    assert report["converted"] == {"train": 1, "val": 0, "test": 1, "unassigned": 0}
    assert {"id": "ROIs1970_fall_s2_99_p1", "split": "test", "path": "",
            "reason": "listed in the test split but not found in the tree"} in report["warnings"]
    assert sorted(decode_all(out)) == [k[3], k[4]]
    check_bookkeeping(report, 6)


# --- the encoding policy per sample --------------------------------------------------------------

def test_encode_policy_for_inf_s1_and_stored_lc(tmp_path):
    from convert.shards.encode import Encoded, Failed, encode_entry
    from convert.shards.plan import PlanEntry
    from convert.sample.sen12ms import synthesize

    data = tmp_path / "sen12ms"
    pid = synthesize(data, scenes=1, patches_per_scene=1, seed=8, progress=False)[0]
    paths = {m: str(data / pid.relpath(m)) for m in ("s2", "s1", "lc")}
    s1 = read_tif(Path(paths["s1"]))
    s1[0, 0, :3] = [np.inf, -np.inf, np.nan]
    rewrite(Path(paths["s1"]), s1)
    lc = read_tif(Path(paths["lc"]))
    lc[0, 5, :7] = 0
    rewrite(Path(paths["lc"]), lc)
    layout = SampleLayout(modalities=("s2", "s1", "lc"))
    entry = PlanEntry(pid.key, "train", paths, tuple([1.0] + [0.0] * 16))
    got = encode_entry(entry, layout, with_stats=True)
    assert isinstance(got, Encoded)
    assert got.warnings == [
        (paths["s1"], "S1 holds 3 non-finite pixels (0.0%); stored as 0 dB (NaN, +inf) and -25 dB (-inf)"),
        (paths["lc"], "IGBP band holds 7 no-data pixels (class 0); stored unchanged"),
    ]
    out = decode_sample(got.members, layout)
    assert out["s1"][0, 0, :3].tolist() == [65535, 0, 65535]
    assert np.array_equal(out["lc"], lc)
    assert sorted(got.stats) == sorted(["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11",
                                        "B12", "VV", "VH"])
    lc[0, 9, 9] = 255
    rewrite(Path(paths["lc"]), lc)
    failed = encode_entry(entry, layout, with_stats=False)
    assert failed == Failed(pid.key, f"{paths['lc']}: IGBP band holds values outside 0..17: 255", paths["lc"])


# --- unreadable files and folders ------------------------------------------------------------------

NOBODY = 65534


def _unprivileged() -> list[str]:
    """A command prefix that runs a process without the right to read a mode-000 file: as root,
    setpriv to uid/gid 65534 (root reads anything, so chmod alone proves nothing); else nothing."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: no way to make a file unreadable to the converter")
    probe = subprocess.run([setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "true"],
                           capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"setpriv cannot drop privileges here: {probe.stderr.decode(errors='replace').strip()}")
    return [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]


def test_unreadable_files_and_folders_are_reported_by_name_and_the_rest_converted():
    from convert.sample.sen12ms import synthesize

    prefix = _unprivileged()
    # pytest's tmp_path sits in a folder only its owner may enter: use a world-readable one.
    base = Path(tempfile.mkdtemp(prefix="sen12ms-unreadable-"))
    try:
        base.chmod(0o755)
        data = base / "sen12ms"
        ids = synthesize(data, scenes=3, patches_per_scene=3, seed=5, progress=False)
        for path in [data, *data.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        s2_file = data / ids[0].relpath("s2")
        lc_file = data / ids[1].relpath("lc")
        s1_folder = (data / ids[8].relpath("s1")).parent  # the s1 folder of the third scene
        third = [i for i, pid in enumerate(ids) if pid.scene_id == ids[8].scene_id]
        assert ids[0].scene_id != ids[8].scene_id != ids[1].scene_id and len(third) == 3
        for path in (s2_file, lc_file, s1_folder):
            path.chmod(0o000)
        out = base / "out"
        out.mkdir()
        out.chmod(0o777)
        env = dict(os.environ, HOME=str(base))
        proc = subprocess.run([*prefix, sys.executable, "-m", "convert", "shards", "--data", str(data),
                               "--out", str(out / "shards"), "--workers", "1", "--no-progress", "--max-rejected", "1"],
                              cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        report = json.loads((out / "shards" / "report.json").read_text())
        rejected = {r["id"]: (r["reason"], r["path"]) for r in report["rejected"]}
        expected = {
            ids[0].key: (f"{s2_file}: cannot read: permission denied", str(s2_file)),
            ids[1].key: (f"no label: {lc_file}: cannot read: permission denied", str(lc_file)),
        }
        for i in third:  # its s1 files could not be listed: the triplets lack a sibling
            expected[ids[i].key] = (f"missing sibling {ids[i].relpath('s1')}", str(data / ids[i].relpath("s2")))
        assert rejected == expected
        assert {"id": "", "split": "", "path": str(s1_folder),
                "reason": "cannot read this folder (Permission denied): the patches in it are not converted"
                } in report["warnings"]
        check_bookkeeping(report, 9)
        assert sum(report["converted"].values()) == 9 - 2 - 3
        assert f"{ids[0].key}: {s2_file}: cannot read: permission denied" in proc.stdout
    finally:
        for path in (base, *base.rglob("*")):
            try:
                path.chmod(0o755)
            except OSError:
                pass
        shutil.rmtree(base, ignore_errors=True)
