"""Worker processes of the webdataset loader. They live as long as their loader; each decodes
the batches of its read streams straight into a ring of shared-memory slots the loader made, and
sends only a small message per batch (`train.data.items`); a slot goes back to its worker once
every tensor over it is freed (`leases`)."""

from __future__ import annotations

import math
import multiprocessing
import signal
import traceback
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.util import Finalize
from typing import Any, Callable, Iterator

import numpy as np
import torch

from sen12ms_common.errors import DataError
from .items import Decoded, Done, Item, WorkerFailed
from .leases import tensor_over

SLOTS = 3  # per worker: the batch its consumer still holds, the one handed out, one being filled
_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


@dataclass(frozen=True)
class SlotShape:
    """What one slot holds: a full uint16 image batch and (segmentation) its uint8 masks."""

    image: tuple[int, ...]
    mask: tuple[int, ...] | None = None

    @property
    def image_bytes(self) -> int:
        return 2 * math.prod(self.image)

    @property
    def nbytes(self) -> int:
        return self.image_bytes + (math.prod(self.mask) if self.mask else 0)


class SlotRing:
    """The slots of every worker of a loader: torch shared-memory tensors (handed to a worker by
    inheritance when forked, as a file descriptor when started by a fork server), filled once here
    so that no batch pays for fresh pages; kept for the loader's life."""

    def __init__(self, shape: SlotShape, workers: int, per_worker: int = SLOTS) -> None:
        self.shape, self.per_worker = shape, per_worker
        try:
            self.tensors = [[torch.zeros(shape.nbytes, dtype=torch.uint8).share_memory_() for _ in range(per_worker)]
                            for _ in range(workers)]
        except (RuntimeError, OSError, MemoryError) as exc:
            mb = workers * per_worker * shape.nbytes / 1e6
            raise DataError(f"cannot allocate the {mb:.0f} MB of shared memory the loader's {workers} worker "
                            f"processes fill batches in ({str(exc).splitlines()[0] if str(exc) else exc!r}): use "
                            "fewer --workers, a smaller --batch-size, or --workers 0") from None
        self._views()

    def _views(self) -> None:
        self.slots = [[t.numpy() for t in mine] for mine in self.tensors]

    def __getstate__(self) -> dict[str, Any]:
        return {"shape": self.shape, "per_worker": self.per_worker, "tensors": self.tensors}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.shape, self.per_worker, self.tensors = state["shape"], state["per_worker"], state["tensors"]
        self._views()

    def views(self, w: int, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        """(image, mask) arrays over slot i of worker w (full batch shapes)."""
        buf, s = self.slots[w][i], self.shape
        image = buf[:s.image_bytes].view(np.uint16).reshape(s.image)
        mask = buf[s.image_bytes:].reshape(s.mask) if s.mask else None
        return image, mask

    def tensors_over(self, whole: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(image, mask) tensors over `whole`, a uint8 tensor over one slot (full batch shapes)."""
        s = self.shape
        image = whole[:s.image_bytes].view(torch.uint16).view(s.image)
        mask = whole[s.image_bytes:].view(s.mask) if s.mask else None
        return image, mask


# --- in the worker ----------------------------------------------------------------------------

class _EpochStopped(Exception):
    """The loader left the epoch early: the worker drops the rest of it."""


class WorkerSlots:
    """A worker's side of its ring: `take` waits for a slot the loader gave back, and sees the
    loader's request to stop the epoch."""

    def __init__(self, ring: SlotRing, w: int, control: Connection) -> None:
        self.ring, self.w, self.control = ring, w, control
        self.free: deque[int] = deque()

    def take(self) -> tuple[int, np.ndarray, np.ndarray | None]:
        while self.control.poll() or not self.free:
            msg = self.control.recv()  # EOFError: the loader is gone
            if not isinstance(msg, int):
                raise _EpochStopped
            self.free.append(msg)
        i = self.free.popleft()
        return (i, *self.ring.views(self.w, i))

    def give(self, i: int) -> None:
        self.free.append(i)


def to_message(item: Item) -> Item:
    """The item as it crosses to the loader: a batch made in its slot without the slot's
    tensors (the loader makes them over the slot), the rest as numpy."""
    if not isinstance(item, Decoded):
        return item
    batch = {name: value.numpy() if isinstance(value, torch.Tensor) else value for name, value in item.batch.items()
             if item.slot is None or name not in ("image", "mask")}
    if item.slot is not None:
        batch["rows"] = len(item.batch["key"])
    return Decoded(item.at, batch, item.events, item.slot)


Run = Callable[[int, int, int, int, WorkerSlots], Iterator[Item]]  # (w, k, epoch, start, slots)


def _worker(run: Run, ring: SlotRing, w: int, control: Connection, out: Connection,
            inherited: list[Connection]) -> None:
    """Epochs on request ("epoch", token, k, epoch, start batch, free slots), until the loader
    closes its end; each ends with `Done(token)`."""
    for c in inherited:  # the loader's and other workers' pipe ends: theirs must close when they die
        c.close()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the loader's process stops us
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    slots = WorkerSlots(ring, w, control)
    try:
        while True:
            cmd = control.recv()
            if isinstance(cmd, int) or cmd[0] != "epoch":
                continue  # a slot freed, or a stop, after the epoch's end
            _, token, k, epoch, start, free = cmd
            slots.free = deque(free)
            try:
                for item in run(w, k, epoch, start, slots):
                    out.send(to_message(item))
            except _EpochStopped:
                pass
            out.send(Done(token))
    except (EOFError, BrokenPipeError):
        return  # the loader closed
    except BaseException as exc:
        last = traceback.format_exception_only(type(exc), exc)[-1].strip()
        try:
            out.send(WorkerFailed(last))
        except OSError:
            pass


@contextmanager
def _signals_blocked() -> Iterator[None]:
    """Fork with SIGTERM / Ctrl-C blocked: a signal to the process group must not kill a worker
    before it ignores them (the loader's process writes its checkpoint, then stops them)."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


# --- in the loader's process ------------------------------------------------------------------

class WorkerFeeds:
    """Worker processes that live as long as their loader (their buffer pools warm across
    epochs); `epoch(k, epoch, start)` starts one in workers 0..k-1 and returns their item feeds,
    images (and masks) as tensors over the slots."""

    def __init__(self, run: Run, ring: SlotRing, copy_out: bool = False) -> None:
        self.ring, self.copy_out = ring, copy_out
        k = len(ring.slots)
        self.lent: list[set[int]] = [set() for _ in range(k)]
        self._freed: deque[tuple[int, int]] = deque()  # (worker, slot) whose tensors were freed
        self.token = 0
        self.running: dict[int, int] = {}  # worker -> the token of its unfinished epoch
        # The default start method: fork, or (under torchrun, `train.run.distributed.use_fork_server`)
        # a fork server, since the process group's threads make forking the process unsafe.
        ctx = multiprocessing.get_context()
        forked = ctx.get_start_method() == "fork"
        self.procs: list[Any] = []
        self.outs: list[Connection] = []
        self.controls: list[Connection] = []
        with _signals_blocked():
            for w in range(k):
                out_r, out_w = ctx.Pipe(duplex=False)
                control_r, control_w = ctx.Pipe(duplex=False)
                inherited = [*self.outs, *self.controls, out_r, control_w] if forked else []
                proc = ctx.Process(target=_worker, args=(run, ring, w, control_r, out_w, inherited),
                                   name=f"loader-worker-{w}", daemon=True)
                proc.start()
                out_w.close()
                control_r.close()
                self.procs.append(proc)
                self.outs.append(out_r)
                self.controls.append(control_w)
        # Before multiprocessing joins its children at exit (they ignore its SIGTERM), and when
        # the loader is dropped without `close`.
        self._shutdown = Finalize(self, _shutdown, args=(self.procs, self.outs, self.controls), exitpriority=10)

    def _send(self, w: int, msg: Any) -> None:
        try:
            self.controls[w].send(msg)
        except OSError:
            pass  # a dead worker: `_receive` says so

    def _release(self) -> None:
        """Send the slots whose tensors were freed back to their workers."""
        while self._freed:
            w, i = self._freed.popleft()
            if i in self.lent[w]:
                self.lent[w].discard(i)
                self._send(w, i)

    def _receive(self, w: int) -> Item | Done:
        conn, proc = self.outs[w], self.procs[w]
        while True:
            ready = wait([conn, proc.sentinel])
            if conn in ready:
                try:
                    msg = conn.recv()
                except (EOFError, OSError):  # its end closed, maybe in the middle of a message
                    pass
                else:
                    if isinstance(msg, WorkerFailed):
                        raise DataError(f"loader worker process {w} failed: {msg.message}")
                    return msg
            proc.join(timeout=1)
            if not proc.is_alive():
                code = proc.exitcode
                how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit status {code}"
                why = ("a shard cut short in place while it was read?" if code == -signal.SIGBUS
                       else "out of memory?")
                raise DataError(f"loader worker process {w} died ({how}; {why}): run again with "
                                "--resume, with fewer --workers or with --workers 0")

    def _item(self, w: int, item: Item) -> Item:
        """A worker's item with its batch as tensors, the image (and mask) over its slot."""
        if not isinstance(item, Decoded):
            return item
        batch = {name: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for name, v in item.batch.items()}
        slot = item.slot
        if slot is not None:
            rows = batch.pop("rows")
            buf = self.ring.slots[w][slot]
            # A consumer holding every slot would leave the worker none to fill: hand a copy then.
            copy = self.copy_out or len(self.lent[w]) + 1 >= self.ring.per_worker
            # Tensors over a storage of their own: the slot goes back when the batch is freed.
            whole = torch.from_numpy(buf) if copy else tensor_over(buf, self._freed.append, (w, slot))
            image, mask = self.ring.tensors_over(whole)
            batch["image"] = image[:rows]
            if mask is not None:
                batch["mask"] = mask[:rows]
            if copy:
                for name in ("image", "mask"):
                    if name in batch:
                        batch[name] = batch[name].pin_memory() if self.copy_out else batch[name].clone()
                self._send(w, slot)
            else:
                self.lent[w].add(slot)
        return Decoded(item.at, batch, item.events)

    def epoch(self, k: int, epoch: int, start: int) -> list[Iterator[Item]]:
        """Start an epoch in workers 0..k-1; their feeds. Call `end_epoch` when done with them."""
        self.end_epoch()
        self.token += 1
        self._release()
        for w in range(k):
            free = [i for i in range(self.ring.per_worker) if i not in self.lent[w]]
            self.running[w] = self.token
            self._send(w, ("epoch", self.token, k, epoch, start, free))
        return [self._feed(w, self.token) for w in range(k)]

    def _feed(self, w: int, token: int) -> Iterator[Item]:
        while True:
            self._release()
            msg = self._receive(w)
            if msg == Done(token):
                self.running.pop(w, None)
                return
            yield self._item(w, msg)

    def end_epoch(self) -> None:
        """Stop the workers whose epoch is unfinished (left early): what they sent meanwhile is
        dropped, its slots are free again."""
        if not self._shutdown.still_active():
            return
        for w, token in self.running.items():
            self._send(w, ("stop", token))
        for w, token in list(self.running.items()):
            try:
                while self._receive(w) != Done(token):
                    pass
            except DataError:
                pass  # it died or failed: its next epoch says so
            del self.running[w]

    def close(self) -> None:
        self._shutdown()


def _shutdown(procs: list[Any], outs: list[Connection], controls: list[Connection]) -> None:
    """Close the pipes (a worker waiting on one ends), then reap the workers."""
    for c in outs + controls:
        c.close()
    for proc in procs:
        proc.join(timeout=1)
        if proc.is_alive():
            proc.kill()
            proc.join()
