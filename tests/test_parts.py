"""`convert shards --part I/N` and `convert merge-manifest`: a conversion in parts equals one in one run."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from convert.cli import cli
from convert.shards.plan import Part, assign_scenes, parse_part
from convert.shards.scan import scan_tree
from outlocks import dead_pid, plant_lock
from sen12ms_common.format.manifest import load_manifest
from sen12ms_common.vocab.patches import SEASONS, SceneId, parse_patch

pytestmark = pytest.mark.slow  # conversions in parts, in subprocesses

REPO = Path(__file__).resolve().parents[1]
SHARD_SIZE = "3MB"  # two samples per shard: several shards per part and split
N = 3


def cli_run(*args: str, ok: bool = True):
    result = CliRunner().invoke(cli, list(args))
    if ok:
        assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def shards_args(data: Path, out: Path, *extra: str) -> list[str]:
    # The tree's planted bad inputs are more than --max-rejected's default share of a part.
    return ["shards", "--data", str(data), "--out", str(out), "--workers", "1", "--shard-size", SHARD_SIZE,
            "--no-progress", "--max-rejected", "1", *extra]


def samples_of(out: Path) -> dict[str, tuple[str, str, dict[str, bytes]]]:
    """key -> (split, shard, members) of every sample the manifest names; a key twice fails."""
    manifest = load_manifest(str(out))
    found: dict[str, tuple[str, str, dict[str, bytes]]] = {}
    for split, entries in manifest.splits.items():
        for entry in entries:
            with tarfile.open(out / entry.name) as tar:
                for info in tar:
                    key, _, ext = info.name.partition(".")
                    if key not in found:
                        found[key] = (split, entry.name, {})
                    assert found[key][1] == entry.name, f"{key} in {found[key][1]} and {entry.name}"
                    found[key][2][ext] = tar.extractfile(info).read()
    return found


def part_files(out: Path, part: Part) -> dict[str, bytes]:
    """Everything one part wrote: its shards, index files, commit records, part manifest and report."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and (part.tag in p.name or part.label in p.name)}


def one_line_error(result) -> str:
    lines = result.output.strip().splitlines()
    assert result.exit_code != 0 and len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0][len("Error: "):]


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """7 scenes x 4 patches with the known broken triplet, a missing sibling (rejected when planned),
    a truncated S2 (rejected when read) and a file that is no patch (a tree-wide warning)."""
    from convert.sample.sen12ms import synthesize

    root = tmp_path_factory.mktemp("parts-tree") / "sen12ms"
    ids = synthesize(root, scenes=7, patches_per_scene=4, seed=11, broken=True, progress=False)
    by_scene: dict[SceneId, list] = {}
    for pid in ids:
        by_scene.setdefault(pid.scene_id, []).append(pid)
    scenes = sorted(by_scene)
    os.remove(root / by_scene[scenes[0]][0].relpath("s1"))
    s2 = root / by_scene[scenes[-1]][1].relpath("s2")
    s2.write_bytes(s2.read_bytes()[:4000])
    (root / by_scene[scenes[2]][0].relpath("s2")).with_name("notes.txt").write_text("not a patch")
    return root


@pytest.fixture(scope="module")
def full(tree: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("parts-full") / "out"
    cli_run(*shards_args(tree, out))
    return out


@pytest.fixture(scope="module")
def merged(tree: Path, tmp_path_factory) -> Path:
    """The N parts run at the same time into one OUT, as an array job does, then merged."""
    out = tmp_path_factory.mktemp("parts") / "out"
    procs = [subprocess.Popen([sys.executable, "-m", "convert", *shards_args(tree, out, "--part", f"{i}/{N}")],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(1, N + 1)]
    for i, proc in enumerate(procs, 1):
        output, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, output
        assert f"part {i}/{N} done; once all {N} parts are: python -m convert merge-manifest {out}" in output
    assert not (out / "manifest.json").exists()  # only the merge writes it
    proc = subprocess.run([sys.executable, "-m", "convert", "merge-manifest", str(out), "--expect", str(N)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"merged: {N} parts, " in proc.stdout
    return out


def read_parts(out: Path) -> list[tuple[dict, dict]]:
    """(part manifest, part report) of each part, in part order."""
    folder = out / "parts"
    return [(json.loads((folder / f"manifest-{i:04d}-of-{N:04d}.json").read_text()),
             json.loads((folder / f"report-{i:04d}-of-{N:04d}.json").read_text())) for i in range(1, N + 1)]


# --- the merged set equals a conversion in one run ----------------------------------------------

def test_every_sample_is_in_exactly_one_part_in_the_split_of_a_full_run(full, merged):
    a, b = samples_of(full), samples_of(merged)
    assert len(a) == 25  # 28 triplets less the broken one, a missing sibling and a truncated S2
    assert sorted(a) == sorted(b)
    assert {k: v[0] for k, v in a.items()} == {k: v[0] for k, v in b.items()}
    assert all(a[k][2] == b[k][2] for k in a)  # the same member bytes: a sample does not depend on its part
    manifest = load_manifest(str(merged))
    for split, entries in manifest.splits.items():
        pattern = re.compile(rf"^{split}-p(\d{{4}})of0003-(\d{{6}})\.tar$")
        order = [(int(m[1]), int(m[2])) for e in entries if (m := pattern.match(e.name))]
        assert len(order) == len(entries) and order == sorted(order)  # by part, then shard index
        for i in {part for part, _ in order}:
            assert [shard for part, shard in order if part == i] == list(range(sum(part == i for part, _ in order)))
    assert sorted(n for n in os.listdir(merged) if n.endswith(".tar")) == sorted(
        e.name for entries in manifest.splits.values() for e in entries)


def test_scenes_stay_whole_and_parts_are_balanced(tree, merged):
    scan = scan_tree(str(tree))
    keys = {t.key for t in scan.triplets} | {p.id for p in scan.problems if p.id}
    sizes = Counter(parse_patch(k).scene_id.key for k in keys)
    parts = read_parts(merged)
    scene_part = {}
    for i, (doc, report) in enumerate(parts, 1):
        for scene in doc["part"]["scenes"]:
            assert scene not in scene_part
            scene_part[scene] = i
        assert sum(report["inputs"].values()) == doc["part"]["inputs"] == sum(sizes[s] for s in doc["part"]["scenes"])
        for r in report["rejected"]:
            assert scene_part[parse_patch(r["id"]).scene_id.key] == i
    assert sorted(scene_part) == sorted(sizes)
    for key, (_, shard, _) in samples_of(merged).items():
        assert f"-p{scene_part[parse_patch(key).scene_id.key]:04d}of{N:04d}-" in shard
    loads = [doc["part"]["inputs"] for doc, _ in parts]
    assert max(loads) - min(loads) <= max(sizes.values())
    assert sum(loads) == 28


def test_merged_stats_report_and_source_equal_a_full_run(full, merged):
    a, b = load_manifest(str(full)), load_manifest(str(merged))
    assert sorted(a.stats) == sorted(b.stats) and len(a.stats) == 15
    for band, s in a.stats.items():
        # Combined in another order (parts, then shards, then samples): equal to float64 rounding.
        assert b.stats[band]["mean"] == pytest.approx(s["mean"], rel=1e-13, abs=0)
        assert b.stats[band]["std"] == pytest.approx(s["std"], rel=1e-13, abs=0)
    assert (merged / "report.json").read_bytes() == (full / "report.json").read_bytes()
    report = json.loads((merged / "report.json").read_text())
    assert len(report["rejected"]) == 3  # the broken triplet, the missing sibling, the truncated S2
    assert sum(w["reason"].startswith("not a SEN12MS patch name") for w in report["warnings"]) == 1
    assert a.layout == b.layout
    assert {s: a.samples(s) for s in a.splits} == {s: b.samples(s) for s in b.splits}
    assert b.source == dict(a.source, parts=N)


def test_the_merged_set_verifies_and_trains(merged, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "convert", "verify", str(merged), "--no-progress"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("OK: ") and "25 samples" in proc.stdout, proc.stderr
    assert proc.stderr == ""  # no shard file that the manifest does not name
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "train", "--shards", str(merged), "--model", "SmallCNN",
                           "--max-steps", "2", "--batch-size", "4", "--workers", "0", "--device", "cpu",
                           "--stats", "manifest", "--run-dir", str(run)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    manifest = load_manifest(str(merged))
    assert f"train {manifest.samples('train')} samples" in proc.stdout
    assert (run / "test_scores.json").exists()


# --- determinism and resume per part ------------------------------------------------------------

def test_a_part_gives_the_same_bytes_again_and_resumes_on_its_own(tree, merged, tmp_path):
    part = Part(2, N)
    out = tmp_path / "out"
    out.mkdir()
    # What a killed earlier run of part 2 left (its lock and a temporary named by it), and a shard
    # that part 1 is writing at this moment (a live lock: this process).
    dead, live = "0a0b0c0d0e0f", "a1b2c3d4e5f6"
    plant_lock(out, part, dead, dead_pid(), pid_start=1)
    (out / f".train-{part.tag}-000007.tar.tmp-{dead}-0a0b0c0d").write_bytes(b"x" * 700)
    part1_lock = plant_lock(out, Part(1, N), live, os.getpid())
    part1_tmp = out / f".train-p0001of0003-000003.tar.tmp-{live}-01020304"
    part1_tmp.write_bytes(b"y" * 900)
    cli_run(*shards_args(tree, out, "--part", str(part)))
    assert sorted(out.glob(".*.tmp-*")) == [part1_tmp] and sorted(out.glob(".lock-*")) == [part1_lock]
    want = part_files(merged, part)
    assert want == part_files(out, part) and sum(n.endswith(".tar") for n in want) >= 3

    # As if part 2 was killed after its first train shard: the rest of it is gone.
    records = sorted((out / ".parts").glob("*.json"))
    keep = out / ".parts" / f"train-{part.tag}-000000.json"
    for path in [*records, *out.glob("*.tar"), *out.glob("*.idx"), *(out / "parts").glob("*")]:
        if path != keep and path.name != f"train-{part.tag}-000000.tar" and path.name != f"train-{part.tag}-000000.idx":
            path.unlink()
    refused = cli_run(*shards_args(tree, out, "--part", str(part)), ok=False)
    assert one_line_error(refused) == (f"{out}: already holds an unfinished part 2/3 (1 shards); pass --resume to "
                                       "continue it, or choose an empty folder")
    resumed = cli_run(*shards_args(tree, out, "--part", str(part), "--resume"))
    assert "resuming: keeping 1 finished shard(s)" in resumed.output
    assert part_files(out, part) == want


# --- refusals ------------------------------------------------------------------------------------

def merge(out: Path, *extra: str, ok: bool = True):
    return cli_run("merge-manifest", str(out), *extra, ok=ok)


def test_merge_refuses_missing_parts_other_options_and_a_different_manifest(tree, merged, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(merged, out)
    manifest = (out / "manifest.json").read_bytes()
    assert "already merged, unchanged: 3 parts" in merge(out).output

    (out / "manifest.json").write_text((out / "manifest.json").read_text().replace('"seed": 0', '"seed": 9'))
    assert one_line_error(merge(out, ok=False)) == (f"{out / 'manifest.json'}: a complete shard set with another "
                                                    "manifest is already there; pass --force to replace its "
                                                    "manifest and report")
    assert "merged: 3 parts" in merge(out, "--force").output
    assert (out / "manifest.json").read_bytes() == manifest

    assert one_line_error(merge(out, "--expect", "4", ok=False)).startswith(
        f"{out}: the parts were made with --part I/3 (e.g. ")
    tar = sorted(out.glob("val-*.tar"))[-1]
    tar.write_bytes(tar.read_bytes()[:-512])
    assert one_line_error(merge(out, "--force", ok=False)) == (
        f"{out}: 1 shard or index file(s) of the parts missing or changed: {tar.name} ({tar.stat().st_size} bytes, "
        f"its part manifest says {tar.stat().st_size + 512}); run the parts that wrote them again with --resume")

    # Part 2 is redone with another codec.
    part = Part(2, N)
    for path in out.rglob("*"):
        if path.is_file() and (part.tag in path.name or part.label in path.name):
            path.unlink()
    assert one_line_error(merge(out, "--force", ok=False)) == (
        f"{out}: 1 of 3 parts missing or unfinished (no parts/manifest-0002-of-0003.json): part(s) 2/3; run "
        "`convert shards ... --part I/3` for them (with --resume after an interruption)")
    cli_run(*shards_args(tree, out, "--part", "2/3", "--codec", "lz4"))
    assert one_line_error(merge(out, "--force", ok=False)) == (
        f"{out / 'parts' / 'manifest-0002-of-0003.json'}: part 2/3 was made with --codec lz4 (part 1: zstd); run "
        "every part with the same options on the same tree")
    assert (out / "manifest.json").read_bytes() == manifest  # nothing was written by a refused merge


def test_parts_and_whole_runs_do_not_mix_and_bad_parts_are_refused(tree, full, merged, tmp_path):
    for text, message in (("0/3", "part 0/3: expected I/N with 1 <= I <= N (e.g. 3/16)"),
                          ("4/3", "part 4/3: expected I/N with 1 <= I <= N (e.g. 3/16)"),
                          ("x", "not a part: 'x' (expected I/N, e.g. 3/16: part 3 of 16, counted from 1)")):
        r = cli_run(*shards_args(tree, tmp_path / "o", "--part", text), ok=False)
        assert r.exit_code == 2 and message in r.output
    r = cli_run(*shards_args(tree, full, "--part", "1/3", "--resume"), ok=False)
    assert one_line_error(r) == (f"{full}: holds a conversion without --part (e.g. test-000000.idx); convert the "
                                 "parts into an empty folder")
    r = cli_run(*shards_args(tree, merged, "--resume"), ok=False)
    assert one_line_error(r).startswith(f"{merged}: holds parts of a conversion with --part (e.g. ")
    r = cli_run(*shards_args(tree, merged, "--part", "1/2"), ok=False)
    assert one_line_error(r).startswith(f"{merged}: holds parts of a conversion in 3 parts (e.g. ")
    r = merge(full, ok=False)
    assert one_line_error(r) == (f"{full}: no parts of a conversion with --part I/N (no parts/manifest-*.json); run "
                                 "`convert shards --part I/N` into it first")
    assert parse_part(" 3 / 16 ") == Part(3, 16) and Part(3, 16).tag == "p0003of0016"


# --- the assignment of scenes to parts ------------------------------------------------------------

def test_assign_scenes_example():
    s = [SceneId(SEASONS[0], i) for i in range(1, 7)]
    sizes = {s[0]: 5, s[1]: 9, s[2]: 5, s[3]: 2, s[4]: 1, s[5]: 5}
    # 9 -> part 1; 5, 5, 5 (scene order) -> parts 2, 3, 2; 2 -> 3; 1 -> 3
    assert assign_scenes(sizes, 3) == [[s[1]], [s[0], s[5]], [s[2], s[3], s[4]]]
    assert assign_scenes(sizes, 1) == [sorted(s)]
    assert assign_scenes(sizes, 8)[6:] == [[], []]


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.tuples(st.sampled_from(SEASONS), st.integers(1, 200)), st.integers(1, 900),
                       min_size=1, max_size=60),
       st.integers(1, 20), st.randoms(use_true_random=False))
def test_assign_scenes_is_a_balanced_partition_independent_of_order(raw, count, rnd):
    sizes = {SceneId(*k): v for k, v in raw.items()}
    parts = assign_scenes(sizes, count)
    assert len(parts) == count and sorted(s for p in parts for s in p) == sorted(sizes)
    loads = [sum(sizes[s] for s in p) for p in parts]
    assert max(loads) - min(loads) <= max(sizes.values())
    items = list(sizes.items())
    rnd.shuffle(items)
    assert assign_scenes(dict(items), count) == parts


# A merge killed between writing its manifest's temporary and renaming it (issue 29 item 11).
_KILLED_AT_RENAME = ("import os, sys; from sen12ms_common.storage import files as storage\n"
                     "with storage.atomic_open(sys.argv[1]) as f:\n"
                     "    f.write(b'{\"half\": ')\n"
                     "    f.flush()\n"
                     "    os.kill(os.getpid(), 9)\n")


def test_merge_removes_the_temporaries_of_a_killed_merge(merged, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(merged, out)
    for name in ("manifest.json", "report.json"):
        proc = subprocess.run([sys.executable, "-c", _KILLED_AT_RENAME, str(out / name)], cwd=REPO)
        assert proc.returncode == -9
    left = sorted(p.name for p in out.iterdir() if ".tmp-" in p.name)
    assert [n.split(".tmp-")[0] for n in left] == [".manifest.json", ".report.json"]
    live = out / f".manifest.json.tmp-{os.getpid()}-0123abcd"  # a merge still writing (this process)
    live.write_text("in progress")
    result = merge(out)
    assert "unchanged" in result.output or "merged" in result.output
    assert sorted(p.name for p in out.iterdir() if ".tmp-" in p.name) == [live.name]
    assert load_manifest(str(out)).samples("train") == load_manifest(str(merged)).samples("train")
