"""`convert shards`: round trips, labels, determinism, resume, report, statistics, index files."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from convert.cli import cli
from convert.labels import derive_labels
from convert.plan import parse_size, shuffle_order
from convert.scan import scan_tree
from sen12ms_common.manifest import load_manifest
from sen12ms_common.shardformat import S1_STEP, SampleLayout, clean_s1, decode_sample, dequantize_s1

REPO = Path(__file__).resolve().parents[1]
SHARD_SIZE = "3MB"  # a few samples per shard: several shards per split on the sample tree


def run_shards(data: Path, out: Path, *args: str, ok: bool = True):
    result = CliRunner().invoke(cli, ["shards", "--data", str(data), "--out", str(out), "--no-progress", *args])
    if ok:
        assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def read_tif(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read()


def decode_all(out: Path) -> dict[str, dict]:
    """key -> decoded sample (plus its split and shard), read with tarfile and the format's decoder."""
    manifest = load_manifest(str(out))
    samples: dict[str, dict] = {}
    for split, shards in manifest.splits.items():
        for entry in shards:
            groups: dict[str, dict[str, bytes]] = {}
            with tarfile.open(out / entry.name) as tar:
                for info in tar:
                    key, _, ext = info.name.partition(".")
                    groups.setdefault(key, {})[ext] = tar.extractfile(info).read()
            for key, members in groups.items():
                assert key not in samples
                samples[key] = dict(decode_sample(members, manifest.layout), split=split, shard=entry.name)
    return samples


def all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def converted(sample_tree: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards") / "out"
    run_shards(sample_tree, out, "--workers", "1", "--shard-size", SHARD_SIZE)
    return out


def check_round_trip(out: Path, source_of) -> dict[str, dict]:
    """Every sample: S2 and lc bit-exact, S1 within half a quantisation step of the cleaned input."""
    samples = decode_all(out)
    assert samples
    for key, s in samples.items():
        paths = source_of(key)
        if "s2" in s:
            src = read_tif(paths["s2"])
            assert s["s2"].dtype == np.uint16 and np.array_equal(s["s2"], src), key
        if "s1" in s:
            want = clean_s1(read_tif(paths["s1"])).astype(np.float64)
            err = np.abs(dequantize_s1(s["s1"], np.float64) - want).max()
            assert err <= S1_STEP / 2 + 1e-12, (key, err)
        if "lc" in s:
            assert s["lc"].dtype == np.uint8 and np.array_equal(s["lc"], read_tif(paths["lc"])), key
    return samples


def tree_paths(root: Path):
    triplets = {t.key: t.paths for t in scan_tree(str(root)).triplets}
    return lambda key: {m: Path(p) for m, p in triplets[key].items()}


# --- round trips ---------------------------------------------------------------------------------

@pytest.mark.parametrize("codec", ["zstd", "lz4", "none"])
def test_sample_tree_round_trips_for_every_codec(sample_tree, tmp_path, codec):
    out = tmp_path / "out"
    run_shards(sample_tree, out, "--codec", codec, "--modalities", "s1,s2,lc", "--workers", "1", "--shard-size", "8MB")
    samples = check_round_trip(out, tree_paths(sample_tree))
    assert len(samples) == 47  # 48 triplets less the known broken one
    manifest = load_manifest(str(out))
    assert manifest.layout == SampleLayout(codec=codec, level={"zstd": 3}.get(codec, 0), modalities=("s2", "s1", "lc"))
    names = {n for n in os.listdir(out) if n.endswith(".tar")}
    ext = {"zstd": "zst", "lz4": "lz4", "none": "raw"}[codec]
    with tarfile.open(out / sorted(names)[0]) as tar:
        exts = sorted({m.name.split(".", 1)[1] for m in tar})
    expected = sorted([f"s2.{ext}", f"s1.{ext}", f"lc.{ext}", "label.f32", "json"]
                      + (["s2.lz4sizes", "s1.lz4sizes", "lc.lz4sizes"] if codec == "lz4" else []))
    assert exts == expected


def _write_like(src: Path, dst: Path, data: np.ndarray) -> None:
    """A generated member written with the georeference of a real one, in the SEN12MS file layout."""
    with rasterio.open(src) as ds:
        crs, transform = ds.crs, ds.transform
    dst.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(dst, "w", driver="GTiff", width=256, height=256, count=data.shape[0], dtype=data.dtype.name,
                       crs=crs, transform=transform, interleave="pixel", tiled=False, compress="none") as ds:
        ds.write(data)


def real_tree(real_dir: Path, root: Path) -> dict[str, dict[str, str]]:
    """The real patches under SEN12MS names, completed with generated siblings; key -> origin of each member."""
    rng = np.random.default_rng(5)
    real = {  # S2 key -> the real files of that triplet
        "ROIs1158_spring_s2_101_p30": {"s2": "sen12mscr_ROIs1158_spring_s2_101_p30.tif",
                                       "s1": "sen12mscr_ROIs1158_spring_s1_101_p30.tif"},
        "ROIs1158_spring_s2_101_p31": {"s2": "sen12mscr_ROIs1158_spring_s2_101_p31.tif"},
        "ROIs1158_spring_s2_15_p30": {"s2": "sen12mscr_ROIs1158_spring_s2_15_p30.tif"},
        "ROIs1158_spring_s2_1_p30": {"s1": "ROIs1158_spring_s1_1_p30.tif", "lc": "ROIs1158_spring_lc_1_p30.tif"},
        "ROIs1868_summer_s2_19_p30": {"s1": "sen12mscr_ROIs1868_summer_s1_19_p30.tif"},
    }
    from sen12ms_common.patches import parse_patch

    origin = {}
    for key, files in real.items():
        pid = parse_patch(key)
        some_real = real_dir / next(iter(files.values()))
        origin[key] = {}
        for m in ("s2", "s1", "lc"):
            dst = root / pid.relpath(m)
            dst.parent.mkdir(parents=True, exist_ok=True)
            if m in files:
                shutil.copyfile(real_dir / files[m], dst)
                origin[key][m] = "real"
                continue
            if m == "s2":
                data = rng.integers(1, 6000, (13, 256, 256)).astype(np.uint16)
            elif m == "s1":
                data = rng.uniform(-30, 1, (2, 256, 256)).astype(np.float32)
            else:
                igbp = np.repeat(np.repeat(rng.integers(1, 18, (8, 8)), 32, 0), 32, 1).astype(np.uint8)
                data = np.stack([igbp, igbp, igbp, igbp])
            _write_like(some_real, dst, data)
            origin[key][m] = "generated"
    return origin


@pytest.mark.parametrize("codec", ["zstd", "lz4", "none"])
def test_real_patches_round_trip_for_every_codec(real_dir, tmp_path, codec):
    data = tmp_path / "sen12ms"
    origin = real_tree(real_dir, data)
    out = tmp_path / "out"
    run_shards(data, out, "--codec", codec, "--modalities", "s1,s2,lc", "--workers", "1", "--val-fraction", "0")
    samples = check_round_trip(out, tree_paths(data))
    assert sorted(samples) == sorted(origin)  # all five, the real members among them
    s1_real = read_tif(data / "ROIs1158_spring/s1_1/ROIs1158_spring_s1_1_p30.tif")
    assert s1_real.min() < -25  # real S1 below the clip range: the clip is exercised
    # The real lc patch: IGBP shares of about 0.124, 0.572, 0.266, 0.038 in classes 4, 5, 8, 9.
    label = samples["ROIs1158_spring_s2_1_p30"]["label"]
    assert np.round(label[[3, 4, 7, 8]], 3).tolist() == pytest.approx([0.124, 0.572, 0.266, 0.038], abs=1e-3)


# --- content of the samples --------------------------------------------------------------------

def test_labels_and_meta_equal_the_labels_command_and_the_geotiffs(sample_tree, converted):
    scan = scan_tree(str(sample_tree))
    labels, problems = derive_labels(scan.triplets, workers=1, progress=False)
    assert not problems
    samples = decode_all(converted)
    paths = tree_paths(sample_tree)
    for key, s in samples.items():
        want = labels[key + ".tif"]
        assert s["label"].dtype == np.float32 and np.array_equal(s["label"], want.astype(np.float32))
        meta = s["meta"]
        assert meta["label"] == want.tolist()  # float64, exact
        with rasterio.open(paths(key)["s2"]) as ds:
            assert meta["crs"] == f"EPSG:{ds.crs.to_epsg()}"
            assert meta["transform"] == list(ds.transform)[:6]
        season, _, rest = key.partition("_s2_")
        scene, _, patch = rest.partition("_p")
        assert (meta["season"], meta["scene"], meta["patch"]) == (season, int(scene), int(patch))


def test_samples_are_shuffled_across_the_shards_of_a_split(converted):
    manifest = load_manifest(str(converted))
    for split, shards in manifest.splits.items():
        keys = []
        for entry in shards:
            with tarfile.open(converted / entry.name) as tar:
                keys += list(dict.fromkeys(m.name.split(".", 1)[0] for m in tar))
        assert keys == shuffle_order(keys, 0, split)
        if len(keys) > 4:
            assert keys != sorted(keys)
    train = [e for e in manifest.splits["train"]]
    assert len(train) >= 3 and all(e.bytes <= parse_size(SHARD_SIZE) or e.samples == 1 for e in train)


def test_manifest_stats_equal_numpy_over_the_train_split(sample_tree, converted):
    manifest = load_manifest(str(converted))
    paths = tree_paths(sample_tree)
    train = [k for k, s in decode_all(converted).items() if s["split"] == "train"]
    assert len(train) == manifest.samples("train") > 10
    s2 = np.stack([read_tif(paths(k)["s2"]) for k in train]).astype(np.float64)
    s1 = np.stack([clean_s1(read_tif(paths(k)["s1"])) for k in train]).astype(np.float64)
    names2 = ["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12"]
    assert sorted(manifest.stats) == sorted(names2 + ["VV", "VH"])
    for i, b in enumerate(names2):
        assert manifest.stats[b]["mean"] == pytest.approx(s2[:, i].mean(), rel=1e-12)
        assert manifest.stats[b]["std"] == pytest.approx(s2[:, i].std(), rel=1e-9)
    for i, b in enumerate(["VV", "VH"]):
        assert manifest.stats[b]["mean"] == pytest.approx(s1[:, i].mean(), rel=1e-12)
        assert manifest.stats[b]["std"] == pytest.approx(s1[:, i].std(), rel=1e-9)


# --- report ------------------------------------------------------------------------------------

def test_report_accounts_for_every_input_and_rejects_the_broken_triplet(converted):
    report = json.loads((converted / "report.json").read_text())
    manifest = load_manifest(str(converted))
    assert sum(report["inputs"].values()) == 48
    for split in ("train", "val", "test"):
        assert report["inputs"][split] == report["converted"][split] + report["rejected_count"][split]
        assert report["converted"][split] == manifest.samples(split)
    assert report["rejected"] == [{
        "id": "ROIs1868_summer_s2_146_p202", "split": "train",
        "path": str(Path(manifest.source["data"]) / "ROIs1868_summer/s2_146/ROIs1868_summer_s2_146_p202.tif"),
        "reason": "known broken triplet (S1 holds NaN): left out of train as in the original"}]


def _rewrite(path: Path, data: np.ndarray) -> None:
    with rasterio.open(path) as ds:
        profile = ds.profile
    profile.update(count=data.shape[0], dtype=data.dtype.name)
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data)


def reader_error(path: Path, modality: str) -> str:
    """The GeoTIFF reader's own one-line message for a bad file."""
    from convert.geotiff import PatchReadError, read_patch

    with pytest.raises(PatchReadError) as err:
        read_patch(str(path), modality)
    return str(err.value)


def test_bad_inputs_are_rejected_or_warned_with_reasons_and_good_ones_converted(tmp_path):
    from convert.synth import synthesize

    data = tmp_path / "sen12ms"
    ids = synthesize(data, scenes=3, patches_per_scene=4, seed=3, progress=False)
    p = {i: data / pid.relpath("s2") for i, pid in enumerate(ids)}
    sib = lambda i, m: data / ids[i].relpath(m)  # noqa: E731
    os.remove(sib(0, "s1"))  # missing sibling
    _rewrite(p[1], read_tif(p[1]).astype(np.float32))  # wrong dtype
    _rewrite(sib(2, "s1"), np.concatenate([read_tif(sib(2, "s1"))] * 2)[:3])  # wrong band count
    p[3].write_bytes(p[3].read_bytes()[:5000])  # truncated
    s1 = read_tif(sib(4, "s1"))
    s1[0, 10, :10] = np.nan  # a few NaN: converted, warned
    _rewrite(sib(4, "s1"), s1)
    s2 = read_tif(p[5])
    s2[3, :2, :] = 12000  # above 10000: stored unchanged, warned
    _rewrite(p[5], s2)
    s1 = read_tif(sib(6, "s1"))
    s1[:, :128] = np.nan  # half NaN: broken
    _rewrite(sib(6, "s1"), s1)
    shutil.copyfile(p[7], p[7].with_suffix(".tiff"))  # duplicate patch id
    lc = read_tif(sib(8, "lc"))
    lc[0, 0, 0] = 255
    _rewrite(sib(8, "lc"), lc)  # no label can be derived
    (p[9].parent / "notes.txt").write_text("not a patch")

    out = tmp_path / "out"
    result = run_shards(data, out, "--workers", "2")
    report = json.loads((out / "report.json").read_text())
    rejected = {r["id"]: r for r in report["rejected"]}
    key = lambda i: ids[i].key  # noqa: E731
    assert set(rejected) == {key(i) for i in (0, 1, 2, 3, 6, 7, 8)}
    assert rejected[key(0)]["reason"] == f"missing sibling {ids[0].relpath('s1')}"
    assert rejected[key(1)]["reason"] == reader_error(p[1], "s2")
    assert rejected[key(1)]["reason"] == f"{p[1]}: dtype float32, a SEN12MS s2 patch is uint16"
    assert rejected[key(2)]["reason"] == reader_error(sib(2, "s1"), "s1")
    assert rejected[key(2)]["reason"] == f"{sib(2, 's1')}: 3 bands, a SEN12MS s1 patch has 2"
    assert rejected[key(3)]["reason"] == reader_error(p[3], "s2") and "GeoTIFF" in rejected[key(3)]["reason"]
    assert [rejected[key(i)]["path"] for i in (1, 2, 3)] == [str(p[1]), str(sib(2, "s1")), str(p[3])]
    assert rejected[key(6)]["reason"] == (f"{sib(6, 's1')}: broken S1: S1 holds 65536 non-finite pixels (50.0%), "
                                          "more than 1%")
    assert rejected[key(7)]["reason"].startswith(f"duplicate patch id {key(7)}")
    assert rejected[key(8)]["reason"] == "no label: IGBP values outside 0..17: 255"
    assert rejected[key(8)]["path"] == str(sib(8, "lc"))
    warned = {(w["id"], w["reason"]) for w in report["warnings"]}
    assert (key(4), "S1 holds 10 non-finite pixels (0.0%); stored as 0 dB (NaN, +inf) and -25 dB (-inf)") in warned
    assert (key(5), "S2 holds 512 values above 10000 (max 12000); stored unchanged") in warned
    assert any(w["path"] == str(p[9].parent / "notes.txt") and "not a SEN12MS patch name" in w["reason"]
               for w in report["warnings"])
    samples = decode_all(out)
    assert sorted(samples) == sorted(key(i) for i in range(12) if i not in (0, 1, 2, 3, 6, 7, 8))
    assert np.all(samples[key(4)]["s1"][0, 10, :10] == 65535)  # NaN -> 0 dB, the top code
    assert np.array_equal(samples[key(5)]["s2"], s2)
    for split in report["inputs"]:
        assert report["inputs"][split] == report["converted"][split] + report["rejected_count"][split]
    assert sum(report["inputs"].values()) == 12
    assert "\ntotal             12          5         7\n" in result.output
    assert f"{key(6)}: {sib(6, 's1')}: broken S1" in result.output


def test_files_of_the_labels_and_splits_commands_give_the_same_shards_and_report(sample_tree, converted, tmp_path):
    runner = CliRunner()
    for cmd in ("labels", "splits"):
        r = runner.invoke(cli, [cmd, "--data", str(sample_tree), "--out", str(tmp_path / cmd)]
                          + (["--no-progress"] if cmd == "labels" else []))
        assert r.exit_code == 0, r.output
    out = tmp_path / "out"
    run_shards(sample_tree, out, "--labels", str(tmp_path / "labels" / "IGBP_probability_labels.json"),
               "--splits", str(tmp_path / "splits"), "--workers", "1", "--shard-size", SHARD_SIZE)
    a, b = all_files(converted), all_files(out)
    for name in a:
        if name.endswith((".tar", ".idx")) or name == "report.json":
            assert a[name] == b[name], name
    assert load_manifest(str(out)).stats == load_manifest(str(converted)).stats


def test_label_file_and_split_lists_are_checked_per_sample(tmp_path):
    from convert.synth import synthesize

    data = tmp_path / "sen12ms"
    ids = synthesize(data, scenes=2, patches_per_scene=3, seed=4, progress=False)
    scan = scan_tree(str(data))
    labels, _ = derive_labels(scan.triplets, workers=1, progress=False)
    names = sorted(labels)
    labels_json = {n: labels[n].tolist() for n in names[1:]}  # names[0] has no label
    labels_json[names[1]] = (labels[names[1]] * 0.5).tolist()  # sums to 0.5
    (tmp_path / "labels.json").write_text(json.dumps(labels_json))
    splits = tmp_path / "splits"
    splits.mkdir()
    (splits / "train_list.txt").write_text("".join(n + "\n" for n in names[:4]))
    (splits / "test_list.txt").write_text(names[4] + "\nROIs1970_fall_s2_99_p1.tif\n")  # one not in the tree
    out = tmp_path / "out"
    run_shards(data, out, "--labels", str(tmp_path / "labels.json"), "--splits", str(splits), "--workers", "1")
    report = json.loads((out / "report.json").read_text())
    rej = {r["id"]: (r["split"], r["reason"]) for r in report["rejected"]}
    k = [n[:-4] for n in names]
    assert rej == {
        k[0]: ("train", f"no label for {names[0]} in {tmp_path / 'labels.json'}"),
        k[1]: ("train", f"label in {tmp_path / 'labels.json'}: probability vector sums to 0.5000, not 1"),
        k[5]: ("unassigned", "in no split list"),
    }
    assert report["inputs"] == {"train": 4, "val": 0, "test": 1, "unassigned": 1}
    assert report["converted"] == {"train": 2, "val": 0, "test": 1, "unassigned": 0}
    assert {"id": "ROIs1970_fall_s2_99_p1", "split": "test", "path": "",
            "reason": "listed in the test split but not found in the tree"} in report["warnings"]
    assert len(ids) == 6


# --- determinism, resume and faults --------------------------------------------------------------

def test_output_is_byte_identical_for_any_worker_count(sample_tree, converted, tmp_path):
    out = tmp_path / "out"
    run_shards(sample_tree, out, "--workers", "2", "--shard-size", SHARD_SIZE)
    a, b = all_files(converted), all_files(out)
    assert sorted(a) == sorted(b) and len([n for n in a if n.endswith(".tar")]) >= 8
    assert all(a[n] == b[n] for n in a)


@pytest.mark.parametrize("how", ["kill -9", "ctrl-c"])
def test_resume_after_kill_gives_the_bytes_of_an_uninterrupted_run(sample_tree, converted, tmp_path, how):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "convert", "shards", "--data", str(sample_tree), "--out", str(out),
           "--workers", "2", "--shard-size", SHARD_SIZE, "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    first = out / ".parts" / "train-000000.json"
    deadline = time.monotonic() + 60
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    if how == "kill -9":
        proc.kill()  # the main process only: its workers must not outlive it
    else:
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal sends to the whole job
    _, err = proc.communicate(timeout=60)
    assert first.exists() and not (out / "manifest.json").exists(), "the run must be stopped mid-way"
    if how == "ctrl-c":
        assert proc.returncode != 0 and b"Traceback" not in err
        assert not [p for p in out.rglob("*") if ".tmp-" in p.name]  # the shard being written is gone
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # every process of the job ends
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("worker processes outlived the converter")
    refused = run_shards(sample_tree, out, "--workers", "1", "--shard-size", SHARD_SIZE, ok=False)
    assert refused.exit_code == 1 and "pass --resume" in refused.output
    resumed = run_shards(sample_tree, out, "--workers", "1", "--shard-size", SHARD_SIZE, "--resume")
    assert "resuming: keeping" in resumed.output
    a, b = all_files(converted), all_files(out)
    assert sorted(a) == sorted(b)
    assert all(a[n] == b[n] for n in a)


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads child processes from /proc")
def test_a_killed_worker_stops_the_run_with_a_one_line_error(sample_tree, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "convert", "shards", "--data", str(sample_tree), "--out", str(out),
           "--workers", "2", "--shard-size", SHARD_SIZE, "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    first = out / ".parts" / "train-000000.json"
    deadline = time.monotonic() + 60
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    os.kill(int(children[0]), signal.SIGKILL)  # as the out-of-memory killer would
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and not (out / "manifest.json").exists()
    assert err.strip().splitlines() == ["Error: a worker process died (killed by the system, out of memory?); the "
                                        "finished shards are kept: run again with --resume (and fewer --workers)"]
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]


def test_resume_refuses_other_options_and_a_finished_set_resumes_to_the_same_bytes(sample_tree, converted, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(converted, out)
    before = all_files(out)
    other = run_shards(sample_tree, out, "--shard-size", "5MB", "--resume", ok=False)
    assert other.exit_code == 1 and "holds shards of a different conversion" in other.output
    same = run_shards(sample_tree, out, "--shard-size", SHARD_SIZE, "--resume")
    assert "(0 samples processed, " in same.output
    assert all_files(out) == before
    fresh = run_shards(sample_tree, out, ok=False)
    assert fresh.exit_code == 1 and fresh.output.strip().endswith(
        "already holds a shard set (manifest.json, %d shards); pass --resume to continue it, or choose an empty folder"
        % len([n for n in before if n.endswith(".tar")]))


def test_a_full_disk_leaves_no_partial_shard_and_a_one_line_error(tmp_path):
    from convert.synth import synthesize

    data = tmp_path / "sen12ms"
    synthesize(data, scenes=2, patches_per_scene=4, seed=2, progress=False)
    out = tmp_path / "out"

    def small_disk() -> None:  # writes beyond 3 MB fail with EFBIG, like a full disk with ENOSPC
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (3_000_000, 3_000_000))

    proc = subprocess.run([sys.executable, "-m", "convert", "shards", "--data", str(data), "--out", str(out),
                           "--workers", "1", "--shard-size", "8MB", "--no-progress"],
                          cwd=REPO, capture_output=True, text=True, preexec_fn=small_disk)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: {out}/") and "cannot write (File too large)" in lines[0]
    assert "--resume" in lines[0]
    for path in out.rglob("*"):
        if path.suffix == ".tar":
            record = out / ".parts" / (path.stem + ".json")
            assert record.exists() and json.loads(record.read_text())["bytes"] == path.stat().st_size
        assert ".tmp-" not in path.name
    assert not (out / "manifest.json").exists()


# --- index files and sizes ---------------------------------------------------------------------

def test_index_files_equal_what_dalis_wds2idx_writes(converted, tmp_path):
    tool = Path(sys.executable).parent / "wds2idx"
    if not tool.exists():
        pytest.skip("DALI's wds2idx is not installed (pip install -e .[dali])")
    for name in ("train-000000.tar", "test-000001.tar"):
        idx = tmp_path / name.replace(".tar", ".idx")
        subprocess.run([str(tool), str(converted / name), str(idx)], check=True, capture_output=True)
        assert idx.read_text() == (converted / idx.name).read_text()


@pytest.mark.parametrize("text, expected", [
    ("256MB", 256_000_000), ("1GB", 1_000_000_000), ("500KiB", 512_000), ("4096", 4096), ("1.5 mib", 1_572_864),
    ("2g", 2_000_000_000),
])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


def test_bad_options_are_one_line_errors(sample_tree, tmp_path):
    r = run_shards(sample_tree, tmp_path / "o", "--shard-size", "lots", ok=False)
    assert r.exit_code == 2 and "not a size: 'lots'" in r.output
    r = run_shards(sample_tree, tmp_path / "o", "--codec", "lz4", "--level", "5", ok=False)
    assert r.exit_code == 2 and "--level applies to --codec zstd only" in r.output
    r = run_shards(tmp_path / "nowhere", tmp_path / "o", ok=False)
    assert r.exit_code == 1 and r.output.strip() == f"Error: {tmp_path / 'nowhere'}: no such folder"
    r = run_shards(sample_tree, tmp_path / "o", "--labels", str(tmp_path / "none.json"), ok=False)
    assert r.exit_code == 1 and r.output.strip() == f"Error: {tmp_path / 'none.json'}: no such label file"


class _Exploit:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_a_label_pickle_that_would_run_code_is_refused(sample_tree, tmp_path):
    import pickle

    sentinel = tmp_path / "owned"
    (tmp_path / "labels.pkl").write_bytes(pickle.dumps({"ROIs1158_spring_s2_1_p30.tif": _Exploit(sentinel)}))
    r = run_shards(sample_tree, tmp_path / "o", "--labels", str(tmp_path / "labels.pkl"), ok=False)
    assert r.exit_code == 1
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: {tmp_path / 'labels.pkl'}") and "system" in lines[0]
    assert not sentinel.exists() and not (tmp_path / "o" / "manifest.json").exists()


def test_encode_policy_for_inf_s1_and_stored_lc(tmp_path):
    from convert.encode import Encoded, Failed, encode_entry
    from convert.plan import PlanEntry
    from convert.synth import synthesize

    data = tmp_path / "sen12ms"
    pid = synthesize(data, scenes=1, patches_per_scene=1, seed=8, progress=False)[0]
    paths = {m: str(data / pid.relpath(m)) for m in ("s2", "s1", "lc")}
    s1 = read_tif(Path(paths["s1"]))
    s1[0, 0, :3] = [np.inf, -np.inf, np.nan]
    _rewrite(Path(paths["s1"]), s1)
    lc = read_tif(Path(paths["lc"]))
    lc[0, 5, :7] = 0
    _rewrite(Path(paths["lc"]), lc)
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
    _rewrite(Path(paths["lc"]), lc)
    failed = encode_entry(entry, layout, with_stats=False)
    assert failed == Failed(pid.key, f"{paths['lc']}: IGBP band holds values outside 0..17: 255", paths["lc"])
