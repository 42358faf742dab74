"""Several processes under torchrun: the process group, DistributedDataParallel, and the few
collectives the training loop needs to keep every rank in step."""

from __future__ import annotations

import atexit
import gc
import multiprocessing as mp
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from sen12ms_common.errors import UnavailableError

from .device import resolve_device

ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class Dist:
    """This process's place in the job; `Dist()` is a single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None   # nccl | gloo; None for a single process
    # The process groups this process made besides the default one ({"control": gloo group for CPU
    # messages under NCCL}); `shutdown` empties it, so that no reference outlives the job.
    groups: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def control(self) -> Any:
        """The group of CPU messages: None (the default group) under gloo."""
        return self.groups.get("control")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def ranks_from_env(environ: Mapping[str, str] | None = None) -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's variables; (0, 1, 0) without them."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env:
        return 0, 1, 0
    try:
        rank, world, local = (int(env.get(k, "0")) for k in ENV_KEYS)
    except ValueError:
        raise UnavailableError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (as torchrun sets them): "
                               + ", ".join(f"{k}={env.get(k)!r}" for k in ENV_KEYS)) from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise UnavailableError(f"inconsistent torchrun environment: RANK={rank}, WORLD_SIZE={world}, "
                               f"LOCAL_RANK={local}")
    return rank, world, local


def device_for(name: str, local_rank: int, world_size: int) -> torch.device:
    """The device of this process: `cuda` and `auto` (with CUDA) become cuda:LOCAL_RANK."""
    dev = resolve_device(name)
    if dev.type != "cuda" or world_size == 1 or dev.index is not None:
        return dev
    count = torch.cuda.device_count()
    if local_rank < count:
        return torch.device("cuda", local_rank)
    if count == 1:  # the scheduler shows each process its own single GPU
        return torch.device("cuda", 0)
    raise UnavailableError(f"LOCAL_RANK {local_rank} but only {count} CUDA device(s) visible: start at most {count} "
                           "processes per node (torchrun --nproc_per_node)")


def init_from_env(device: str = "auto", environ: Mapping[str, str] | None = None) -> tuple[Dist, torch.device]:
    """Join torchrun's process group (if launched by it); returns (Dist, this process's device)."""
    rank, world, local = ranks_from_env(environ)
    dev = device_for(device, local, world)
    if world == 1:
        return Dist(), dev
    if not dist.is_available():
        raise UnavailableError("this PyTorch build has no torch.distributed")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
        backend = "nccl"
    else:
        backend = "gloo"
    use_fork_server()
    # Its functions bind `group.WORLD` as a default when imported: imported after the group exists
    # (torchvision does), they would keep it alive into interpreter exit (see `shutdown`).
    import torch.distributed.nn.functional  # noqa: F401
    if not dist.is_initialized():
        kwargs: dict[str, Any] = {"device_id": dev} if backend == "nccl" else {}
        dist.init_process_group(backend, rank=rank, world_size=world, **kwargs)
    groups = {"control": dist.new_group(backend="gloo")} if backend == "nccl" else {}
    d = Dist(rank, world, local, backend, groups)
    atexit.register(shutdown, d)  # the error paths: their tracebacks held the groups until now
    return d, dev


def use_fork_server() -> None:
    """Start this process's loader worker processes from a fork server with torch and the loader
    preloaded, so that starting one costs a fork of that server, not an import."""
    if mp.get_start_method(allow_none=True) in (None, "fork"):
        mp.set_forkserver_preload(["torch", "train.data.webdataset"])
        mp.set_start_method("forkserver", force=True)


def shutdown(d: Dist) -> None:
    """Destroy the process groups now, while the interpreter is whole (idempotent): a gloo group
    that outlives it aborts the process at exit (docs/DESIGN.md, "torchrun teardown")."""
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()
    if d.groups:
        d.groups.clear()
    if d.enabled:
        gc.collect()


def wrap_model(module: nn.Module, device: torch.device, d: Dist) -> nn.Module:
    """DistributedDataParallel around `module` (the plain or compiled model) for training steps."""
    if not d.enabled:
        return module

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids, output_device=ids[0] if ids else None)


# --- collectives (no-ops for one process) ------------------------------------------------------

def _all_reduce(d: Dist, values: Sequence[float], dtype: torch.dtype, op: str) -> list:
    """Element-wise reduction of `values` over all ranks on the control group (CPU tensors)."""
    t = torch.tensor(values, dtype=dtype)
    dist.all_reduce(t, op=getattr(dist.ReduceOp, op), group=d.control)
    return t.tolist()


def agree_max(d: Dist, flags: Sequence[int]) -> list[int]:
    """Element-wise maximum of `flags` over all ranks: a flag raised anywhere is raised everywhere."""
    flags = [int(f) for f in flags]
    return [int(v) for v in _all_reduce(d, flags, torch.int64, "MAX")] if d.enabled else flags


def sum_over_ranks(d: Dist, values: Sequence[float]) -> list[float]:
    """Element-wise sum of `values` over all ranks (float64)."""
    values = [float(v) for v in values]
    return [float(v) for v in _all_reduce(d, values, torch.float64, "SUM")] if d.enabled else values


def gather_objects(d: Dist, obj: Any) -> list[Any]:
    """`obj` of every rank, in rank order, on every rank (pickled; keep it small)."""
    if not d.enabled:
        return [obj]

    out: list[Any] = [None] * d.world_size
    dist.all_gather_object(out, obj, group=d.control)
    return out


def broadcast_object(d: Dist, obj: Any) -> Any:
    """Rank 0's `obj` on every rank."""
    if not d.enabled:
        return obj

    box = [obj if d.is_main else None]
    dist.broadcast_object_list(box, src=0, group=d.control)
    return box[0]


def broadcast_state(d: Dist, module: nn.Module, buffers_only: bool = False) -> None:
    """Copy rank 0's parameters and buffers (or only the buffers, e.g. BatchNorm statistics,
    which DDP leaves per rank) into `module` on every rank."""
    if not d.enabled:
        return

    tensors = list(module.buffers()) if buffers_only else list(module.state_dict(keep_vars=True).values())
    seen: set[int] = set()
    with torch.no_grad():
        for t in tensors:
            if id(t) in seen:  # a tensor registered twice (ResNet's conv1) is sent once
                continue
            seen.add(id(t))
            dist.broadcast(t.data, src=0)


def rank_seed(seed: int, rank: int) -> int:
    """Seed of rank `rank`'s torch RNG (dropout and the like): rank 0 keeps `seed`, so a single
    process and rank 0 draw the same; the others get independent streams."""
    if rank == 0:
        return seed
    return int(np.random.SeedSequence([seed, rank, 0x44445]).generate_state(1, np.uint64)[0] >> 1)


__all__ = ["Dist", "ranks_from_env", "device_for", "init_from_env", "use_fork_server",
           "shutdown", "wrap_model",
           "agree_max", "sum_over_ranks", "gather_objects", "broadcast_object", "broadcast_state", "rank_seed"]
