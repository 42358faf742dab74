"""The DALI rows: a client of `bench.daliworker` (DALI in its own process, CPU-only here)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

from bench.loaders import LoaderSettings
from bench.measure import Repeat

from sen12ms_common.errors import Sen12msError

REPO = Path(__file__).resolve().parents[1]


class DaliUnavailable(RuntimeError, Sen12msError):
    """DALI cannot run here; the message says why (for the table's "not available" rows)."""


class DaliWorker:
    """One `python -m bench.daliworker` process; `repeat(...)` runs one epoch in it."""

    def __init__(self, log: Path) -> None:
        self.log_path = log
        log.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.daliworker"], cwd=REPO, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._log, text=True)
        hello = self._read()
        if not hello.get("ready"):
            self.close()
            raise DaliUnavailable(hello.get("error", "the DALI worker did not start"))
        self.version = str(hello.get("version", "?"))

    def _read(self) -> dict:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(timeout=30)
            tail = self.log_path.read_text(errors="replace").strip().splitlines()[-1:] if self.log_path.exists() else []
            raise DaliUnavailable(f"the DALI worker exited (status {self.proc.returncode})"
                                  + (f": {tail[0][:200]}" if tail else ""))
        return json.loads(line)

    def repeat(self, root: str, settings: LoaderSettings, threads: int, seed: int, cpu: int | None) -> Repeat:
        assert self.proc.stdin is not None
        req = {"root": root, "settings": asdict(settings), "threads": threads, "seed": seed, "cpu": cpu}
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        ans = self._read()
        if not ans.get("ok"):
            raise RuntimeError(ans.get("error", "unknown error"))
        return Repeat(ans["items"], ans["seconds"], ans["startup_s"])

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                if self.proc.stdin:
                    self.proc.stdin.close()
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
