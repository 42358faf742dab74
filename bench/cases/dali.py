"""The DALI rows: a client of `bench.cases.daliworker` (DALI in its own process, CPU-only here)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from bench.cases.loaders import LoaderSettings
from bench.measure.timing import Repeat
from sen12ms_common.errors import UnavailableError
from sen12ms_common.storage import files as storage
from sen12ms_common.vocab.bands import resolve_bands

from sen12ms_common.format.manifest import load_manifest
from sen12ms_common.vocab.igbp import LabelRule
from sen12ms_common.vocab.inputs import channel_transform
from train.data import LoaderSpec, make_loader

REPO = Path(__file__).resolve().parents[2]


class DaliWorker:
    """One `python -m bench.cases.daliworker` process; `repeat(...)` runs one epoch in it."""

    def __init__(self, log: Path) -> None:
        self.log_path = log
        log.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.cases.daliworker"], cwd=REPO, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._log, text=True)
        hello = self._read()
        if not hello.get("ready"):
            self.close()
            raise UnavailableError(hello.get("error", "the DALI worker did not start"))
        self.version = str(hello.get("version", "?"))

    def _read(self) -> dict:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(timeout=30)
            tail = self.log_path.read_text(errors="replace").strip().splitlines()[-1:] if self.log_path.exists() else []
            raise UnavailableError(f"the DALI worker exited (status {self.proc.returncode})"
                                   + (f": {tail[0][:200]}" if tail else ""))
        return json.loads(line)

    def repeat(self, root: str, settings: LoaderSettings, threads: int, seed: int, cpu: int | None,
               normalise: bool = False) -> Repeat:
        """One epoch; uint16 batches unless `normalise` (the CPU's part of a GPU pipeline, which
        normalises on the GPU, as our loader's uint16 rows)."""
        assert self.proc.stdin is not None
        req = {"root": root, "settings": asdict(settings), "threads": threads, "seed": seed, "cpu": cpu,
               "normalise": normalise}
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


# --- in this process (tests) ----------------------------------------------------------------

def _reader(root: str, split: str, loader: str, input_spec: str, batch_size: int, threads: int, device: str,
            normalise: bool, train: bool, stats: str):
    """(loader, uint16 -> model input or None) of `throughput`."""
    from train.run.device import InputTransform  # start-up time: torch only when used

    manifest = load_manifest(root)
    bands = resolve_bands(input_spec)
    transform = channel_transform(bands, stats, manifest.stats)
    spec = LoaderSpec(root=root, manifest=manifest, split=split, bands=bands, rule=LabelRule("multi_label"),
                      batch_size=batch_size, transform=transform, train=train, workers=threads, device=device,
                      verify=False)
    if loader == "dali":
        from train.data.dali import DaliLoader  # optional extra (dali): imported where it is used

        return DaliLoader(spec, normalise=normalise, num_threads=max(1, threads)), None
    import torch  # start-up time: torch only when used

    return make_loader(loader, spec), InputTransform(transform, torch.device(device), reuse=True) if normalise else None


def throughput(root: str, split: str = "train", *, loader: str = "dali", input_spec: str = "s1s2",
               batch_size: int = 32, threads: int = 1, device: str = "cpu", normalise: bool = True,
               train: bool = False, epochs: int = 2, stats: str = "official", preread: bool = True) -> dict[str, float]:
    """Samples/s of a loader over one split (in this process), into model input (`normalise`) or
    uint16 batches: `dali` with `threads` DALI CPU threads, `webdataset` with `threads` workers
    (its batches normalised on `device` as the training loop does). Shards pre-read (`preread`),
    one untimed epoch, then `epochs` timed ones."""
    import torch  # start-up time: torch only when used

    ld, to_input = _reader(root, split, loader, input_spec, batch_size, threads, device, normalise, train, stats)
    if preread:
        for e in load_manifest(root).shards(split):
            with open(storage.join(root, e.name), "rb") as f:
                while f.read(1 << 22):
                    pass
    n, t0 = 0, time.perf_counter()
    for e in range(epochs + 1):
        if e == 1:
            n, t0 = 0, time.perf_counter()
        for batch in ld.epoch(e):
            x = batch["image"] if to_input is None else to_input(batch["image"])
            if x.is_cuda:
                torch.cuda.synchronize(x.device)
            n += len(batch["key"])
    seconds = time.perf_counter() - t0
    ld.close()
    return {"samples_per_s": n / seconds, "samples": float(n), "seconds": seconds, "threads": float(threads)}
