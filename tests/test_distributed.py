"""Training under torchrun: 2 processes, gloo, CPU, on shards with uneven sample counts
(29 train samples in shards of 4 and 1: N is not divisible by the world size).

End to end with real `torchrun` processes: each rank reads a disjoint part, the same number of
batches; validation/test cover every sample exactly once; only rank 0 writes (each rank runs in
its own working directory, and rank 1's stays empty); the test metrics equal a single-process
evaluation of the same checkpoint; SIGTERM to one rank (or to torchrun) stops both at the same
step with a checkpoint and leaves no process behind, and the resumed run ends with the same
weights as the uninterrupted one (which also shows that a 2-process run is reproducible: they
are separate launches); --skip-bad-shards keeps the ranks in step.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch

from processwait import wait_exited
from runstops import GatedTrace, stop_points
from sen12ms_common.format.manifest import load_manifest

pytestmark = pytest.mark.slow  # torchrun training runs

REPO = Path(__file__).resolve().parents[1]
TRACED = REPO / "tests" / "tracedtrain.py"  # python -m train that writes the keys each rank used

# Batch size 1: 14 steps per epoch and rank, long enough to signal one in the middle of an epoch.
OPTIONS = ("--model", "SmallCNN", "--input", "rgb", "--label-type", "multi_label", "--batch-size", "1",
           "--stats", "manifest", "--seed", "17", "--epochs", "2")


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               OMP_NUM_THREADS="1", PYTHONFAULTHANDLER="1")  # a rank that aborts shows its threads' stacks
    env.update(extra)
    return env


def torchrun_cmd(base: Path, module: str, *args: str, trace: Path | None = None) -> list[str]:
    """2 processes on one node (--standalone: a free port); rank R runs in `base/rankR`, so
    relative paths (the run directory) show which rank wrote what. `trace`: `train` through
    tests/tracedtrain.py, which writes the keys each rank used into that folder."""
    for r in (0, 1):
        (base / f"rank{r}").mkdir(parents=True, exist_ok=True)
    script = 'cd "$0/rank$LOCAL_RANK" && exec "$1" "${@:2}"'
    program = ["-m", module] if trace is None else [str(TRACED), str(trace)]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "--no-python",
            "bash", "-c", script, str(base), sys.executable, *program, *args]


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it."""
    children: dict[int, list[int]] = defaultdict(list)
    for entry in Path("/proc").iterdir():
        try:
            children[int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])].append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    todo, found = [pid], []
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(children.get(p, []))
    return found


def alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants (torchrun starts its workers in sessions of
    their own, so a process group does not reach them)."""
    for p in descendants(pid):
        try:
            os.kill(p, signal.SIGKILL)
        except OSError:
            pass


def run(cmd: list[str], env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess:
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
        out, err = proc.communicate()
        raise AssertionError(f"hung: {' '.join(cmd)}\n{out}\n{err}") from None
    except BaseException:
        kill_tree(proc.pid)
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"{' '.join(proc.args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


def traced(trace: Path) -> dict[tuple[str, str], dict[int, list[str]]]:
    """(split, epoch) -> rank -> keys in the order that rank used them."""
    out: dict[tuple[str, str], dict[int, list[str]]] = defaultdict(lambda: defaultdict(list))
    for rank in (0, 1):
        for line in (trace / f"keys-rank{rank}.txt").read_text().splitlines():
            split, epoch, key = line.split()
            out[(split, epoch)][rank].append(key)
    return out


def split_keys(shards: Path, split: str) -> set[str]:
    import tarfile

    keys = set()
    for entry in load_manifest(str(shards)).shards(split):
        with tarfile.open(shards / entry.name) as t:
            keys.update(m.name.split(".", 1)[0] for m in t.getmembers())
    return keys


def final_checkpoint(run_dir: Path, log: str = "") -> Path:
    found = sorted((run_dir / "checkpoints").glob("*_checkpoint.pth"))
    assert len(found) == 1, f"expected one checkpoint in {run_dir}, found {found}\n{log}"
    return found[0]


def assert_same_weights(a: Path, b: Path) -> None:
    x, y = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    assert (x["step"], x["resume_epoch"], x["resume_batch"], x["best_prec"]) == \
        (y["step"], y["resume_epoch"], y["resume_batch"], y["best_prec"])
    for k, v in x["model_state_dict"].items():
        assert torch.equal(v, y["model_state_dict"][k]), k
    for k, state in x["optimizer_state_dict"]["state"].items():
        for name in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(state[name], y["optimizer_state_dict"]["state"][k][name]), (k, name)
    for r in (0, 1):
        assert torch.equal(x["rank_rng_states"][r]["torch"], y["rank_rng_states"][r]["torch"])


@pytest.fixture(scope="module")
def ddp_run(sample_shards: Path, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    base = tmp_path_factory.mktemp("ddp")
    proc = ok(run(torchrun_cmd(base, "train", "--shards", str(sample_shards), *OPTIONS, "--workers", "1",
                               "--run-dir", "run", trace=base / "trace"), _env()))
    return base, proc


# --- in-process: the plan and the real loader, per rank ---------------------------------------

@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_read_disjoint_parts_of_uneven_shards(sample_shards: Path, world_size: int):
    from train.data import make_loader
    from train.run.setup import loader_spec, make_setup

    manifest = load_manifest(str(sample_shards))
    counts = [e.samples for e in manifest.shards("train")]
    assert len(set(counts)) > 1 and sum(counts) % world_size != 0  # the case that could hang
    setup = make_setup(shards=str(sample_shards), model_name="SmallCNN", input_spec="rgb",
                       label_type="single_label", igbp="simple", threshold=0.1, stats="manifest", device="cpu",
                       manifest=manifest)

    def keys(split: str, train: bool, epoch: int) -> list[list[str]]:
        out = []
        for rank in range(world_size):
            loader = make_loader("webdataset", loader_spec(setup, str(sample_shards), split, batch_size=3,
                                                           train=train, seed=5, streams=2, verify=False,
                                                           rank=rank, world_size=world_size))
            batches = [b["key"] for b in loader.epoch(epoch)]
            assert len(batches) == len(loader)
            out.append([k for b in batches for k in b])
        return out

    for epoch in (0, 1):
        parts = keys("train", True, epoch)
        n = sum(counts)
        assert [len(p) for p in parts] == [n // world_size] * world_size  # the same batches on every rank
        union = set().union(*parts)
        assert len(union) == n - n % world_size and union <= split_keys(sample_shards, "train")
    for split in ("val", "test"):
        parts = keys(split, False, 0)
        assert sum(len(p) for p in parts) == len(set().union(*parts))  # disjoint
        assert set().union(*parts) == split_keys(sample_shards, split)  # every sample once


# --- end to end under torchrun ------------------------------------------------------------------

def test_two_processes_split_every_epoch_and_only_rank_0_writes(ddp_run, sample_shards: Path):
    base, proc = ddp_run
    seen = traced(base / "trace")
    n = load_manifest(str(sample_shards)).samples("train")
    train_keys = split_keys(sample_shards, "train")
    for epoch in ("0", "1"):
        r0, r1 = seen[("train", epoch)][0], seen[("train", epoch)][1]
        assert len(r0) == len(r1) == n // 2  # batch size 1: the same number of steps
        assert not set(r0) & set(r1) and set(r0) | set(r1) <= train_keys
        v0, v1 = seen[("val", epoch)][0], seen[("val", epoch)][1]
        assert not set(v0) & set(v1) and sorted(v0 + v1) == sorted(split_keys(sample_shards, "val"))
    assert seen[("train", "0")][0] != seen[("train", "1")][0]  # reshuffled per epoch
    t0, t1 = seen[("test", "-")][0], seen[("test", "-")][1]
    assert not set(t0) & set(t1) and sorted(t0 + t1) == sorted(split_keys(sample_shards, "test"))

    # Rank 1's working directory stays empty: checkpoints, logs, TensorBoard, scores are rank 0's.
    assert list((base / "rank1").iterdir()) == []
    run_dir = base / "rank0" / "run"
    assert len(list((run_dir / "logs").glob("*_arguments.txt"))) == 1
    assert sorted(p.name.split("_", 2)[2] for p in (run_dir / "checkpoints").iterdir()) == \
        ["checkpoint.pth", "model_best.pth"]
    for split in ("training", "val", "test"):  # one writer each (a second one adds an event file)
        assert len(list((run_dir / "logs" / "runs").glob(f"*/{split}/events.out.tfevents.*"))) == 1
    assert (run_dir / "test_scores.json").is_file() and (run_dir / "test_predictions.npz").is_file()
    (log,) = (run_dir / "logs").glob("*_train.log")
    for text in (log.read_text(), proc.stdout):  # one log line per epoch: rank 0's
        assert text.count("epoch 1/2: train loss") == 1 and text.count("epoch 2/2: train loss") == 1
        assert f"({2 * (n // 2)} samples" in text
    state = torch.load(final_checkpoint(run_dir), weights_only=True)
    assert (state["step"], state["resume_epoch"], state["data_order"]["world_size"]) == (2 * (n // 2), 2, 2)


def test_metrics_equal_a_single_process_evaluation(ddp_run, sample_shards: Path, tmp_path: Path):
    base, _ = ddp_run
    run_dir = base / "rank0" / "run"
    (best,) = (run_dir / "checkpoints").glob("*_model_best.pth")
    ok(run([sys.executable, "-m", "train.evaluate", "--shards", str(sample_shards), "--checkpoint", str(best),
            "--out", str(tmp_path / "single"), "--workers", "0", "--batch-size", "5"], _env()))
    # And the evaluation itself under torchrun (rank 0 writes into its own working directory).
    ok(run(torchrun_cmd(tmp_path / "ddp", "train.evaluate", "--shards", str(sample_shards), "--checkpoint",
                        str(best), "--out", "out", "--workers", "0", "--batch-size", "4"), _env()))
    assert list((tmp_path / "ddp" / "rank1").iterdir()) == []
    reference = json.loads((tmp_path / "single" / "test_scores.json").read_text())
    ref_pred = np.load(tmp_path / "single" / "test_predictions.npz")
    assert len(ref_pred["keys"]) == 12
    for folder in (run_dir, tmp_path / "ddp" / "rank0" / "out"):
        scores = json.loads((folder / "test_scores.json").read_text())
        assert scores.keys() == reference.keys()
        for k, v in reference.items():
            assert scores[k] == (pytest.approx(v, rel=1e-6, abs=1e-9) if isinstance(v, float) else v), k
        pred = np.load(folder / "test_predictions.npz")
        assert list(pred["keys"]) == list(ref_pred["keys"])  # sorted by key, each sample once
        np.testing.assert_array_equal(pred["y_true"], ref_pred["y_true"])
        np.testing.assert_allclose(pred["probs"], ref_pred["probs"], rtol=1e-5, atol=1e-6)


def test_shutdown_ends_the_gloo_threads_while_the_rank_still_holds_its_dist(tmp_path: Path):
    # A gloo group that lived on into interpreter finalization let a worker thread release a
    # collective's tensor there, which aborted rank 1 at exit ("terminate called without an
    # active exception"); `shutdown` must end the group, and with it its threads.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "tests" / "pgteardown.py")]
    proc = ok(run(cmd, _env()))
    reports = sorted((json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")),
                     key=lambda r: r["rank"])
    assert [r["rank"] for r in reports] == [0, 1], proc.stdout
    for r in reports:
        assert r["gathered"] == [{"rank": 0}, {"rank": 1}]
        assert "pt_gloo_runloop" in r["during"]  # the check sees gloo's threads while they run
        assert r["after"] == [], r


def _rank_pid(torchrun_pid: int, local_rank: int) -> int:
    """The worker process of `local_rank` (a child of torchrun's `bash -c`, which execs python)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == torchrun_pid and f"LOCAL_RANK={local_rank}".encode() in environ:
            return int(entry.name)
    raise AssertionError(f"no worker process of local rank {local_rank}")


def stop_point(err: str, steps_per_epoch: int, epochs: int, log: str) -> tuple[int, int, int]:
    """(epoch, batches of it trained, step) where both ranks say the signal stopped them; rank 0
    wrote the checkpoint in its own run directory."""
    points = stop_points(err, steps_per_epoch, epochs)
    assert len(points) == 2, log
    by_rank = {1 if p.rest.startswith("rank 0 ") else 0: p for p in points}
    assert set(by_rank) == {0, 1}, log
    assert by_rank[0].rest.startswith("checkpoint written to run/checkpoints/"), log
    assert by_rank[1].rest.endswith("(rank 1)"), log
    a, b = by_rank[0], by_rank[1]
    assert (a.epoch, a.batch, a.step) == (b.epoch, b.batch, b.step), log  # every rank stopped at the same step
    return a.epoch, a.batch, a.step


def assert_stopped_at(state: dict, trace: Path, where: tuple[int, int, int], steps_per_epoch: int) -> None:
    """The checkpoint resumes where the ranks stopped, and each rank trained exactly that far."""
    epoch, batch, step = where
    assert (state["step"], state["resume_epoch"], state["resume_batch"]) == (step, epoch, batch)
    assert 0 <= batch < steps_per_epoch
    seen = traced(trace)
    for e in range(epoch + 1):
        want = batch if e == epoch else steps_per_epoch
        assert len(seen[("train", str(e))][0]) == len(seen[("train", str(e))][1]) == want, e


def test_sigterm_to_one_rank_checkpoints_and_the_resumed_run_matches(ddp_run, sample_shards: Path, tmp_path: Path):
    base, _ = ddp_run
    trace = tmp_path / "trace"
    cmd = torchrun_cmd(tmp_path, "train", "--shards", str(sample_shards), *OPTIONS, "--workers", "0",
                       "--run-dir", "run", trace=trace)
    # Signal rank 1 (only) once it has trained its first batch of epoch 1 (it waits for the trace to be read).
    gate = GatedTrace(trace / "keys-rank1.txt", when=lambda text: "train 1 " in text,
                      act=lambda: os.kill(_rank_pid(proc.pid, 1), signal.SIGTERM))
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=240)
    except BaseException:
        kill_tree(proc.pid)
        raise
    finally:
        gate.close()
    log = out + "\n=====\n" + err
    assert gate.acted.is_set(), log
    assert proc.returncode != 0, log  # torchrun reports the stopped workers
    assert err.count("exitcode  : 143") == 2 or err.count(f"exitcode  : {128 + signal.SIGTERM}") == 2, log
    run_dir = tmp_path / "rank0" / "run"
    ckpt = final_checkpoint(run_dir, log)
    assert f"checkpoint written to run/checkpoints/{ckpt.name}" in err  # by rank 0, in its directory
    assert list((tmp_path / "rank1").iterdir()) == []
    n = load_manifest(str(sample_shards)).samples("train") // 2
    # In epoch 1: after its first step, or a step later where the signal and the step race.
    where = stop_point(err, n, 2, log)
    state = torch.load(ckpt, weights_only=True)
    assert where[0] == 1 and where[1] >= 1
    assert_stopped_at(state, trace, where, n)
    assert not (run_dir / "test_scores.json").exists()

    # Resume under torchrun (every rank reads the checkpoint); the end equals the uninterrupted run.
    resumed = ok(run(torchrun_cmd(tmp_path, "train", "--resume", str(ckpt), "--workers", "0"), _env()))
    assert f"resumed from {ckpt}: epoch {where[0] + 1}, batch {where[1]}" in resumed.stdout  # shown from 1
    assert "change the data order" not in resumed.stderr
    assert_same_weights(ckpt, final_checkpoint(base / "rank0" / "run"))
    assert json.loads((run_dir / "test_scores.json").read_text()) == \
        json.loads((base / "rank0" / "run" / "test_scores.json").read_text())


def test_sigterm_to_torchrun_stops_every_rank_at_the_same_step(sample_shards: Path, tmp_path: Path):
    trace = tmp_path / "trace"
    # Many epochs: torchrun passes the signal on while the run goes on, which must not end first.
    cmd = torchrun_cmd(tmp_path, "train", "--shards", str(sample_shards), *OPTIONS[:-2], "--epochs", "50",
                       "--workers", "1", "--run-dir", "run", trace=trace)
    seen: dict[str, list[int]] = {}

    def stop_job() -> None:
        seen["ranks"] = [_rank_pid(proc.pid, r) for r in (0, 1)]
        seen["tree"] = descendants(proc.pid)[1:]  # ranks, their fork servers and loader workers
        # As a scheduler does: torchrun passes it on to every worker's process group (with the
        # loader workers in it, which may be starting: a new one per epoch and split).
        proc.send_signal(signal.SIGTERM)

    # Once rank 0 has trained a step (it waits for the trace to be read).
    gate = GatedTrace(trace / "keys-rank0.txt", when=lambda text: "train 0 " in text, act=stop_job)
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=240)
    except BaseException:
        kill_tree(proc.pid)
        raise
    finally:
        gate.close()
    log = out + "\n=====\n" + err
    assert gate.acted.is_set(), log
    ranks, tree = seen["ranks"], seen["tree"]
    assert proc.returncode != 0, log
    assert not any(alive(pid) for pid in ranks)  # every rank exited
    # Helpers notice their parent's exit within a few seconds.
    assert not wait_exited(tree, timeout=15), "processes left behind"
    n = load_manifest(str(sample_shards)).samples("train") // 2
    where = stop_point(err, n, 50, log)
    state = torch.load(final_checkpoint(tmp_path / "rank0" / "run", log), weights_only=True)
    assert where[2] > 0
    assert_stopped_at(state, trace, where, n)


def test_torchrun_environment_is_read_and_checked():
    from train.run.distributed import Dist, init_from_env, rank_seed, ranks_from_env
    from sen12ms_common.errors import UnavailableError

    assert ranks_from_env({}) == (0, 1, 0)
    assert ranks_from_env({"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}) == (5, 8, 1)
    with pytest.raises(UnavailableError, match="RANK=8, WORLD_SIZE=8, LOCAL_RANK=0"):
        ranks_from_env({"RANK": "8", "WORLD_SIZE": "8", "LOCAL_RANK": "0"})
    with pytest.raises(UnavailableError, match="must be integers"):
        ranks_from_env({"RANK": "x", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    # One process (also torchrun --nproc_per_node 1): no process group, the device as asked.
    assert init_from_env("cpu", {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}) == (Dist(), torch.device("cpu"))
    assert rank_seed(17, 0) == 17 and len({rank_seed(17, r) for r in range(4)}) == 4


def test_skip_bad_shards_keeps_the_ranks_in_step(sample_shards: Path, tmp_path: Path):
    shards = tmp_path / "shards"
    shutil.copytree(sample_shards, shards)
    manifest = load_manifest(str(shards))
    lost = manifest.shards("train")[2]
    (shards / lost.name).unlink()
    trace = tmp_path / "trace"
    proc = ok(run(torchrun_cmd(tmp_path, "train", "--shards", str(shards), *OPTIONS[:-2], "--epochs", "1",
                               "--workers", "0", "--skip-bad-shards", "--run-dir", "run", trace=trace), _env()))
    seen = traced(trace)
    r0, r1 = seen[("train", "0")][0], seen[("train", "0")][1]
    n = manifest.samples("train") // 2
    # One rank lost the shard's samples; both stopped at the step where it ran out.
    assert len(r0) == len(r1) < n and n - len(r0) <= lost.samples
    assert not set(r0) & set(r1)
    assert "skipped so far: 1 bad shard(s)" in proc.stdout and lost.name in proc.stdout
    assert (tmp_path / "rank0" / "run" / "test_scores.json").is_file()
