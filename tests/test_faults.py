"""Faults: the converter killed at random points (kill -9, Ctrl-C, a dying worker) and resumed
writes the bytes of an uninterrupted run; a disk that fills up leaves no partial shard and a
one-line error; a shard deleted or damaged under a running training is named (and skipped only
with --skip-bad-shards, counted in the log).

SIGTERM during training (checkpoint written, resumed run continues from the same step and ends
with the same weights) is tested in tests/test_resume.py."""

from __future__ import annotations

import json
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Callable

import pytest

from processwait import wait_group_exited
from runstops import GatedTrace
from sen12ms_common.format.manifest import load_manifest

pytestmark = pytest.mark.slow  # conversions and trainings killed and resumed in subprocesses

REPO = Path(__file__).resolve().parents[1]
HELD = Path(__file__).resolve().parent / "heldconvert.py"
TRACED = Path(__file__).resolve().parent / "tracedtrain.py"  # python -m train that writes the keys it used
SHARD_SIZE = "2MB"  # about one sample per shard: many commit points


def all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def converter(data: Path, out: Path, *args: str, workers: int = 1, trace: Path | None = None) -> list[str]:
    """The command line of `convert shards`; with `trace`, one that appends each commit to it (tests/heldconvert.py)."""
    start = [sys.executable, "-m", "convert"] if trace is None else [sys.executable, str(HELD), str(trace)]
    return start + ["shards", "--data", str(data), "--out", str(out), "--workers", str(workers), "--shard-size",
                    SHARD_SIZE, "--no-progress", *args]


def wait_gone(pgid: int, timeout: float = 20) -> None:
    """Every process of a job (the converter and its workers) has ended."""
    if wait_group_exited(pgid, timeout):
        return
    os.killpg(pgid, signal.SIGKILL)  # leave no orphan behind
    pytest.fail("worker processes outlived the converter")


def committed(out: Path) -> list[str]:
    """Shards with a commit record, checked against it (size and sha256)."""
    import hashlib

    names = []
    for record in sorted((out / ".parts").glob("*-[0-9]*.json")):
        rec = json.loads(record.read_text())
        tar = out / rec["name"]
        assert tar.stat().st_size == rec["bytes"] and hashlib.sha256(tar.read_bytes()).hexdigest() == rec["sha256"]
        names.append(rec["name"])
    return names


def no_partial_shards(out: Path) -> None:
    """Every shard in OUT is a committed one; no temporary is left."""
    assert sorted(p.name for p in out.glob("*.tar")) == sorted(committed(out))
    assert [p for p in out.rglob("*") if ".tmp-" in p.name] == []


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    from convert.sample.sen12ms import synthesize

    data = tmp_path_factory.mktemp("faults") / "sen12ms"
    synthesize(data, scenes=3, patches_per_scene=5, seed=21, progress=False)
    return data


@pytest.fixture(scope="module")
def clean(tree: Path, tmp_path_factory) -> tuple[Path, float]:
    """An uninterrupted run, and how long it took (start-up included)."""
    out = tmp_path_factory.mktemp("clean") / "out"
    t0 = time.monotonic()
    proc = subprocess.run(converter(tree, out), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(list(out.glob("*.tar"))) >= 10
    return out, time.monotonic() - t0


# --- the converter killed and resumed ------------------------------------------------------------------

def run_held_at_first_commit(tree: Path, out: Path, tmp_path: Path, act: Callable[[subprocess.Popen], None],
                             workers: int = 2) -> tuple[int, str]:
    """Runs the converter, which waits after its first committed shard until `act(proc)` (a kill,
    a signal) has run: however late the test is scheduled, that reaches a run that is mid-way.
    Returns the exit status and stderr once every process of the job has ended."""
    trace, log = tmp_path / "commits", tmp_path / "held-stderr"
    started: list[subprocess.Popen] = []
    gate = GatedTrace(trace, when=lambda text: True, act=lambda: act(started[0]))
    with open(log, "wb") as err:  # a file, not a pipe: a lingering worker cannot block the test
        proc = subprocess.Popen(converter(tree, out, workers=workers, trace=trace), cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    started.append(proc)
    try:
        proc.wait(timeout=120)
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    finally:
        gate.close()
    wait_gone(proc.pid)
    assert gate.acted.is_set(), log.read_text()
    return proc.returncode, log.read_text()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_converter_killed_at_random_points_and_resumed_writes_the_bytes_of_a_clean_run(tree, clean, tmp_path, seed):
    clean_out, seconds = clean
    rng = random.Random(seed)
    out = tmp_path / "out"
    states = []
    for attempt in range(3):
        workers = rng.choice((1, 2))
        whole_job = rng.random() < 0.5

        def kill(proc: subprocess.Popen) -> None:
            if whole_job:
                os.killpg(proc.pid, signal.SIGKILL)  # the whole job
            else:
                proc.kill()  # the main process only: its workers must not outlive it

        if attempt == 0:  # the first kill lands after a shard was committed: a mid-way state
            delay = rng.uniform(0, 0.1)
            returncode, err = run_held_at_first_commit(tree, out, tmp_path, lambda p: (time.sleep(delay), kill(p)),
                                                       workers=workers)
        else:  # then anywhere, start-up included
            log = tmp_path / f"stderr-{attempt}"
            with open(log, "wb") as f:
                proc = subprocess.Popen(converter(tree, out, "--resume", workers=workers), cwd=REPO,
                                        stdout=subprocess.DEVNULL, stderr=f, start_new_session=True)
            try:
                proc.wait(timeout=rng.uniform(0.05, 1.0) * seconds)
            except subprocess.TimeoutExpired:
                kill(proc)
                proc.wait(timeout=60)
            wait_gone(proc.pid)  # its workers died with it
            returncode, err = proc.returncode, log.read_text()
        if returncode == 0:
            break
        assert returncode == -signal.SIGKILL, err
        states.append((len(committed(out)), (out / "manifest.json").exists()))
    assert states and states[0][0] >= 1 and not states[0][1], states  # killed mid-way at least once
    final = subprocess.run(converter(tree, out, "--resume"), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stdout + final.stderr
    a, b = all_files(clean_out), all_files(out)
    assert sorted(a) == sorted(b)
    assert [n for n in a if a[n] != b[n]] == []


@pytest.fixture
def sigint_as_in_a_terminal():
    """Children of a background job of a non-interactive shell (how CI may start the tests)
    inherit SIGINT ignored, and Python then installs no KeyboardInterrupt handler; a handler here
    is reset to the default in a child at exec, as in a terminal's job."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def test_ctrl_c_stops_without_traceback_or_partial_shard_and_resume_completes(tree, clean, tmp_path,
                                                                            sigint_as_in_a_terminal):
    out = tmp_path / "out"
    # What a terminal sends to the whole job, once the first shard is committed.
    returncode, err = run_held_at_first_commit(tree, out, tmp_path, lambda p: os.killpg(p.pid, signal.SIGINT))
    assert (out / ".parts" / "train-000000.json").exists() and not (out / "manifest.json").exists()
    assert returncode == 1 and err.strip() == (
        f"Aborted! The finished shards are kept; continue with: python -m convert shards --data {tree} --out {out} "
        f"--shard-size {SHARD_SIZE} --workers 2 --no-progress --resume")
    no_partial_shards(out)
    refused = subprocess.run(converter(tree, out), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 1 and refused.stderr.strip() == (
        f"Error: {out}: already holds an unfinished conversion ({len(committed(out))} shards); pass --resume to "
        "continue it, or choose an empty folder")
    kept = len(committed(out))
    resumed = subprocess.run(converter(tree, out, "--resume"), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0 and f"resuming: keeping {kept} finished shard(s)" in resumed.stderr
    assert all_files(out) == all_files(clean[0])


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads child processes from /proc")
def test_a_killed_worker_stops_the_run_with_a_one_line_error(tree, tmp_path):
    out = tmp_path / "out"

    def kill_worker(proc: subprocess.Popen) -> None:  # as the out-of-memory killer would
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        os.kill(int(children[0]), signal.SIGKILL)

    returncode, err = run_held_at_first_commit(tree, out, tmp_path, kill_worker)
    assert returncode == 1 and not (out / "manifest.json").exists()
    assert err.strip().splitlines() == ["Error: a worker process died (killed by the system, out of memory?); the "
                                        "finished shards are kept: run again with --resume (and fewer --workers)"]
    no_partial_shards(out)


# --- a full disk ---------------------------------------------------------------------------------------

def _private_tmpfs_works(probe_dir: Path) -> str | None:
    """Why a small tmpfs cannot be mounted in a private mount namespace here, or None."""
    if os.geteuid() != 0:
        return "mounting a small tmpfs needs root (the RLIMIT_FSIZE test below still runs)"
    if shutil.which("unshare") is None:
        return "no unshare(1) to mount a tmpfs in a private namespace"
    probe_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                           f"mount -t tmpfs -o size=1m tmpfs '{probe_dir}'"], capture_output=True, text=True)
    return None if proc.returncode == 0 else f"cannot mount a tmpfs here: {proc.stderr.strip()}"


def test_a_disk_that_fills_up_leaves_no_partial_shard_and_resume_completes(tree, clean, tmp_path):
    """A real small file system (tmpfs of 4 MiB, in a mount namespace of its own so that nothing
    stays mounted): ENOSPC in the middle of a shard."""
    why = _private_tmpfs_works(tmp_path / "probe")
    if why:
        pytest.skip(why)
    mnt, snap, logs = tmp_path / "mnt", tmp_path / "after_failure", tmp_path / "logs"
    mnt.mkdir()
    logs.mkdir()
    out = mnt / "out"
    first = " ".join(f"'{a}'" for a in converter(tree, out))
    again = " ".join(f"'{a}'" for a in converter(tree, out, "--resume"))
    script = f"""
        mount -t tmpfs -o size=4m tmpfs '{mnt}' || exit 90
        cd '{REPO}'
        {first} > '{logs}/out1' 2> '{logs}/err1'; echo $? > '{logs}/rc1'
        cp -a '{out}' '{snap}'
        mount -o remount,size=64m '{mnt}' || exit 91
        {again} > '{logs}/out2' 2> '{logs}/err2'; echo $? > '{logs}/rc2'
        cp -a '{out}' '{tmp_path}/resumed'
    """
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (logs / "rc1").read_text().strip() == "1"
    err = (logs / "err1").read_text()
    m = re.fullmatch(rf"Error: {re.escape(str(out))}/(?P<name>(?P<split>[a-z]+)-(?P<i>\d{{6}})\.tar): cannot write "
                     r"\(No space left on device\); nothing partial was left, the finished shards are kept: fix it "
                     r"and run again with --resume\n", err)
    assert m, err
    kept = committed(snap)
    assert len(kept) >= 2  # it failed part-way, after some shards were done
    assert m["name"] not in kept and int(m["i"]) == sum(1 for n in kept if n.startswith(m["split"] + "-"))
    no_partial_shards(snap)
    assert not (snap / "manifest.json").exists() and not (snap / "report.json").exists()
    # With space again, --resume keeps the finished shards and ends with the bytes of a clean run.
    assert (logs / "rc2").read_text().strip() == "0", (logs / "err2").read_text()
    assert f"resuming: keeping {len(kept)} finished shard(s)" in (logs / "err2").read_text()
    assert all_files(tmp_path / "resumed") == all_files(clean[0])


def test_a_file_size_limit_leaves_no_partial_shard_and_a_one_line_error(tree, tmp_path):
    """Without root (no tmpfs): RLIMIT_FSIZE makes writes past 3 MB fail (EFBIG) as a full disk
    would (ENOSPC), through the same code path."""
    out = tmp_path / "out"

    def small_disk() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (3_000_000, 3_000_000))

    cmd = converter(tree, out)
    cmd[cmd.index(SHARD_SIZE)] = "8MB"
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, preexec_fn=small_disk, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr == (f"Error: {out}/train-000000.tar: cannot write (File too large); nothing partial was left, "
                           "the finished shards are kept: fix it and run again with --resume\n")
    no_partial_shards(out)
    assert not (out / "manifest.json").exists()


# --- a shard deleted or damaged under a running training -----------------------------------------------

TRAIN = ("--model", "SmallCNN", "--input", "rgb", "--batch-size", "1", "--epochs", "1", "--workers", "1",
         "--streams", "1", "--shuffle-buffer", "1", "--stats", "manifest", "--seed", "9")
PREFETCH_MARGIN = 6  # samples a loader worker may have read ahead of the last trained step


def read_order(shards: Path) -> list[tuple[int, int]]:
    """(shard index, position of its first sample) in the order epoch 0 reads them (TRAIN's options)."""
    from train.data.plan import epoch_plan

    counts = [e.samples for e in load_manifest(str(shards)).shards("train")]
    plan = epoch_plan(counts, batch_size=1, seed=9, epoch=0, shuffle=True, streams=1)
    out, pos = [], 0
    for sl in plan.streams[0].slices:
        out.append((sl.shard, pos))
        pos += sl.stop - sl.start
    return out


def damage_first_sample(shard: Path) -> str:
    """Flip a byte in the middle of band B2 (in every input) of the first sample's S2 member (same
    size); returns its key."""
    import numpy as np

    with tarfile.open(shard) as t:
        info = next(m for m in t.getmembers() if m.name.endswith(".s2.zst"))
        sizes = np.frombuffer(t.extractfile(info.name.replace(".s2.zst", ".s2.zstsizes")).read(), "<i4")
    data = bytearray(shard.read_bytes())
    data[info.offset_data + int(sizes[0]) + int(sizes[1]) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    return info.name.split(".", 1)[0]


def trained(trace: Path) -> list[str]:
    if not trace.exists():
        return []
    return [line.split()[2] for line in trace.read_text().splitlines() if line.startswith("train ")]


def shard_keys(shard: Path) -> list[str]:
    with tarfile.open(shard) as t:
        return list(dict.fromkeys(m.name.split(".", 1)[0] for m in t.getmembers()))


def test_a_shard_deleted_or_damaged_under_a_running_training_is_named_and_skipped_only_when_asked(
        sample_shards, tmp_path):
    entries = load_manifest(str(sample_shards)).shards("train")
    # Shards read well after the first step, however fast this machine trains.
    order = [(i, pos) for i, pos in read_order(sample_shards) if pos >= 2 * PREFETCH_MARGIN]
    assert len(order) >= 2, "the shard set needs two train shards read well after the first step"
    (a, pos_a), (b, _) = order[0], order[1]
    faults = {"delete": {a: "delete"}, "damage": {a: "damage"}, "skip": {a: "delete", b: "damage"}}
    runs, gates, damaged_key, went = {}, {}, {}, {}

    def inject(name: str) -> None:
        # The run waits for its trace to be read after its first step; its loader worker may
        # read ahead meanwhile: stop the whole job while its shards change.
        os.killpg(runs[name].pid, signal.SIGSTOP)
        went[name] = sum(line.startswith("train ") for line in gates[name].lines)
        for i, fault in faults[name].items():
            shard = tmp_path / name / "shards" / entries[i].name
            if fault == "delete":
                shard.unlink()
            else:
                damaged_key[(name, i)] = damage_first_sample(shard)
        os.killpg(runs[name].pid, signal.SIGCONT)

    try:
        for name in faults:
            shards = tmp_path / name / "shards"
            shutil.copytree(sample_shards, shards)
            run_dir = tmp_path / name / "run"
            gates[name] = GatedTrace(tmp_path / name / "trace" / "keys-rank0.txt",
                                     when=lambda text: "train " in text, act=lambda name=name: inject(name))
            args = ["--skip-bad-shards"] if name == "skip" else []
            runs[name] = subprocess.Popen(
                [sys.executable, str(TRACED), str(tmp_path / name / "trace"), "--shards", str(shards), "--run-dir",
                 str(run_dir), *TRAIN, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                start_new_session=True)
        results = {name: proc.communicate(timeout=300) for name, proc in runs.items()}
    finally:
        for proc in runs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGCONT)
                proc.kill()
        for gate in gates.values():
            gate.close()
    for name in faults:
        assert gates[name].acted.is_set(), results[name]
        assert went[name] + PREFETCH_MARGIN <= pos_a, f"{name}: the run went too far ({went[name]} steps) before the fault"

    def ckpt(name: str) -> Path:
        return next((tmp_path / name / "run" / "checkpoints").glob("*_checkpoint.pth"))

    url_a = {name: tmp_path / name / "shards" / entries[a].name for name in faults}
    # Without --skip-bad-shards: stopped at the bad shard, named, with a checkpoint of the steps so far.
    out, err = results["delete"]
    assert runs["delete"].returncode == 1, out + err
    assert err.splitlines()[-1] == (f"Error: {url_a['delete']}: shard is missing (checkpoint of step {pos_a} written "
                                    f"to {ckpt('delete')}; continue with --resume {ckpt('delete')})")
    assert len(trained(tmp_path / "delete" / "trace" / "keys-rank0.txt")) == pos_a
    out, err = results["damage"]
    assert runs["damage"].returncode == 1, out + err
    last = err.splitlines()[-1]
    # Checked whole before any of its samples is used: none of the damaged shard is trained on.
    assert last.startswith(f"Error: {url_a['damage']}: content does not match the manifest (xxh3-128 ")
    assert last.endswith(f" (checkpoint of step {pos_a} written to {ckpt('damage')}; continue with --resume "
                         f"{ckpt('damage')})")
    assert len(trained(tmp_path / "damage" / "trace" / "keys-rank0.txt")) == pos_a

    # With --skip-bad-shards: the deleted shard and the damaged one are reported and counted;
    # every sample of the other shards is trained on.
    out, err = results["skip"]
    assert runs["skip"].returncode == 0, out + err
    url_b = tmp_path / "skip" / "shards" / entries[b].name
    bad_key = damaged_key[("skip", b)]
    got = trained(tmp_path / "skip" / "trace" / "keys-rank0.txt")
    bad_keys = set(shard_keys(sample_shards / entries[a].name)) | set(shard_keys(sample_shards / entries[b].name))
    assert bad_key in bad_keys
    assert sorted(got) == sorted(k for e in entries for k in shard_keys(sample_shards / e.name) if k not in bad_keys)
    epoch_line = next(line for line in out.splitlines() if line.startswith("epoch 1/1:"))
    assert "train loss " in epoch_line and f"({len(got)} samples, " in epoch_line
    assert epoch_line.endswith("; skipped so far: 2 bad shard(s)/sample(s)")
    summary = next(line for line in out.splitlines() if line.startswith("train: skipped "))
    assert summary.startswith(f"train: skipped 2 bad shard(s)/sample(s): {url_a['skip']}: shard is missing; "
                              f"{url_b}: content does not match the manifest (xxh3-128 ")
    assert (tmp_path / "skip" / "run" / "test_scores.json").exists()
    log = next((tmp_path / "skip" / "run" / "logs").glob("*_train.log")).read_text()
    assert epoch_line in log and summary in log
