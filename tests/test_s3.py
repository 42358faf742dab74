"""Object storage against a real S3 server (SeaweedFS, started by tests/s3server.py).

Reads, writes, listings, errors and retries of `sen12ms_common.storage.files`, GeoTIFF trees in a
bucket, and the converter / verifier / trainer round trip through `s3://`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from s3server import (FaultProxy, WeedServer, apply_env, clear_s3_caches, fault_proxy,  # noqa: F401  (fixture)
                      start_server)
from webdataset_s3 import ShardOpener, gopen_s3, register_gopen

from bench.cases.s3rows import read_throughput
from sen12ms_common.errors import ShardError, StorageAccessError, StorageNotFoundError, StorageUnavailableError
from sen12ms_common.format.manifest import load_manifest
from sen12ms_common.storage import files as storage
from sen12ms_common.storage.files import RetryPolicy

pytestmark = pytest.mark.slow  # a real S3 server, conversions and training through it

REPO = Path(__file__).resolve().parents[1]
FAST = RetryPolicy(attempts=3, backoff=0.05, max_backoff=0.2)
CREDENTIALS_HINT = "(check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"


def payload(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def pending_uploads(server: WeedServer, url: str) -> list[str]:
    bucket, key = url[len("s3://"):].split("/", 1)
    resp = server.client().list_multipart_uploads(Bucket=bucket, Prefix=key)
    return [u["UploadId"] for u in resp.get("Uploads", []) if u["Key"] == key]


# --- configuration: only the standard AWS variables and files ----------------------------------

def test_endpoint_and_credentials_from_aws_variables(s3_prefix: str, s3_env: WeedServer) -> None:
    url = storage.join(s3_prefix, "hello.txt")
    storage.write_text(url, "via AWS_ENDPOINT_URL")
    # The same object through the client the tests trust, addressed without our code.
    body = s3_env.client().get_object(Bucket=s3_env.bucket, Key=url.split("/", 3)[3])["Body"].read()
    assert body == b"via AWS_ENDPOINT_URL"
    assert storage.read_text(url) == "via AWS_ENDPOINT_URL"


def test_endpoint_from_service_variable_and_profile(s3_prefix: str, s3_env: WeedServer, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    url = storage.join(s3_prefix, "profile.txt")
    storage.write_text(url, "x")
    endpoint = s3_env.endpoint
    # AWS_ENDPOINT_URL_S3 alone.
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
    clear_s3_caches()
    assert storage.read_text(url) == "x"
    # A named profile: endpoint in the config file, keys in the credentials file, no key variables.
    config, creds = tmp_path / "config", tmp_path / "credentials"
    config.write_text(f"[profile sen12ms-test]\nregion = {s3_env.region}\nendpoint_url = {endpoint}\n")
    creds.write_text(f"[sen12ms-test]\naws_access_key_id = {s3_env.access_key}\n"
                     f"aws_secret_access_key = {s3_env.secret_key}\n")
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    monkeypatch.setenv("AWS_PROFILE", "sen12ms-test")
    clear_s3_caches()
    assert storage.read_text(url) == "x"
    # And without any credentials: one line saying where they come from.
    monkeypatch.delenv("AWS_PROFILE")
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    clear_s3_caches()
    with pytest.raises(StorageAccessError) as err:
        storage.read_text(url)
    assert str(err.value) == f"{url}: no S3 credentials (set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)"


# --- listing -------------------------------------------------------------------------------

def test_listdir_exists_sizes_on_prefixes(s3_prefix: str, s3_env: WeedServer) -> None:
    for name, n in (("train-000000.tar", 10), ("train-000000.idx", 3), ("sub/deeper.txt", 1)):
        storage.write_bytes(storage.join(s3_prefix, name), b"x" * n)
    assert storage.listdir(s3_prefix) == ["train-000000.idx", "train-000000.tar"]
    assert storage.listdir(s3_prefix + "/") == ["train-000000.idx", "train-000000.tar"]
    assert storage.sizes(s3_prefix) == {"train-000000.idx": 3, "train-000000.tar": 10}
    assert storage.listdir(storage.join(s3_prefix, "sub")) == ["deeper.txt"]
    assert storage.exists(s3_prefix) and storage.exists(storage.join(s3_prefix, "sub"))
    assert storage.exists(storage.join(s3_prefix, "train-000000.tar"))
    assert not storage.exists(storage.join(s3_prefix, "train-000001.tar"))
    assert not storage.exists(storage.join(s3_prefix, "nothing-here"))
    assert storage.listdir(storage.join(s3_prefix, "nothing-here")) == []
    assert storage.size(storage.join(s3_prefix, "train-000000.tar")) == 10
    storage.remove(storage.join(s3_prefix, "train-000000.idx"))
    storage.remove(storage.join(s3_prefix, "train-000000.idx"))  # removing twice is fine
    assert storage.listdir(s3_prefix) == ["train-000000.tar"]
    assert storage.exists(f"s3://{s3_env.bucket}") and not storage.exists("s3://no-such-bucket-here")
    with pytest.raises(StorageNotFoundError) as err:
        storage.listdir("s3://no-such-bucket-here/prefix")
    assert str(err.value) == "s3://no-such-bucket-here/prefix: no such bucket 'no-such-bucket-here'"


# --- writes ------------------------------------------------------------------------------------

def test_large_write_is_multipart_and_invisible_until_complete(s3_prefix: str, s3_env: WeedServer) -> None:
    url = storage.join(s3_prefix, "train-000000.tar")
    data = payload(12 << 20)
    with storage.atomic_open(url, part_size=5 << 20) as f:
        for i in range(0, len(data), 1 << 20):
            f.write(data[i:i + (1 << 20)])
            if i == 8 << 20:  # one 5 MiB part is on the server by now
                assert pending_uploads(s3_env, url), "expected a multipart upload in progress"
                assert not storage.exists(url) and storage.listdir(s3_prefix) == []
    head = s3_env.client().head_object(Bucket=s3_env.bucket, Key=url.split("/", 3)[3])
    assert head["ContentLength"] == len(data)
    assert head["ETag"].strip('"').endswith("-3")  # three parts: 5 + 5 + 2 MiB
    assert hashlib.sha256(storage.read_bytes(url)).digest() == hashlib.sha256(data).digest()
    assert pending_uploads(s3_env, url) == []


def test_failed_write_leaves_nothing_and_keeps_the_old_object(s3_prefix: str, s3_env: WeedServer) -> None:
    fresh, old = storage.join(s3_prefix, "fresh.tar"), storage.join(s3_prefix, "old.tar")
    storage.write_bytes(old, b"the finished shard")
    for url in (fresh, old):
        with pytest.raises(RuntimeError, match="half-way"):
            with storage.atomic_open(url, part_size=5 << 20) as f:
                f.write(payload(7 << 20))  # one part uploaded
                raise RuntimeError("failed half-way")
        assert pending_uploads(s3_env, url) == []
    assert not storage.exists(fresh)
    assert storage.read_bytes(old) == b"the finished shard"
    assert storage.listdir(s3_prefix) == ["old.tar"]


# --- permanent errors: one line naming the URL, no retries --------------------------------------

def test_wrong_secret_fails_at_once_with_one_line(s3_prefix: str, s3_env: WeedServer,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    url = storage.join(s3_prefix, "train-000001.tar")
    storage.write_bytes(url, b"abc")
    apply_env(monkeypatch, s3_env.env(secret_key="not-the-secret"))
    calls = {
        "read_bytes": lambda: storage.read_bytes(url),
        "open_read": lambda: storage.open_read(url, expected_size=3),
        "exists": lambda: storage.exists(url),
        "listdir": lambda: storage.listdir(s3_prefix),
        "write_bytes": lambda: storage.write_bytes(url, b"zzz"),
    }
    for name, call in calls.items():
        start = time.monotonic()
        with pytest.raises(StorageAccessError) as err:
            call()
        msg = str(err.value)
        where = s3_prefix if name == "listdir" else url
        assert msg.startswith(f"{where}: access denied") and msg.endswith(CREDENTIALS_HINT), (name, msg)
        assert "\n" not in msg and time.monotonic() - start < 5, name
    assert str(err.value) == f"{url}: access denied: the secret key does not match {CREDENTIALS_HINT}"
    apply_env(monkeypatch, s3_env.env())
    assert storage.read_bytes(url) == b"abc"  # the failed write changed nothing


def test_missing_object_and_truncated_object(s3_prefix: str, s3_env: WeedServer, tmp_path: Path) -> None:
    missing = storage.join(s3_prefix, "train-000009.tar")
    with pytest.raises(StorageNotFoundError) as err:
        storage.read_bytes(missing)
    assert str(err.value) == f"{missing}: no such object"
    assert isinstance(err.value, FileNotFoundError)  # callers' `except FileNotFoundError` still works

    url = storage.join(s3_prefix, "train-000000.tar")
    storage.write_bytes(url, payload(4000))
    with storage.open_read(url, expected_size=4000) as f:
        assert len(f.read()) == 4000
    with pytest.raises(ShardError) as err:
        storage.open_read(url, expected_size=4096)
    assert str(err.value) == (f"{url}: object is 4000 bytes, expected 4096 (truncated; rewritten or damaged?)")
    local = tmp_path / "train-000000.tar"
    local.write_bytes(payload(4000))
    with pytest.raises(ShardError, match=r"train-000000.tar: file is 4000 bytes, expected 4096 \(truncated"):
        storage.open_read(str(local), expected_size=4096)


# --- transient errors: retried ---------------------------------------------------------------------

def test_reads_that_end_early_resume(fault_proxy, s3_server: WeedServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # botocore's own retries off: these are ours
    clear_s3_caches()
    url = f"s3://{s3_server.bucket}/faults-{os.getpid()}-{time.monotonic_ns()}/resume.bin"
    data = payload(3 << 20, seed=1)
    storage.write_bytes(url, data)
    fault_proxy.cut(after_bytes=700_000, times=3)
    with storage.open_read(url, expected_size=len(data), retry=RetryPolicy(attempts=5, backoff=0.05)) as f:
        got = f.read()
        resumes = f.raw.resumes
    assert got == data
    assert fault_proxy.cuts == 3 and resumes == 3  # each cut resumed once, with a range request
    # Cut, and then cut again on every attempt: an error naming the URL, never a short result.
    fault_proxy.cut([700_000] + [10] * 10)
    with pytest.raises(StorageUnavailableError) as err:
        with storage.open_read(url, expected_size=len(data), retry=FAST) as f:
            f.read()
    assert str(err.value).startswith(f"{url}: the connection broke off during the transfer; gave up after 3 attempts")


def test_server_errors_are_retried_then_reported(fault_proxy, s3_server: WeedServer,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # botocore's own retries off (a standard variable): what is retried here, we retry.
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    clear_s3_caches()
    prefix = f"s3://{s3_server.bucket}/faults-{os.getpid()}-{time.monotonic_ns()}"
    url = storage.join(prefix, "busy.bin")
    storage.write_bytes(url, b"payload")
    fault_proxy.fail(503, times=2)
    with storage.open_read(url, retry=FAST) as f:
        assert f.read() == b"payload"
    assert fault_proxy.failures == 2
    fault_proxy.fail(503, times=2)
    assert storage.listdir(prefix) == ["busy.bin"]
    fault_proxy.fail(500, times=2)
    assert storage.exists(url)
    assert fault_proxy.failures == 6
    fault_proxy.fail(500, times=100)
    with pytest.raises(StorageUnavailableError) as err:
        storage.open_read(url, retry=FAST)
    assert str(err.value).startswith(f"{url}: server error 500 InternalError (injected by the test proxy); "
                                     f"gave up after 3 attempts")


def test_geotiff_tree_in_a_bucket_scans_and_reads(s3_prefix: str, s3_env: WeedServer, tmp_path: Path) -> None:
    from convert.shards.geotiff import read_patch
    from convert.shards.scan import scan_tree
    from convert.sample.sen12ms import synthesize

    local = tmp_path / "tree"
    synthesize(local, scenes=2, patches_per_scene=2, seed=3, broken=False, progress=False)
    (local / "README.txt").write_text("root-level files are ignored")
    tree = storage.join(s3_prefix, "tree")
    upload_tree(local, tree)
    here, there = scan_tree(str(local)), scan_tree(tree)
    assert [t.key for t in there.triplets] == [t.key for t in here.triplets] and len(here.triplets) == 4
    assert there.problems == here.problems == []
    for a, b in zip(here.triplets, there.triplets):
        assert sorted(b.paths) == sorted(a.paths) == ["lc", "s1", "s2"]
        for m in a.paths:
            assert b.paths[m] == storage.join(tree, os.path.relpath(a.paths[m], local))
            pa, pb = read_patch(a.paths[m], m), read_patch(b.paths[m], m)
            assert np.array_equal(pa.data, pb.data, equal_nan=True)
            assert (pa.crs, pa.transform) == (pb.crs, pb.transform)


def upload_tree(local: Path, url: str) -> None:
    for path in sorted(local.rglob("*")):
        if path.is_file():
            storage.write_bytes(storage.join(url, path.relative_to(local).as_posix()), path.read_bytes())


# --- webdataset ------------------------------------------------------------------------------------

def test_shard_opener_feeds_webdataset(s3_prefix: str, s3_env: WeedServer) -> None:
    from webdataset.tariterators import group_by_keys, tar_file_expander

    from sen12ms_common.format.sample import TarShardWriter

    urls, sizes = [], {}
    for i in range(2):
        url = storage.join(s3_prefix, f"train-00000{i}.tar")
        with storage.atomic_open(url) as f:
            w = TarShardWriter(f)
            for j in range(3):
                w.add_sample(f"k{i}{j}", {"label.f32": bytes(68), "json": b"{}"})
            sizes[url] = w.close().bytes
        urls.append(url)
    samples = list(group_by_keys(tar_file_expander(ShardOpener(sizes)({"url": u} for u in urls))))
    assert [s["__key__"] for s in samples] == ["k00", "k01", "k02", "k10", "k11", "k12"]
    # A truncated shard stops the pipeline with the URL (no silently shorter epoch).
    wrong = {**sizes, urls[1]: sizes[urls[1]] + 512}
    with pytest.raises(ShardError, match=f"^{urls[1]}: object is"):
        list(group_by_keys(tar_file_expander(ShardOpener(wrong)({"url": u} for u in urls))))
    assert read_throughput(urls)[0] == sum(sizes.values())


def test_register_gopen_lets_plain_webdataset_read_s3(s3_prefix: str, s3_env: WeedServer) -> None:
    import importlib

    url = storage.join(s3_prefix, "blob.bin")
    storage.write_bytes(url, b"through gopen")
    gopen_module = importlib.import_module("webdataset.gopen")
    before = dict(gopen_module.gopen_schemes)
    try:
        register_gopen()
        assert gopen_module.gopen_schemes["s3"] is gopen_s3
        with gopen_module.gopen(url) as f:
            assert f.read() == b"through gopen"
    finally:
        gopen_module.gopen_schemes.clear()
        gopen_module.gopen_schemes.update(before)


# --- a server that dies while a read is in flight -------------------------------------------------

@pytest.fixture
def own_server(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """A second, private server that a test may kill and restart."""
    server = start_server(tmp_path_factory.mktemp("seaweedfs-kill"))
    # botocore's own retries off (standard variable): the stream's policy alone decides.
    apply_env(monkeypatch, {**server.env(), "AWS_MAX_ATTEMPTS": "1"})
    try:
        yield server
    finally:
        server.stop()


def test_server_killed_mid_read(own_server: WeedServer) -> None:
    url = f"s3://{own_server.bucket}/shards/train-000000.tar"
    data = payload(48 << 20, seed=2)  # more than loopback socket buffers hold in flight
    storage.write_bytes(url, data)

    # Killed and gone: a clear error naming the URL, after the retries, not a short read.
    f = storage.open_read(url, expected_size=len(data), retry=FAST)
    head = f.read(1 << 20)
    own_server.kill()
    with pytest.raises(StorageUnavailableError) as err:
        while f.read(1 << 20):
            pass
    msg = str(err.value)
    assert msg.startswith(f"{url}: ") and "gave up after 3 attempts" in msg and "\n" not in msg
    assert "cannot connect" in msg or "broke off" in msg
    f.close()

    # Killed and restarted while the reader waits: the read resumes and every byte arrives.
    own_server.start()
    patient = RetryPolicy(attempts=12, backoff=0.25, max_backoff=2.0)
    f = storage.open_read(url, expected_size=len(data), retry=patient)
    got = io.BytesIO()
    got.write(f.read(1 << 20))
    own_server.kill()
    restart = threading.Timer(1.0, own_server.start)
    restart.start()
    try:
        while block := f.read(1 << 20):
            got.write(block)
    finally:
        restart.join()
    assert head == data[:1 << 20]
    assert got.getvalue() == data and f.raw.resumes >= 1
    f.close()


# --- the tools end to end: convert to S3, verify, train from S3 ----------------------------------

def run_tool(*args: str, env: dict[str, str] | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    """`python -m <tool> ...` with the current AWS variables (or `env` on top of them)."""
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=REPO)


def last_line(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
    return lines[-1] if lines else ""


def shard_hashes(root: str) -> dict[str, str]:
    manifest = load_manifest(root)
    return {s.name: s.sha256 for split in manifest.splits for s in manifest.shards(split)}


@pytest.fixture(scope="module")
def small_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from convert.sample.sen12ms import synthesize

    root = tmp_path_factory.mktemp("s3-tree") / "sen12ms"
    synthesize(root, scenes=4, patches_per_scene=3, seed=5, broken=True, progress=False)
    return root


@pytest.fixture(scope="module")
def local_shards(small_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("s3-local") / "shards"
    proc = run_tool("convert", "shards", "--data", str(small_tree), "--out", str(out), "--workers", "1",
                    "--shard-size", "3MB", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    return out


def test_convert_and_verify_round_trip_through_s3(small_tree: Path, local_shards: Path, s3_prefix: str,
                                                  s3_env: WeedServer) -> None:
    out = storage.join(s3_prefix, "shards")
    proc = run_tool("convert", "shards", "--data", str(small_tree), "--out", out, "--workers", "2",
                    "--shard-size", "3MB", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    names = storage.listdir(out)
    assert {"manifest.json", "report.json"} <= set(names)
    tars = [n for n in names if n.endswith(".tar")]
    assert tars and all(n[:-4] + ".idx" in names for n in tars)
    assert shard_hashes(out) == shard_hashes(str(local_shards))  # the same bytes as on disk
    for name in tars:
        assert storage.read_bytes(storage.join(out, name)) == (local_shards / name).read_bytes()

    proc = run_tool("convert", "verify", out, "--no-progress")
    assert proc.returncode == 0 and last_line(proc).startswith("OK:"), proc.stdout + proc.stderr

    # A wrong secret: one line naming the URL, non-zero exit, for reading and for writing.
    wrong = {"AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    proc = run_tool("convert", "verify", out, "--no-progress", env=wrong)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert last_line(proc) == (f"Error: {out}/manifest.json: access denied: the secret key does not match "
                               f"{CREDENTIALS_HINT}")
    proc = run_tool("convert", "shards", "--data", str(small_tree), "--out", storage.join(s3_prefix, "other"),
                    "--workers", "1", "--no-progress", env=wrong)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert last_line(proc) == (f"Error: {storage.join(s3_prefix, 'other')}: access denied: the secret key does not "
                               f"match {CREDENTIALS_HINT}")
    assert storage.listdir(storage.join(s3_prefix, "other")) == []

    # A shard truncated in the bucket fails verification with its name.
    victim = storage.join(out, tars[0])
    storage.write_bytes(victim, (local_shards / tars[0]).read_bytes()[:-1536])
    proc = run_tool("convert", "verify", out, "--no-progress")
    assert proc.returncode != 0 and tars[0] in last_line(proc), proc.stdout + proc.stderr


def test_convert_reads_a_geotiff_tree_from_s3(small_tree: Path, local_shards: Path, s3_prefix: str,
                                              s3_env: WeedServer, tmp_path: Path) -> None:
    tree, out = storage.join(s3_prefix, "tree"), storage.join(s3_prefix, "shards")
    upload_tree(small_tree, tree)
    # Workers fork after the parent has talked to the server: they must not disturb its connections.
    proc = run_tool("convert", "shards", "--data", tree, "--out", out, "--workers", "2", "--shard-size", "3MB",
                    "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert shard_hashes(out) == shard_hashes(str(local_shards))
    proc = run_tool("convert", "shards", "--data", tree, "--out", str(tmp_path / "x"), "--workers", "1",
                    "--no-progress", env={"AWS_SECRET_ACCESS_KEY": "not-the-secret"})
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert last_line(proc) == f"Error: {tree}: access denied: the secret key does not match {CREDENTIALS_HINT}"


TRAIN = ("train", "--model", "SmallCNN", "--input", "s1s2", "--epochs", "1", "--batch-size", "4",
         "--workers", "2", "--max-steps", "2", "--device", "cpu")


def test_train_from_s3_and_a_server_killed_mid_read(local_shards: Path, tmp_path_factory: pytest.TempPathFactory,
                                                    monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    server = start_server(tmp_path_factory.mktemp("seaweedfs-train"))
    proxy = FaultProxy(server.ports["s3.port"])
    # Through the proxy, to hold a shard's transfer half-way; botocore's own retries off.
    apply_env(monkeypatch, {**server.env(), "AWS_ENDPOINT_URL": proxy.endpoint, "AWS_MAX_ATTEMPTS": "1"})
    try:
        shards = f"s3://{server.bucket}/shards"
        upload_tree(local_shards, shards)

        def train_and_kill_the_server_mid_read(run_dir: Path) -> subprocess.Popen:
            proxy.stall(after_bytes=300_000)
            job = subprocess.Popen([sys.executable, "-m", *TRAIN, "--shards", shards, "--run-dir", str(run_dir)],
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
            assert proxy.stalled.wait(120), "no shard read reached the proxy"
            server.kill()
            proxy.release()
            return job

        # Killed while a shard is in flight, and not back: a clear error naming the shard.
        job = train_and_kill_the_server_mid_read(tmp_path / "dead")
        out, _ = job.communicate(timeout=180)
        lines = [line for line in out.splitlines() if line.strip()]
        assert job.returncode != 0, out
        assert "Traceback" not in out, out
        assert lines[-1].startswith("Error: ") and f"{shards}/" in lines[-1] and ".tar" in lines[-1], out
        assert "gave up after" in lines[-1], out
        assert not (tmp_path / "dead" / "test_scores.json").exists()

        # Killed mid-read and restarted while the reader waits: the run goes through.
        server.start()
        proxy.unreachable.clear()
        job = train_and_kill_the_server_mid_read(tmp_path / "back")
        assert proxy.unreachable.wait(120), "the reader did not try the dead server"
        server.start()
        out, _ = job.communicate(timeout=180)
        assert job.returncode == 0, out
        assert "reached --max-steps 2" in out
        assert f"test ({load_manifest(str(local_shards)).samples('test')} samples" in out  # every test sample
        scores = json.loads((tmp_path / "back" / "test_scores.json").read_text())
        assert 0.0 <= scores["microF1"] <= 1.0, scores
    finally:
        proxy.close()
        server.stop()


def test_train_with_a_wrong_secret_fails_in_one_line(local_shards: Path, s3_prefix: str, s3_env: WeedServer,
                                                     tmp_path: Path) -> None:
    shards = storage.join(s3_prefix, "shards")
    storage.write_bytes(storage.join(shards, "manifest.json"), (local_shards / "manifest.json").read_bytes())
    proc = run_tool(*TRAIN, "--shards", shards, "--run-dir", str(tmp_path / "run"),
                    env={"AWS_SECRET_ACCESS_KEY": "not-the-secret"})
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert last_line(proc) == (f"Error: {shards}/manifest.json: access denied: the secret key does not match "
                               f"{CREDENTIALS_HINT}")
