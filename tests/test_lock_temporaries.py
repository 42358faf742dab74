"""The temporary of OUT's lock file: a run killed while it writes (or refreshes) its lock leaves no
file that a resumed run keeps, and a run removes a lock's temporary only when its holder is
provably gone (this machine and a dead pid, or a stale lock of another machine taken over with
--break-lock); never one of a live run or a file it cannot read as a lock. Local folders and s3://."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from outlocks import dead_pid, lock_text, plant_lock
from processwait import wait_group_exited

from convert.cli import cli
from convert.shards.outfolder import lock_name
from sen12ms_common.storage import files as storage

pytestmark = pytest.mark.slow  # conversions and a converter killed while it writes its lock

REPO = Path(__file__).resolve().parents[1]
HELD = Path(__file__).resolve().parent / "heldlockwrite.py"
SHARD_SIZE = "2MB"
OTHER = {"host": "node-b", "boot_id": "6c1b6f0e-0000-4000-8000-000000000000", "pid_ns": "pid:[4026531836]"}


def args(data: Path, out: str, *more: str) -> list[str]:
    return ["shards", "--data", str(data), "--out", str(out), "--shard-size", SHARD_SIZE, "--no-progress", *more]


def run(data: Path, out: str, *more: str):
    return CliRunner().invoke(cli, args(data, out, *more))


def files(out: str) -> dict[str, bytes]:
    return {p: storage.read_bytes(storage.join(out, *p.split("/"))) for p in sorted(storage.find_sizes(out))}


def put(out: str, name: str, text: str) -> str:
    storage.write_bytes(storage.join(out, name), text.encode())
    return name


def lock_temporary(token: str) -> str:
    """The name storage.temporary_name gives a write of this run's lock."""
    return f".{lock_name(None, token)}.tmp-{token}-0a0b0c0d"


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    from convert.sample.sen12ms import synthesize

    data = tmp_path_factory.mktemp("locktemps") / "sen12ms"
    synthesize(data, scenes=2, patches_per_scene=3, seed=7, progress=False)
    return data


@pytest.fixture(scope="module")
def clean(tree: Path, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("locktemps-clean") / "out")
    r = run(tree, out)
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(params=["local", "s3"])
def out(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "out")
    return storage.join(request.getfixturevalue("s3_prefix"), "out")


@pytest.mark.slow
@pytest.mark.parametrize("unnamed_files", [True, False], ids=["o_tmpfile", "no_o_tmpfile"])
def test_a_run_killed_while_writing_its_lock_leaves_nothing_after_resume(tree, clean, tmp_path, unnamed_files):
    out = tmp_path / "out"
    mark = tmp_path / "in-lock-write"
    env = dict(os.environ, SEN12MS_TEST_NO_O_TMPFILE="0" if unnamed_files else "1")
    proc = subprocess.Popen([sys.executable, str(HELD), str(mark), *args(tree, str(out))], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not mark.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert mark.exists(), proc.stderr.read().decode() if proc.poll() is not None else "never reached the lock"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        wait_group_exited(proc.pid, 20)
    left = sorted(p.name for p in out.iterdir())
    # Where unnamed files exist, the lock appears only complete: no temporary is ever seen.
    assert left == [] if unnamed_files else [n for n in left if n.startswith("..lock-")] == left != [], left
    r = run(tree, str(out), "--resume")
    assert r.exit_code == 0, r.output
    assert files(str(out)) == files(clean)


def test_the_lock_temporary_of_a_run_killed_while_taking_its_lock_is_removed(tree, clean, out):
    token = "f0e1d2c3b4a5"
    put(out, lock_temporary(token), lock_text(None, dead_pid()))  # killed between its fsync and rename
    r = run(tree, out, "--resume")
    assert r.exit_code == 0, r.output
    assert files(out) == files(clean)


def test_the_lock_temporary_of_a_run_killed_while_refreshing_its_lock_is_removed(tree, clean, out):
    token = "0a1b2c3d4e5f"
    pid = dead_pid()
    put(out, lock_name(None, token), lock_text(None, pid, started=time.time() - 120, refreshed=time.time() - 60))
    put(out, lock_temporary(token), lock_text(None, pid, started=time.time() - 120))
    r = run(tree, out, "--resume")
    assert r.exit_code == 0, r.output
    assert files(out) == files(clean)


def test_a_lock_temporary_of_a_live_run_or_unreadable_as_a_lock_stays(tree, clean, tmp_path):
    out = str(tmp_path / "out")
    live = put(out, lock_temporary("aaaaaaaaaaaa"), lock_text(None, os.getpid()))  # a run taking its lock now
    half = put(out, lock_temporary("bbbbbbbbbbbb"), lock_text(None, dead_pid())[:20])  # cannot tell whose
    other = put(out, f".{lock_name(None, 'cccccccccccc')}.tmp-dddddddddddd-0a0b0c0d",  # not written by that lock's run
                lock_text(None, dead_pid()))
    kept = {n: storage.read_bytes(storage.join(out, n)) for n in (live, half, other)}
    r = run(tree, out)
    assert r.exit_code == 0, r.output
    assert files(out) == dict(files(clean), **kept)


def test_a_lock_temporary_of_another_machine_is_removed_only_with_break_lock_once_stale(tree, clean, out):
    recent = put(out, lock_temporary("111111111111"), lock_text(None, 4242, started=time.time() - 30, **OTHER))
    stale = put(out, lock_temporary("222222222222"), lock_text(None, 4343, started=time.time() - 660,
                                                               refreshed=time.time() - 660, **OTHER))
    r = run(tree, out)
    assert r.exit_code == 0, r.output
    assert {recent, stale} <= set(files(out))  # without --break-lock: another machine's run may be writing it
    r = run(tree, out, "--resume", "--break-lock")
    assert r.exit_code == 0, r.output
    assert files(out) == dict(files(clean), **{recent: files(out)[recent]})
