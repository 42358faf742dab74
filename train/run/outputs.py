"""Where a run or an evaluation writes: a local folder or an s3:// prefix, always through
`sen12ms_common.storage.files` (each file appears whole or not at all), every failure one line: the
run folder, its log, TensorBoard files, checkpoints."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from sen12ms_common.errors import CheckpointError, StorageError
from sen12ms_common.storage import files as storage
from sen12ms_common.storage.folderlock import FolderLock
from sen12ms_common.storage.outputs import output_folder, writing
from sen12ms_common.storage.redaction import redact

from ..config.argsfile import write_arguments_file
from ..config.trainconfig import TrainConfig, arguments
from .distributed import Dist, broadcast_object


def run_dir_of(checkpoint: str) -> str | None:
    """The run folder of a checkpoint in `<run>/checkpoints/`, else None."""
    checkpoint = str(checkpoint)
    if storage.is_remote(checkpoint):
        parts = checkpoint.rstrip("/").rsplit("/", 2)
        return parts[0] if len(parts) == 3 and parts[1] == "checkpoints" and "://" in parts[0] else None
    parent = Path(checkpoint).resolve().parent
    return str(parent.parent) if parent.name == "checkpoints" else None


class RunDir:
    """A run's folder: `logs/`, `checkpoints/`, test scores (local path or s3:// prefix)."""

    def __init__(self, root: str) -> None:
        self.root = output_folder(root, "--run-dir")
        self.remote = storage.is_remote(self.root)
        self._lock = None  # held while the run lasts: one training per local run folder

    def join(self, *parts: str) -> str:
        return storage.join(self.root, *parts)

    def release(self) -> None:
        """Let another training use the folder (the run's files are closed)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def prepare(self) -> None:
        """Create the local folders (object stores have none); a read-only place fails here."""
        if not self.remote:
            with writing(self.root):
                for sub in ("logs", "checkpoints"):
                    os.makedirs(self.join(sub), exist_ok=True)
                # Two runs sharing a folder would write each other's metrics.csv, scores and
                # (started in the same second) checkpoints: the second is refused.
                self._lock = FolderLock(self.root, "another training")

    def __str__(self) -> str:
        return self.root


class RunLog:
    """Print (rank 0: others get echo=None) and keep the run's log `<run>/logs/<ts>_train.log`:
    appended line by line locally, uploaded whole by `sync()` in a bucket."""

    def __init__(self, echo: Callable[[str], None] | None) -> None:
        self.echo, self.url, self.remote = echo, None, False
        self._lines: list[str] = []

    def attach(self, url: str, remote: bool) -> None:
        self.url, self.remote = url, remote
        if remote and storage.exists(url):  # a resumed run goes on with the same log
            self._lines = [storage.read_text(url)]

    def __call__(self, msg: str) -> None:
        if self.echo is None:
            return
        msg = redact(msg)  # the screen and the log file alike
        self.echo(msg)
        if self.url is None:
            return
        if self.remote:
            self._lines.append(msg + "\n")
            return
        with writing(self.url), open(self.url, "a", encoding="utf-8") as f:
            f.write(msg + "\n")

    def sync(self) -> None:
        if self.remote and self.url is not None and self.echo is not None:
            storage.write_text(self.url, "".join(self._lines))


class EventWriters:
    """TensorBoard writers `<run>/logs/runs/<ts>/<name>` (rank 0). For a run in a bucket they write
    into a local staging folder whose files `sync()` uploads."""

    def __init__(self, run: RunDir, ts: str, names: tuple[str, ...]) -> None:
        self.run, self.ts = run, ts
        self._staging = tempfile.mkdtemp(prefix="sen12ms-events-") if run.remote else None
        self._base = self._staging or run.join("logs")
        self.writers: dict[str, Any] = {}
        for name in names:
            self.writer(name)

    def writer(self, name: str) -> Any:
        from torch.utils.tensorboard import SummaryWriter  # start-up time: tensorboard only when used

        if name not in self.writers:
            folder = os.path.join(self._base, "runs", self.ts, name)
            with writing(folder):
                self.writers[name] = SummaryWriter(folder)
        return self.writers[name]

    def scalar(self, split: str, tag: str, value: float, step: int) -> None:
        if split in self.writers:
            self.writers[split].add_scalar(tag, value, step)

    def sync(self) -> None:
        for w in self.writers.values():
            w.flush()
        if self._staging is None:
            return
        for dirpath, _, files in os.walk(self._staging):
            for name in files:
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, self._staging).replace(os.sep, "/")
                with open(path, "rb") as f:
                    storage.write_bytes(self.run.join("logs", rel), f.read())

    def close(self, upload: bool = True) -> None:
        try:
            for w in self.writers.values():
                w.close()
            if upload:
                self.sync()
        finally:
            if self._staging is not None:
                shutil.rmtree(self._staging, ignore_errors=True)


@dataclass
class RunFiles:
    """Where this launch of a run writes (rank 0; other ranks hold the names only)."""

    run: RunDir
    ts: str
    checkpoint: str
    best: str
    events: EventWriters | None


def open_run(cfg: TrainConfig, ts: str | None, d: Dist, log: RunLog) -> RunFiles:
    """The run folder made ready, this launch's arguments file written, log and TensorBoard open."""
    run = RunDir(cfg.resolved_run_dir())
    launch = None
    if d.is_main:
        run.prepare()
        launch = _timestamp(run)
        ts = ts or launch
    ts = broadcast_object(d, ts)
    events = None
    if d.is_main:
        write_arguments_file(run.join("logs", f"{launch}_arguments.txt"), arguments(cfg, ts))
        log.attach(run.join("logs", f"{ts}_train.log"), run.remote)
        events = EventWriters(run, ts, ("training", "val"))
    return RunFiles(run, ts, run.join("checkpoints", f"{ts}_checkpoint.pth"),
                    run.join("checkpoints", f"{ts}_model_best.pth"), events)


def write_checkpoint(files: RunFiles, is_best: bool, save: Callable[[str], None]) -> None:
    """Write the checkpoint (and the best one's copy); a failed write keeps the last one written."""
    try:
        save(files.checkpoint)
        if is_best:
            with writing(files.best):
                storage.write_bytes(files.best, storage.read_bytes(files.checkpoint))
    except (CheckpointError, StorageError) as exc:
        kept = (f"the last checkpoint written is kept: make room and continue with --resume {files.checkpoint}"
                if storage.exists(files.checkpoint) else "no checkpoint was written")
        raise CheckpointError(f"{exc}; {kept}") from None


def close_outputs(files: RunFiles, log: RunLog, upload_errors: bool) -> None:
    """Close TensorBoard and upload what a run in a bucket keeps locally. After a failure the
    upload is tried, but an error of its own does not hide the first one."""
    try:
        if files.events is not None:
            files.events.close()
        log.sync()
    except (StorageError, OSError):
        if upload_errors:
            raise
    finally:
        files.run.release()


def _timestamp(run: RunDir) -> str:
    while True:
        ts = datetime.now().strftime("%Y%m%d_%H%M%S")
        if not storage.exists(run.join("logs", f"{ts}_arguments.txt")):
            return ts
        time.sleep(0.25)


__all__ = ["RunDir", "RunLog", "EventWriters", "RunFiles", "open_run", "write_checkpoint", "close_outputs",
           "output_folder", "run_dir_of", "writing"]
