"""How far a pass over a split has come: a bar on a terminal, elsewhere (nohup, SLURM, a pipe) a
line on stderr every `interval` seconds with the rate, the data-wait share, the loss and ETAs."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Callable, TextIO

import click
from tqdm import tqdm

DEFAULT_INTERVAL = 30.0


@dataclass(frozen=True)
class ProgressOptions:
    show: bool = True                   # --progress / --no-progress
    interval: float = DEFAULT_INTERVAL  # seconds between lines when stderr is not a terminal

    def style(self, main: bool = True, stream: TextIO | None = None) -> str:
        """'bar' on a terminal, else 'lines'; 'off' without --progress and on ranks other than 0."""
        if not self.show or not main:
            return "off"
        stream = stream or sys.stderr
        return "bar" if hasattr(stream, "isatty") and stream.isatty() else "lines"


NO_PROGRESS = ProgressOptions(show=False)


def progress_options(command: Callable) -> Callable:
    """`--progress/--no-progress` and `--progress-interval` of a command (parameters `progress`,
    `progress_interval`)."""
    command = click.option(
        "--progress-interval", type=click.FloatRange(0, min_open=True), default=DEFAULT_INTERVAL,
        show_default=True, metavar="SECONDS",
        help="Seconds between progress lines when stderr is not a terminal.")(command)
    return click.option(
        "--progress/--no-progress", default=True, show_default=True,
        help="Show progress: a bar on a terminal; elsewhere (nohup, SLURM, a pipe) a line on stderr every "
             "--progress-interval seconds with step, samples/s, data-wait share, loss and ETAs.")(command)


def duration(seconds: float) -> str:
    """`45s`, `20m13s`, `33h02m`."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _stderr_line(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@dataclass
class Plan:
    """What lies ahead of a pass: its batches, and (for a run's ETA) what follows it."""

    total: int                   # batches of the pass (shown as step/total)
    initial: int = 0             # batches done before this launch (a resumed epoch)
    end: int | None = None       # the batch the pass stops at (--max-steps), default total
    later_batches: int = 0       # training batches of the later epochs
    later_seconds: float = 0.0   # other known work after the pass (validations)
    run_eta: bool = False        # a training epoch: give the ETA of the run too
    unit: str = "batch"          # what is counted: "step" (training) or "batch"


class ProgressMeter:
    """Counts a pass's batches; `update` after each one. The rate and the data-wait share of a
    line are those since the previous line; the ETAs use the rate since the pass began."""

    def __init__(self, opts: ProgressOptions, desc: str, plan: Plan, *, main: bool = True,
                 write: Callable[[str], None] = _stderr_line) -> None:
        self.desc, self.plan, self.write, self.interval = desc, plan, write, opts.interval
        self.style = opts.style(main)
        self.bar = None
        if self.style == "bar":
            self.bar = tqdm(total=plan.total, initial=plan.initial, desc=desc, unit="batch", leave=False)
        self.done = plan.initial
        self.start = self.last = time.monotonic()
        self.samples = 0
        self.wait = 0.0

    def update(self, samples: int, wait: float, loss: float | None = None) -> None:
        """One batch of `samples` done, after `wait` seconds spent waiting for it."""
        self.done += 1
        self.samples += samples
        self.wait += wait
        if self.bar is not None:
            self.bar.update(1)
        elif self.style == "lines":
            now = time.monotonic()
            if now - self.last >= self.interval:
                self.write(self.line(now, loss))
                self.last, self.samples, self.wait = now, 0, 0.0

    def line(self, now: float, loss: float | None) -> str:
        p = self.plan
        window = max(now - self.last, 1e-9)
        per_batch = (now - self.start) / max(self.done - p.initial, 1)
        left = max((p.end if p.end is not None else p.total) - self.done, 0) * per_batch
        parts = [f"{self.desc}: {p.unit} {self.done}/{p.total} ({100 * self.done / max(p.total, 1):.0f}%)",
                 f"{self.samples / window:.1f} samples/s", f"data wait {100 * min(self.wait / window, 1):.0f}%"]
        if loss is not None:
            parts.append(f"loss {loss:.4f}")
        eta = f"ETA {duration(left)}"
        if p.run_eta:
            eta = f"ETA epoch {duration(left)}, run {duration(left + p.later_batches * per_batch + p.later_seconds)}"
        return ", ".join(parts + [eta])

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


__all__ = ["ProgressOptions", "ProgressMeter", "Plan", "duration", "DEFAULT_INTERVAL", "NO_PROGRESS", "progress_options"]
