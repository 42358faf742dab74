"""Checkpoints: the original's format, safe loading, and what exact resume needs."""

from __future__ import annotations

import math
import pickle
import random
import re
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from sen12ms_common.errors import CheckpointError, exception_chain
from sen12ms_common.storage import files as storage
from sen12ms_common.vocab.bands import BandRef
from sen12ms_common.vocab.inputs import ChannelTransform

ORIGINAL_KEYS: tuple[str, ...] = ("epoch", "arch", "model_state_dict", "optimizer_state_dict", "best_prec")
# A run's timestamp (`YYYYmmdd_HHMMSS`): it names the run's files, so nothing else may stand there.
TIMESTAMP = re.compile(r"^\d{8}_\d{6}$")
# Wrapper prefixes in state-dict keys: DataParallel / DistributedDataParallel, torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")

__all__ = ["ORIGINAL_KEYS", "TIMESTAMP", "save_checkpoint", "load_checkpoint",
           "load_model_weights", "unwrap_model", "capture_rng_state", "restore_rng_state", "check_resume_state",
           "stored_input_transform"]


# ----------------------------------------------------------------------------- loading

def _numpy_scalar_globals() -> list:
    """What unpickling a numpy float scalar needs: reconstructor (both module names) + dtypes."""
    try:
        from numpy._core.multiarray import scalar  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import scalar  # numpy 1.x names it so
    allowed: list = [(scalar, "numpy.core.multiarray.scalar"),
                     (scalar, "numpy._core.multiarray.scalar"), np.dtype]
    # Rebuilding a dtype instance needs its class (numpy.dtypes.Float64DType in numpy 2).
    allowed += [type(np.dtype(t)) for t in (np.float64, np.float32)]
    return allowed


def _refused_globals(path: str, exc: Exception) -> str | None:
    """Names of the globals that made weights_only loading refuse a file; None if none did."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        allowed = {"numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar", "numpy.dtype"}
        names = [n for n in names if n not in allowed]
        if names:
            return ", ".join(names)
    except Exception:  # legacy (non-zip) files cannot be listed; fall back to the message
        pass
    found = re.findall(r"GLOBAL ([\w.]+)", str(exc))
    return ", ".join(dict.fromkeys(found)) if found else None


def _unpickling_detail(exc: Exception) -> str:
    """The informative line of torch's long weights_only message (e.g. 'Unsupported operand 109')."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for i, ln in enumerate(lines):
        if "WeightsUnpickler error" in ln:
            rest = ln.split("WeightsUnpickler error:", 1)[-1].strip()
            return rest or (lines[i + 1] if i + 1 < len(lines) else "garbled data")
    return lines[0] if lines else type(exc).__name__


def _is_bare_state_dict(obj: Mapping) -> bool:
    return bool(obj) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def load_checkpoint(path: str, map_location: Any = "cpu") -> dict:
    """Load a checkpoint (ours, the original's, or a bare state_dict) without running code.

    Returns a dict that always holds `model_state_dict`; the original's key variants
    `state_dict` / `optimizer` become `model_state_dict` / `optimizer_state_dict`, and numpy
    scalars at the top level (the original's `best_prec`) become Python numbers. Raises
    `CheckpointError` with a one-line message naming the file.
    """
    path = str(path)
    try:
        with storage.open_read(path) as f, torch.serialization.safe_globals(_numpy_scalar_globals()):
            obj = torch.load(f, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint file") from None
    except pickle.UnpicklingError as exc:
        refused = _refused_globals(path, exc)
        if refused is None:
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint "
                                  f"({_unpickling_detail(exc)})") from None
        raise CheckpointError(
            f"{path}: refused to load: it asks for {refused}, which is not tensor data (only "
            "tensors, numbers, strings, containers and numpy float scalars are accepted)") from None
    except Exception as exc:  # truncated / not a torch file: zip, EOF and unpickling errors vary
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({first})") from None

    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: not a checkpoint: it holds a {type(obj).__name__}, not a dict")
    if _is_bare_state_dict(obj):
        return {"model_state_dict": dict(obj)}
    ckpt = dict(obj)
    for ours, theirs in (("model_state_dict", "state_dict"), ("optimizer_state_dict", "optimizer")):
        if ours not in ckpt and isinstance(ckpt.get(theirs), Mapping):
            ckpt[ours] = ckpt.pop(theirs)
    if not isinstance(ckpt.get("model_state_dict"), Mapping):
        keys = ", ".join(map(str, list(ckpt)[:8]))
        raise CheckpointError(f"{path}: no model weights (no model_state_dict or state_dict; keys: {keys})")
    for k, v in ckpt.items():
        if isinstance(v, np.generic):
            ckpt[k] = v.item()
    return ckpt


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain model inside DataParallel / DistributedDataParallel / torch.compile wrappers."""
    wrappers = (nn.DataParallel, nn.parallel.DistributedDataParallel)
    while True:
        if isinstance(model, wrappers):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile
            model = model._orig_mod
        else:
            return model


def _strip_wrapper_prefixes(state: Mapping[str, Any]) -> dict[str, Any]:
    state = dict(state)
    changed = True
    while changed and state:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if all(isinstance(k, str) and k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                changed = True
    return state


def _fit_problems(model: nn.Module, state: Mapping[str, Any], strict: bool) -> str:
    own = model.state_dict()
    problems = []
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if strict and missing:
        problems.append(f"missing {len(missing)} keys ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})")
    if strict and unexpected:
        problems.append(f"unexpected {len(unexpected)} keys ({', '.join(unexpected[:3])}"
                        f"{', ...' if len(unexpected) > 3 else ''})")
    for k, v in state.items():
        if k in own and isinstance(v, torch.Tensor) and tuple(v.shape) != tuple(own[k].shape):
            problems.append(f"{k} is {tuple(v.shape)} in the checkpoint, {tuple(own[k].shape)} in the model")
            break
    return "; ".join(problems)


def load_model_weights(model: nn.Module, checkpoint: Mapping[str, Any], strict: bool = True,
                       source: str | None = None):
    """Copy a checkpoint's weights into `model` (DataParallel/DDP/compile prefixes handled).

    `checkpoint` is what `load_checkpoint` returns, an original-style dict (`state_dict`) or a
    bare state_dict. A checkpoint that does not fit (another model, input set or class count)
    raises `CheckpointError` naming the first problems; `source` (the file) prefixes it.
    Returns `load_state_dict`'s result (missing / unexpected keys when `strict=False`).
    """
    if "model_state_dict" in checkpoint:
        state = checkpoint["model_state_dict"]
    elif "state_dict" in checkpoint:
        state = checkpoint["state_dict"]
    elif _is_bare_state_dict(checkpoint):
        state = checkpoint
    else:
        raise CheckpointError(f"{source or 'checkpoint'}: no model weights (no model_state_dict or state_dict)")
    target = unwrap_model(model)
    state = _strip_wrapper_prefixes(state)
    problems = _fit_problems(target, state, strict)
    if problems:
        raise CheckpointError(f"{source or 'checkpoint'} does not fit the model: {problems}")
    bad = next((k for k, v in state.items() if isinstance(v, torch.Tensor) and v.is_floating_point()
                and not bool(torch.isfinite(v).all())), None)
    if bad is not None:
        raise CheckpointError(f"{source or 'checkpoint'}: weight {str(bad)[:100]} holds NaN or infinity (the "
                              "checkpoint of a diverged run?)")
    try:
        return target.load_state_dict(state, strict=strict)
    except (RuntimeError, TypeError, ValueError, KeyError, AttributeError) as exc:  # values that are not tensors
        text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or exc.__class__.__name__
        raise CheckpointError(f"{source or 'checkpoint'} does not fit the model ({text[:300]})") from None


# ----------------------------------------------------------------------------- saving

_LEAVES = (torch.Tensor, bool, int, float, complex, str, bytes, bytearray, type(None),
           torch.dtype, torch.device)


def _check_loadable(obj: Any, where: str) -> None:
    """Raise TypeError naming the first value that `torch.load(weights_only=True)` would refuse."""
    if isinstance(obj, _LEAVES):
        return
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            _check_loadable(k, f"{where} key {k!r}")
            _check_loadable(v, f"{where}[{k!r}]")
        return
    if isinstance(obj, (list, tuple, set, frozenset)):
        for i, v in enumerate(obj):
            _check_loadable(v, f"{where}[{i}]")
        return
    hint = " (convert numpy values with .tolist() / torch.from_numpy / float())" \
        if type(obj).__module__.startswith("numpy") else ""
    raise TypeError(f"{where} is a {type(obj).__module__}.{type(obj).__qualname__}, which "
                    f"torch.load(weights_only=True) refuses{hint}")


def made_at(ckpt: Mapping[str, Any]) -> str:
    """When a checkpoint was written, for messages: ours count optimizer steps; their `epoch` is
    the last finished one (-1 when --max-steps stopped the first), the original's its epoch."""
    return f"after step {ckpt['step']}" if "step" in ckpt else f"epoch {ckpt.get('epoch')}"


def save_checkpoint(path: str, *, epoch: int, arch: str, model_state_dict: Mapping[str, Any],
                    optimizer_state_dict: Mapping[str, Any], best_prec: float,
                    extra: Mapping[str, Any] | None = None) -> None:
    """Write a checkpoint atomically (a temporary name, then rename; S3: commit on close).

    Holds the original's keys (`epoch`, `arch`, `model_state_dict`, `optimizer_state_dict`,
    `best_prec` as a Python float) and `extra` (e.g. `scheduler_state_dict`, `rng_state` from
    `capture_rng_state()`, `scaler_state_dict`, `step`, `config`). Wrapper prefixes
    (`module.`, `_orig_mod.`) are stripped from the model's keys, so the file has the
    original's layout. Raises TypeError (before writing anything) for a value that
    `torch.load(weights_only=True)` would refuse, such as a numpy array.
    """
    ckpt: dict[str, Any] = {
        "epoch": int(epoch),
        "arch": str(arch),
        "model_state_dict": _strip_wrapper_prefixes(model_state_dict),
        "optimizer_state_dict": optimizer_state_dict,
        "best_prec": float(best_prec),
    }
    for key, value in (extra or {}).items():
        if key in ckpt:
            raise ValueError(f"extra key {key!r} would overwrite the original's checkpoint key")
        ckpt[key] = value
    _check_loadable(ckpt, "checkpoint")
    try:
        with storage.atomic_open(str(path)) as f:
            torch.save(ckpt, f)
    except storage.StorageError as exc:
        raise CheckpointError(f"{exc} (writing the checkpoint)") from None
    except (OSError, RuntimeError) as exc:
        # torch.save reports a failed write of its file object as a RuntimeError over the OSError.
        cause = next((e for e in exception_chain(exc) if isinstance(e, OSError)), None)
        if cause is None:
            raise
        raise CheckpointError(f"{path}: cannot write the checkpoint ({cause.strerror or cause})") from None


# ----------------------------------------------------------------------------- resuming


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _is_int(v: Any, lo: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= 2**62


def _is_real(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_resume_state(ckpt: Mapping[str, Any], source: str) -> None:
    """The fields a resumed run takes from a checkpoint, checked before any is used: where the run
    stands (counts >= 0), the loss sums and best score (finite), the run's timestamp (it names
    files: `YYYYmmdd_HHMMSS` only) and the containers of the states. CheckpointError naming the
    file and field otherwise."""
    checks = {
        "resume_epoch": (lambda v: _is_int(v, 0), "an integer >= 0"),
        "resume_batch": (lambda v: _is_int(v, 0), "an integer >= 0"),
        "step": (lambda v: _is_int(v, 0), "an integer >= 0"),
        "epoch": (lambda v: _is_int(v, -1), "an integer >= -1"),
        "best_prec": (_is_real, "a finite number"),
        "epoch_loss": (lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and _is_real(v[0])
                       and _is_int(v[1], 0), "a (finite sum, count) pair"),
        "timestamp": (lambda v: isinstance(v, str) and TIMESTAMP.match(v) is not None, "a YYYYmmdd_HHMMSS timestamp"),
        "rng_state": (lambda v: isinstance(v, Mapping), "a dict of RNG states"),
        "rank_rng_states": (lambda v: isinstance(v, (list, tuple)), "a list of RNG states"),
        "data_order": (lambda v: isinstance(v, Mapping), "a dict"),
        "optimizer_state_dict": (lambda v: isinstance(v, Mapping), "a state dict"),
        "scaler_state_dict": (lambda v: isinstance(v, Mapping), "a state dict"),
    }
    for key, (ok, want) in checks.items():
        if key in ckpt and ckpt[key] is not None and not ok(ckpt[key]):
            raise CheckpointError(f"{source}: stored {key} {_shown(ckpt[key])} is not {want}")


# ----------------------------------------------------------------------------- RNG states

def capture_rng_state() -> dict:
    """Python, numpy (global) and torch (CPU and every CUDA device) RNG states, in a form
    that `torch.load(weights_only=True)` reads back (tensors, tuples, numbers)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state = {
        "python": random.getstate(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what `capture_rng_state` captured (CUDA states only where CUDA is available)."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), int(n["pos"]),
                         int(n["has_gauss"]), float(n["cached_gaussian"])))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        cuda = [s.cpu() for s in state["cuda"]]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:
            for i, s in enumerate(cuda[: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(s, i)


# The largest normalisation scale or offset a checkpoint may store: scale = 1 / std of values
# stored as uint16, offset = -mean / std (the sample data's are about 0.005 and -6).
MAX_TRANSFORM = 1e6


def stored_input_transform(ckpt: Mapping[str, Any], input_bands: Sequence[BandRef], source: str) -> ChannelTransform | None:
    """The exact per-channel transform a checkpoint stores for `input_bands` (None if it stores
    none, or one for other bands); a damaged one is a `CheckpointError`."""
    t = ckpt.get("input_transform")
    if not isinstance(t, Mapping):
        return None
    bands = [b.name for b in input_bands]
    if not isinstance(t.get("bands"), (list, tuple)) or list(t["bands"]) != bands:
        return None
    try:
        scale, offset, clip = (np.asarray(t[k], dtype=np.float32) for k in ("scale", "offset", "clip"))
    except (KeyError, TypeError, ValueError):
        scale = offset = clip = np.zeros(0, np.float32)
    shapes_ok = scale.shape == offset.shape == clip.shape == (len(bands),)
    if not shapes_ok or not (np.isfinite(scale).all() and np.isfinite(offset).all()) or np.isnan(clip).any():
        raise CheckpointError(f"{source}: stored input_transform is not {len(bands)} finite scales and offsets "
                              "and upper bounds")
    if np.abs(scale).max() > MAX_TRANSFORM or np.abs(offset).max() > MAX_TRANSFORM:
        raise CheckpointError(f"{source}: stored input_transform has a scale or offset beyond +-{MAX_TRANSFORM:g} "
                              f"(largest {max(np.abs(scale).max(), np.abs(offset).max()):g}); a normalisation of "
                              "stored values never needs one")
    return ChannelTransform(scale, offset, clip)
