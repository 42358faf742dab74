"""The output folder of `convert shards`: one writer per OUT (a second converter is refused naming
the first, unless the first is provably gone), files the converter did not write are never deleted
or overwritten, a run that converts nothing (or rejects too much) fails without a manifest, and
the one-line answers to the mistakes a user makes first. Local folders and s3://."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
from click.testing import CliRunner
from outlocks import dead_pid, lock_text, plant_lock
from runstops import GatedTrace

from convert.cli import cli
from convert.shards.outfolder import lock_name
from convert.shards.plan import Part
from convert.shards.scan import scan_tree
from sen12ms_common.storage import files as storage

REPO = Path(__file__).resolve().parents[1]
HELD = Path(__file__).resolve().parent / "heldconvert.py"
SHARD_SIZE = "2MB"  # about one sample per shard: many commit points
OTHER = {"host": "node-b", "boot_id": "6c1b6f0e-0000-4000-8000-000000000000", "pid_ns": "pid:[4026531836]"}


def converter(data: Path, out: str, *args: str, workers: int = 1, trace: Path | None = None) -> list[str]:
    start = [sys.executable, "-m", "convert"] if trace is None else [sys.executable, str(HELD), str(trace)]
    return start + ["shards", "--data", str(data), "--out", str(out), "--workers", str(workers), "--shard-size",
                    SHARD_SIZE, "--no-progress", *args]


def run(data: Path, out: str, *args: str):
    """`convert shards` in this process (its lock names this pid)."""
    return CliRunner().invoke(cli, converter(data, out, *args)[3:])


def files(out: str) -> dict[str, bytes]:
    """Every file under OUT (a folder or an s3:// prefix) -> its bytes."""
    return {p: storage.read_bytes(storage.join(out, *p.split("/"))) for p in sorted(storage.find_sizes(out))}


def put(out: str, path: str, data: bytes) -> None:
    storage.write_bytes(storage.join(out, *path.split("/")), data)


def one_line(result) -> str:
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0][len("Error: "):]


def when(started: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started))


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    from convert.sample.sen12ms import synthesize

    data = tmp_path_factory.mktemp("outfolder") / "sen12ms"
    synthesize(data, scenes=3, patches_per_scene=4, seed=33, progress=False)
    return data


@pytest.fixture(scope="module")
def clean(tree: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("outfolder-clean") / "out"
    proc = subprocess.run(converter(tree, str(out)), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(list(out.glob("*.tar"))) >= 8
    return out


@pytest.fixture(params=["local", "s3"])
def out(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "out")
    return storage.join(request.getfixturevalue("s3_prefix"), "out")


def held_run(tree: Path, out: str, tmp_path: Path, act: Callable[[subprocess.Popen], None]) -> tuple[int, str]:
    """A converter that waits after its first committed shard until `act(proc)` has run (its
    later commits each wait for the test to read them: it stays mid-way while `act` runs)."""
    started: list[subprocess.Popen] = []
    gate = GatedTrace(tmp_path / "commits", when=lambda text: True, act=lambda: act(started[0]))
    with open(tmp_path / "held-stderr", "wb") as err:
        proc = subprocess.Popen(converter(tree, out, workers=2, trace=tmp_path / "commits"), cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    started.append(proc)
    try:
        proc.wait(timeout=300)
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    finally:
        gate.close()
    assert gate.acted.is_set(), (tmp_path / "held-stderr").read_text()
    return proc.returncode, (tmp_path / "held-stderr").read_text()


# --- one writer per OUT ------------------------------------------------------------------------

@pytest.mark.slow
def test_a_second_converter_on_the_same_out_is_refused_naming_the_first_which_finishes(tree, clean, out, tmp_path):
    seen: dict = {}

    def second(first: subprocess.Popen) -> None:
        os.killpg(first.pid, signal.SIGSTOP)  # the first, mid-way, cannot move while OUT is compared
        try:
            before = files(out)
            [lock] = [p for p in before if p.startswith(".lock-")]
            seen["holder"], seen["first"] = json.loads(before[lock]), first.pid
            seen["second"] = subprocess.run(converter(tree, out, "--resume"), cwd=REPO, capture_output=True,
                                            text=True, timeout=300)
            seen["touched"] = [p for p in before.keys() | files(out).keys()
                               if before.get(p) != files(out).get(p)]
        finally:
            os.killpg(first.pid, signal.SIGCONT)

    returncode, err = held_run(tree, out, tmp_path, second)
    assert returncode == 0, err
    holder, refused = seen["holder"], seen["second"]
    assert holder["pid"] == seen["first"] and holder["host"] == socket.gethostname()
    assert refused.returncode == 1 and refused.stderr == (
        f"Error: {out}: another `convert shards` is writing into it (host {socket.gethostname()}, pid "
        f"{seen['first']}, started {when(holder['started'])}); wait for it to end, or choose another folder\n")
    assert seen["touched"] == []  # not a byte of the first's files (and no lock of its own) changed
    assert files(out) == files(str(clean))  # the first finished as if alone; its lock is gone


@pytest.mark.slow
def test_a_converter_killed_holding_its_lock_is_taken_over_on_this_machine(tree, clean, tmp_path):
    out = tmp_path / "out"
    returncode, err = held_run(tree, str(out), tmp_path, lambda first: os.killpg(first.pid, signal.SIGKILL))
    assert returncode == -signal.SIGKILL, err
    [lock] = out.glob(".lock-*.json")
    assert json.loads(lock.read_text())["host"] == socket.gethostname()
    resumed = subprocess.run(converter(tree, str(out), "--resume"), cwd=REPO, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0 and "resuming: keeping " in resumed.stderr, resumed.stderr
    assert files(str(out)) == files(str(clean))  # its lock and temporaries removed, the rest as a clean run


def test_a_lock_whose_pid_is_now_another_process_is_taken_over(tree, clean, tmp_path):
    out = tmp_path / "out"
    token = "00aa11bb22cc"
    plant_lock(out, None, token, os.getpid(), pid_start=1)  # a live pid, but not the process that locked
    (out / f".train-000000.tar.tmp-{token}-0a0b0c0d").write_bytes(b"half a shard")
    r = run(tree, str(out))
    assert r.exit_code == 0, r.output
    assert files(str(out)) == files(str(clean))


def test_a_lock_of_another_machine_is_taken_only_with_break_lock_once_stale(tree, clean, out):
    started = time.time() - 3600
    put(out, lock_name(None, "0123456789ab"), lock_text(None, 4242, started=started, refreshed=time.time() - 30,
                                                        **OTHER).encode())
    who = f"host node-b, pid 4242, started {when(started)}"
    # The age is read when the run starts: under load that is a second or two after the lock was put.
    ago = r"refreshed 3\d s ago"
    assert re.fullmatch(re.escape(f"{out}: another `convert shards` holds its lock ({who}, ") + ago + re.escape(
        "); if it is no longer running, run again with --break-lock (once the lock is 10 minutes old)"),
        one_line(run(tree, out, "--resume")))
    assert re.fullmatch(re.escape(f"{out}: the lock of another `convert shards` ({who}) was ") + ago + re.escape(
        ": it is still running; --break-lock takes only a lock not refreshed for 10 minutes"),
        one_line(run(tree, out, "--break-lock")))
    put(out, lock_name(None, "0123456789ab"), lock_text(None, 4242, started=started, refreshed=time.time() - 660,
                                                        **OTHER).encode())
    assert one_line(run(tree, out)).startswith(f"{out}: another `convert shards` holds its lock ({who}, refreshed 11 "
                                               "minutes ago); ")
    r = run(tree, out, "--break-lock")
    assert r.exit_code == 0, r.output
    assert files(out) == files(str(clean))


def test_parts_of_one_conversion_share_out_but_each_part_has_one_writer(tree, tmp_path):
    out = tmp_path / "out"
    plant_lock(out, Part(1, 2), "a1b2c3d4e5f6", os.getpid())  # part 1/2 is running (this process)
    who = f"host {socket.gethostname()}, pid {os.getpid()}, started "
    for args, command in ((("--part", "1/2"), "`convert shards --part 1/2`"), ((), "`convert shards --part 1/2`"),
                          (("--part", "1/3"), "`convert shards --part 1/2`")):
        assert one_line(run(tree, str(out), *args, "--max-rejected", "1")).startswith(
            f"{out}: another {command} is writing into it ({who}")
    r = run(tree, str(out), "--part", "2/2", "--max-rejected", "1")
    assert r.exit_code == 0, r.output
    assert (out / "parts" / "manifest-0002-of-0002.json").exists()
    assert [p.name for p in out.glob(".lock-*")] == [lock_name(Part(1, 2), "a1b2c3d4e5f6")]


# --- files the converter did not write ---------------------------------------------------------------

def test_files_the_converter_did_not_write_are_refused_and_left_alone(tree, out):
    mine = {"notes.txt": b"my notes\n", "report.json": b'{"mine": true}\n', ".notes.tmp-1-abcdabcd": b"x",
            "train-00001.tar": b"not a shard name"}
    for path, data in mine.items():
        put(out, path, data)
    for args in ((), ("--resume",)):
        assert one_line(run(tree, out, *args)) == (
            f"{out}: holds files that `convert shards` did not write (.notes.tmp-1-abcdabcd, notes.txt, report.json "
            "and 1 more); it never overwrites or deletes them: choose an empty folder, or move them away")
        assert files(out) == mine  # byte for byte, and nothing added


def test_resume_never_deletes_a_file_named_like_a_shard_that_no_record_names(tree, clean, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(clean, out)
    (out / "train-000099.tar").write_bytes(b"a user's file")
    before = files(str(out))
    assert one_line(run(tree, str(out), "--resume")) == (
        f"{out}: holds train-000099.tar, named as this conversion names its shards but in none of its commit records "
        "(not written by it?): it is never overwritten or deleted; move it away and run again")
    assert files(str(out)) == before
    # Interrupted after its first train shard (no lock left: it was not killed): the next shard's
    # number is no proof either.
    (out / "train-000099.tar").unlink()
    for p in [*out.glob("*.tar"), *out.glob("*.idx"), *(out / ".parts").glob("*.json"), out / "manifest.json",
              out / "report.json"]:
        if not p.name.startswith(("train-000000.", "options.")):
            p.unlink()
    (out / "train-000001.tar").write_bytes(b"a user's file")
    before = files(str(out))
    assert one_line(run(tree, str(out), "--resume")).startswith(f"{out}: holds train-000001.tar, named as ")
    assert files(str(out)) == before


# --- runs that convert nothing, or reject too much -------------------------------------------------

def labels_file(path: Path, names: list[str]) -> Path:
    one_hot = [1.0] + [0.0] * 16
    path.write_text(json.dumps({"format": "sen12ms-igbp-probability-labels", "version": 1,
                                "labels": {n: one_hot for n in names}}))
    return path


def test_a_conversion_that_converts_nothing_fails_in_one_line_without_a_manifest(tree, tmp_path):
    labels = labels_file(tmp_path / "labels.json", ["ROIs1158_spring_s2_999_p1.tif"])  # of another tree
    out = tmp_path / "out"
    n = len(scan_tree(str(tree)).triplets)
    first = sorted(t.key for t in scan_tree(str(tree)).triplets)
    message = one_line(run(tree, str(out), "--labels", str(labels)))
    report = json.loads((out / "report.json").read_text())
    example = next(r for r in report["rejected"] if r["id"] in first)
    assert message.startswith(f"{out}: no sample converted: {n} of {n} inputs rejected, all {n} for the same "
                              "reason, e.g. ")
    assert message.endswith(f"(listed in {out / 'report.json'}; no manifest was written)")
    assert example["reason"] == f"no label for {example['id']}.tif in {labels}"
    assert sum(report["converted"].values()) == 0 and not (out / "manifest.json").exists()


def test_more_rejections_than_max_rejected_fail_and_resume_accepts_them_when_asked(tree, tmp_path):
    names = sorted(t.id.filename() for t in scan_tree(str(tree)).triplets)
    labels = labels_file(tmp_path / "labels.json", names[: len(names) // 2])
    out = tmp_path / "out"
    half = len(names) - len(names) // 2
    message = one_line(run(tree, str(out), "--labels", str(labels)))
    assert message.startswith(f"{out}: {half} of {len(names)} inputs rejected (50%), more than --max-rejected 0.05 "
                              f"allows; all {half} for the same reason, e.g. ")
    assert message.endswith("; if this is expected, run again with --resume --max-rejected 1)")
    assert (out / "report.json").exists() and not (out / "manifest.json").exists()
    accepted = run(tree, str(out), "--labels", str(labels), "--resume", "--max-rejected", "1")
    assert accepted.exit_code == 0 and "(0 samples processed, " in accepted.output, accepted.output
    rejected = [line for line in accepted.output.splitlines() if "rejected (" in line]
    assert len(rejected) == 1 and rejected[0].startswith(f"rejected ({half}), all for the same reason, e.g. [")
    assert (out / "manifest.json").exists()
    help_text = " ".join(CliRunner().invoke(cli, ["shards", "--help"]).output.split())
    assert ("--max-rejected SHARE Fail (exit 1, report written, no manifest) when more than this share of the inputs "
            "is rejected (the known broken triplet aside); a run that converts nothing always fails. [default: 0.05; "
            "0.0<=x<=1.0]"
            ) in help_text


# --- the mistakes a user makes first ---------------------------------------------------------------

def test_data_pointing_at_a_season_or_scene_folder_names_the_folder_to_give(tree, tmp_path):
    season = next(p for p in sorted(tree.iterdir()) if p.is_dir())
    scene = next(p for p in sorted(season.iterdir()) if p.name.startswith("s2_"))
    for folder in (season, scene):
        what = "season" if folder == season else "scene"
        assert one_line(run(folder, str(tmp_path / "out"))) == (
            f"{folder}: is a {what} folder of a SEN12MS tree, not the tree; give the folder that holds the season "
            f"folders: --data {tree}")
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.slow
def test_resume_into_a_folder_of_another_conversion_names_the_option_that_differs(tree, clean, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(clean, out)
    for args, differs in ((("--seed", "3"), "--seed 0 (this run: 3)"),
                          (("--codec", "lz4"), "--codec zstd (this run: lz4)"),
                          (("--modalities", "s2"), "--modalities s2,s1 (this run: s2)")):
        assert one_line(run(tree, str(out), "--resume", *args)) == (
            f"{out}: holds shards of a different conversion, made with {differs}; run with the same options, or "
            "choose an empty folder")
    assert files(str(out)) == files(str(clean))


@pytest.mark.parametrize("name", ["test_list.txt", "test_list.pkl"])
def test_labels_given_a_split_list_says_it_is_a_split_list(tree, toolbox_dir, tmp_path, name):
    split_list = toolbox_dir / name  # the original toolbox's official test list
    assert one_line(run(tree, str(tmp_path / "out"), "--labels", str(split_list))) == (
        f"{split_list}: is a split list (18106 S2 file names), not a label file; give its folder to --splits, and to "
        "--labels the IGBP_probability_labels.json of `convert labels` (or the original's .pkl)")


# --- OUT is read with one listing ---------------------------------------------------------------------

def test_resume_reads_out_with_one_listing_and_one_read_per_finished_shard(tree, clean, out, monkeypatch):
    for path, data in files(str(clean)).items():
        put(out, path, data)
    calls: list[tuple[str, str]] = []

    def counted(name: str):
        real = getattr(storage, name)

        def call(url, *args, **kw):
            if str(url).startswith(out):
                calls.append((name, str(url)[len(out):]))
            return real(url, *args, **kw)
        return call

    for name in ("find_sizes", "sizes", "find", "listdir", "exists", "size", "open_read"):
        monkeypatch.setattr(storage, name, counted(name))
    r = run(tree, out, "--resume")
    assert r.exit_code == 0 and "(0 samples processed, " in r.output, r.output
    assert [c for c in calls if c[0] != "open_read"] == [("find_sizes", "")]
    # The commit records (one per finished shard), the end records of the splits and the options.
    records = sorted(f"/.parts/{p.name}" for p in (clean / ".parts").iterdir())
    assert len(records) == len(list(clean.glob("*.tar"))) + 4
    assert sorted(path for _, path in calls if _ == "open_read") == records


def test_a_run_killed_while_taking_its_lock_is_no_obstacle_and_its_file_stays(tree, clean, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    token = "f0e1d2c3b4a5"
    half = out / f".{lock_name(None, token)}.tmp-{token}-0a0b0c0d"  # killed before the rename
    half.write_bytes(lock_text(None, dead_pid()).encode()[:20])
    r = run(tree, str(out))
    assert r.exit_code == 0, r.output
    assert files(str(out)) == dict(files(str(clean)), **{half.name: half.read_bytes()})
