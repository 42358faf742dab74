"""`convert s3-local`: a local S3 store (SeaweedFS) to try `s3://` paths with, until Ctrl-C.

It prints the AWS variables to paste into a shell; with `--dir` the data and the keys stay in that
folder, so the next start serves the same objects to the same exports.
"""

from __future__ import annotations

import fcntl
import os
import re
import shlex
import shutil
import signal
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import click

from convert.s3local.server import BUCKET, INSTALL_HINT, _NotReady, WeedServer, saved_keys, start_server, weed_binary
from sen12ms_common.errors import report_errors
from sen12ms_common.progress import no_progress_option

DEFAULT_PORT = 8333  # SeaweedFS's own S3 port: a fixed one keeps the exports valid across restarts
STOP_GRACE_S = 10.0  # SIGTERM lets weed flush its data folder; SIGKILL after this
# Variables that would override the exported ones (or name a profile that the exports hide).
OVERRIDING = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_REGION")
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_GLOG = re.compile(r"^([FE])\d{4} ")  # weed's log lines of severity fatal / error


class _Stopped(BaseException):
    """SIGTERM or SIGHUP: stop like Ctrl-C (BaseException, so no `except Exception` swallows it)."""


@contextmanager
def _handling(signals: tuple[int, ...], handler: Any) -> Iterator[None]:
    """`handler` for `signals` while the block runs, the previous handlers after it."""
    old = {s: signal.signal(s, handler) for s in signals}
    try:
        yield
    finally:
        for s, previous in old.items():
            signal.signal(s, previous)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    def stop(signum, frame):
        raise _Stopped(signum)

    with _handling((signal.SIGTERM, signal.SIGHUP), stop):
        yield


@contextmanager
def deaf_to_signals() -> Iterator[None]:
    """While stopping: a second Ctrl-C or SIGTERM must not leave weed running."""
    with _handling((signal.SIGINT, signal.SIGTERM, signal.SIGHUP), signal.SIG_IGN):
        yield


@contextmanager
def folder_lock(root: Path) -> Iterator[None]:
    """One store per folder: a second weed on the same data would fail on its locks, later and
    less clearly."""
    fd = os.open(root / ".s3-local.lock", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise click.ClickException(f"{root}: in use by another `convert s3-local`; stop that one "
                                       "or give another --dir") from None
        yield
    finally:
        os.close(fd)


def check_bucket(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not _BUCKET_NAME.fullmatch(value) or ".." in value:
        raise click.BadParameter(f"{value!r} is not an S3 bucket name (3-63 characters: a-z, 0-9, '.', '-')")
    return value


def exports(server: WeedServer) -> list[str]:
    """The shell lines that point a client at the server and at nothing else."""
    lines = [f"unset {' '.join(OVERRIDING)}"]
    lines += [f"export {name}={shlex.quote(value)}" for name, value in server.env().items()]
    return lines


def announce(server: WeedServer, kept: bool) -> None:
    where = (f"data kept in {server.root} (a restart with the same --dir keeps these keys)" if kept
             else f"data in {server.root}, removed at exit")
    click.echo("# A local S3 store (SeaweedFS); paste these lines into the shell that runs the toolbox:")
    for line in exports(server):
        click.echo(line)
    click.echo(f"# ready: s3://{server.bucket} at {server.endpoint}; {where}; Ctrl-C stops it")


@click.command("s3-local")
@click.option("--dir", "folder", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the store's data and keys, kept at exit and reused by the next start "
                   "(same keys, so the printed exports stay valid).  [default: a temporary folder, "
                   "removed at exit]")
@click.option("--bucket", default=BUCKET, show_default=True, callback=check_bucket,
              help="Bucket to create (an existing one is kept).")
@click.option("--port", default=DEFAULT_PORT, show_default=True, type=click.IntRange(0, 65535),
              help="S3 port on 127.0.0.1 (0: any free port). SeaweedFS's other ports are picked free.")
@no_progress_option(why="a server: it prints its address and waits")
@report_errors
def s3_local(folder: Path | None, bucket: str, port: int) -> None:
    """Run a local S3 store (SeaweedFS on 127.0.0.1) with one bucket, and print the AWS variables
    that point the toolbox at it. Runs until Ctrl-C or SIGTERM."""
    if weed_binary() is None:
        raise click.ClickException(f"no `weed` binary (SeaweedFS): {INSTALL_HINT}")
    try:
        import boto3  # noqa: F401 (optional extra s3: checked before the server starts)
    except ImportError:
        raise click.ClickException("boto3 is not installed: pip install -e '.[s3]'") from None
    root = folder if folder is not None else Path(tempfile.mkdtemp(prefix="sen12ms-s3-"))
    try:
        root.mkdir(parents=True, exist_ok=True)
        with folder_lock(root), stop_on_signals():
            serve(root, bucket, port, kept=folder is not None)
    except OSError as exc:  # a folder that cannot be created or written
        raise click.ClickException(f"{exc.filename or root}: {exc.strerror or exc}") from None
    except (KeyboardInterrupt, _Stopped):
        pass  # the normal way to stop it: status 0
    finally:
        if folder is None:
            shutil.rmtree(root, ignore_errors=True)


def start(root: Path, bucket: str, port: int) -> WeedServer:
    """A started server in `root`, with the keys a previous run left there."""
    try:
        keys = saved_keys(root)
        options = {"access_key": keys[0], "secret_key": keys[1]} if keys else {}
        return start_server(root, own_folders=False, bucket=bucket, s3_port=port, **options)
    except _NotReady as exc:
        raise click.ClickException(f"SeaweedFS did not start ({exc.reason}); its log says: "
                                   f"{log_summary(exc.log_tail)}") from None


def serve(root: Path, bucket: str, port: int, kept: bool) -> None:
    """Start the server, print the exports, wait until a signal arrives or weed exits (an error)."""
    server = start(root, bucket, port)
    try:
        announce(server, kept)
        status = server.proc.wait() if server.proc is not None else 0
        log = (root / "weed.out").read_text(errors="replace")
    finally:
        with deaf_to_signals():
            click.echo("stopping SeaweedFS", err=True)
            server.stop(grace=STOP_GRACE_S)
    raise click.ClickException(f"SeaweedFS exited by itself (status {status}); its log says: {log_summary(log)}")


def log_summary(text: str) -> str:
    """The last fatal line of weed's log, else its last error, else its last line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for severity in "FE":
        found = [line for line in lines if (m := _GLOG.match(line)) and m.group(1) == severity]
        if found:
            return found[-1]
    return lines[-1] if lines else "(empty)"
