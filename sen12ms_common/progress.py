"""How far a long pass has come, for the trainer and the converter alike: a bar on a terminal,
elsewhere (nohup, SLURM, a pipe) a line on stderr every `interval` seconds, never a carriage
return in a log. `ProgressMeter` counts a training or evaluation pass (rate, data-wait share,
loss, ETAs); `Counter` counts any other pass (patches, samples, bytes: done, rate, ETA).
Imports nothing beyond the standard library at import time (tqdm and click when used)."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, TextIO, TypeVar

from sen12ms_common.words import plural

T = TypeVar("T")

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


def as_options(progress: "bool | ProgressOptions") -> ProgressOptions:
    """A library function's `progress` argument (a flag, or the options) as options."""
    if isinstance(progress, ProgressOptions):
        return progress
    return ProgressOptions() if progress else NO_PROGRESS


_MEASURED_HELP = ("Show progress: a bar on a terminal; elsewhere (nohup, SLURM, a pipe) a line on stderr every "
                  "--progress-interval seconds with step, samples/s, data-wait share, loss and ETAs.")
_COUNTED_HELP = ("Show progress: a bar on a terminal; elsewhere (nohup, SLURM, a pipe) a line on stderr every "
                 "--progress-interval seconds with the count done, the rate and the ETA.")


def progress_options(command: Callable | None = None, *, counted: bool = False) -> Callable:
    """`--progress/--no-progress` and `--progress-interval` of a command (parameters `progress`,
    `progress_interval`); `counted=True` for a command whose lines are a `Counter`'s."""
    if command is None:
        return lambda c: progress_options(c, counted=counted)
    import click  # start-up time: click only when a command is built

    command = click.option(
        "--progress-interval", type=click.FloatRange(0, min_open=True), default=DEFAULT_INTERVAL,
        show_default=True, metavar="SECONDS",
        help="Seconds between progress lines when stderr is not a terminal.")(command)
    return click.option("--progress/--no-progress", default=True, show_default=True,
                        help=_COUNTED_HELP if counted else _MEASURED_HELP)(command)


def no_progress_option(command: Callable | None = None, *, why: str = "it takes seconds") -> Callable:
    """`--progress/--no-progress` of a command that writes no progress (`why` says why):
    accepted so that a script may pass `--no-progress` to every command."""
    if command is None:
        return lambda c: no_progress_option(c, why=why)
    import click  # start-up time: click only when a command is built

    return click.option("--progress/--no-progress", default=True, expose_value=False,
                        help=f"Accepted as by every command; this one shows no progress ({why}).")(command)


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
            from tqdm import tqdm  # start-up time: tqdm only on a terminal

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


def _amount(n: float, unit: str, scaled: bool) -> str:
    if not scaled:
        return f"{int(n)}"
    for prefix in ("", "k", "M", "G", "T"):
        if abs(n) < 1000 or prefix == "T":
            return f"{n:.0f} {prefix}{unit}" if not prefix else f"{n:.1f} {prefix}{unit}"
        n /= 1000
    raise AssertionError  # unreachable


class Counter:
    """Counts the units of a pass that is not a training pass (triplets written, patches read,
    bytes verified). A bar on a terminal; in a log a line every `interval` seconds and one when
    the pass ends (`synth: 288/288 triplets (100%), 41.2 triplets/s, done in 7s`); nothing when off.
    A context manager; `update(n)` after each step, `note(text)` names what is being worked on."""

    def __init__(self, opts: ProgressOptions, desc: str, total: int, unit: str, *, initial: int = 0,
                 scaled: bool = False, write: Callable[[str], None] = _stderr_line) -> None:
        self.desc, self.total, self.unit, self.scaled, self.write = desc, total, unit, scaled, write
        self.interval = opts.interval
        self.style = opts.style()
        self.done = self.initial = initial
        self.start = self.last = time.monotonic()
        self.postfix = ""
        self.bar = None
        if self.style == "bar":
            from tqdm import tqdm  # start-up time: tqdm only on a terminal

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, unit_scale=scaled,
                            dynamic_ncols=True)

    def __enter__(self) -> "Counter":
        return self

    def __exit__(self, kind, value, tb) -> None:
        self.close(finished=kind is None)

    def update(self, n: float = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.style == "lines":
            now = time.monotonic()
            if now - self.last >= self.interval:
                self.write(self.line(now))
                self.last = now

    def note(self, text: str) -> None:
        """What the pass is at (a split, a shard): shown on the bar and in the next line."""
        self.postfix = text
        if self.bar is not None:
            self.bar.set_postfix_str(text)

    def iterate(self, items: Iterable[T]) -> Iterator[T]:
        """`items`, counting one unit each as it is handed out."""
        for item in items:
            yield item
            self.update(1)

    def line(self, now: float, final: bool = False) -> str:
        unit = self.unit if self.scaled or self.total == 1 else plural(self.unit)
        elapsed = max(now - self.start, 1e-9)
        rate = (self.done - self.initial) / elapsed
        left = (self.total - self.done) / rate if rate > 0 else float("inf")
        done = f"{_amount(self.done, self.unit, self.scaled)}/{_amount(self.total, self.unit, self.scaled)}"
        parts = [f"{self.desc}: {done}{'' if self.scaled else ' ' + unit} "
                 f"({100 * self.done / max(self.total, 1):.0f}%)",
                 f"{_amount(rate, self.unit, self.scaled)}/s" if self.scaled else f"{rate:.1f} {unit}/s",
                 f"ETA {duration(left)}" if left != float("inf") else "ETA unknown"]
        if final:
            parts[-1] = f"done in {duration(elapsed)}"
        elif self.postfix:
            parts.insert(1, self.postfix)
        return ", ".join(parts)

    def close(self, finished: bool = True) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.style == "lines" and finished:
            self.write(self.line(time.monotonic(), final=True))
            self.style = "off"


def status(opts: ProgressOptions, text: str) -> None:
    """What a command is doing between two passes (`writing the manifest...`), on stderr when
    progress is shown; a long silence after a bar reached 100 % looks like a hang."""
    if opts.show:
        _stderr_line(text)


__all__ = ["ProgressOptions", "ProgressMeter", "Plan", "duration", "DEFAULT_INTERVAL", "NO_PROGRESS", "progress_options",
           "Counter", "as_options", "no_progress_option", "status"]
