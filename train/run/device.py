"""The training device: placement, stored uint16 -> normalised float input, AMP, channels_last,
torch.compile."""

from __future__ import annotations

import contextlib
import logging
import shutil
from dataclasses import dataclass
from typing import Any, ContextManager

import numpy as np
import torch
from torch import nn

from sen12ms_common.errors import UnavailableError
from sen12ms_common.kernels import compiled
from sen12ms_common.vocab.inputs import ChannelTransform

from ..data.symmetry import apply_symmetries, check_symmetries, move_sample

log = logging.getLogger(__name__)



def resolve_device(name: str = "auto") -> torch.device:
    """`auto` = the first CUDA device if there is one, else the CPU; `cuda[:N]` must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UnavailableError("--device cuda: no CUDA device is available here (torch.cuda.is_available() is False)")
    return dev


class InputTransform:
    """Stored uint16 batch (B, C, H, W) -> model input on `device` (float32).

    `reuse=True` (the training loop, evaluation, prediction, the bench): on the CPU the float batch
    is written into one buffer that this transform keeps, so a returned batch is valid only until
    the next call; a caller that keeps a batch must copy it (`.clone()`). Without it every call
    returns a fresh tensor. Fresh batches cost their page faults: a new 100 MB tensor a batch is
    mapped from the kernel page by page, about twice the time of the conversion itself
    (docs/performance.md). On a GPU the batch is always a fresh tensor (the caching allocator
    reuses the memory already)."""

    def __init__(self, transform: ChannelTransform, device: torch.device, channels_last: bool = False,
                 reuse: bool = False) -> None:
        shape = (1, -1, 1, 1)
        self.device = device
        self.channels_last = channels_last
        self.reuse = reuse
        self._buffer: torch.Tensor | None = None
        self.scale = torch.as_tensor(transform.scale, dtype=torch.float32, device=device).reshape(shape)
        self.offset = torch.as_tensor(transform.offset, dtype=torch.float32, device=device).reshape(shape)
        finite = torch.isfinite(torch.as_tensor(transform.clip))
        # Without a finite bound (every mode except S2 with --stats none) the clip is skipped.
        self.clip = (torch.as_tensor(transform.clip, dtype=torch.float32, device=device).reshape(shape)
                     if bool(finite.any()) else None)
        self._planes = tuple(np.ascontiguousarray(v, dtype=np.float32)  # clip, scale, offset per channel
                             for v in (transform.clip, transform.scale, transform.offset))

    def __call__(self, image: torch.Tensor, symmetry: torch.Tensor | None = None,
                 out: torch.Tensor | None = None) -> torch.Tensor:
        """`symmetry`: the batch's `--augment` codes, applied here on the device (the loader never
        pays for the strided moves): on a GPU one copy per sample before the conversion, on a CPU
        as each sample is converted. `out`: on a CPU, the float32 tensor to write the batch into."""
        x = image.to(self.device, non_blocking=True)
        if x.device.type == "cpu" and not x.is_floating_point():
            x = self._cpu_normalised(x, symmetry, out)
        else:
            x = apply_symmetries(x, symmetry)
            if not x.is_floating_point():  # stored values; a float batch is model input already
                x = self._normalised(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _normalised(self, x: torch.Tensor) -> torch.Tensor:
        out = uint16_to_float32(x)
        self._affine(out)
        return out

    def _cpu_normalised(self, x: torch.Tensor, symmetry: torch.Tensor | None,
                        out: torch.Tensor | None = None) -> torch.Tensor:
        # One pass per sample, the float batch streamed past the caches (stream_affine); a
        # sample's symmetry is a strided view (or a flipped copy) made contiguous first.
        codes = None if symmetry is None else check_symmetries(x, symmetry).tolist()
        out = self._cpu_out(x.shape) if out is None else out
        if codes is None:
            self._cpu_affine(x, out)
        else:
            bits = x.view(torch.int16) if x.dtype == torch.uint16 else x  # torch moves int16 faster
            for j in range(x.shape[0]):
                moved = move_sample(bits[j], int(codes[j])).contiguous()
                self._cpu_affine(moved.view(x.dtype).unsqueeze(0), out[j:j + 1])
        return out

    def _cpu_affine(self, x: torch.Tensor, out: torch.Tensor) -> None:
        kernels = compiled("streamaffine")
        stream_affine = kernels.stream_affine if kernels is not None else None
        if stream_affine is None or x.dtype != torch.uint16 or out.dtype != torch.float32 or not out.is_contiguous():
            out.copy_(x)  # exact: every uint16 is a float32
            self._affine(out)
            return
        src = x.contiguous().view(torch.int16).numpy().view(np.uint16)
        stream_affine(src.reshape(x.shape[0], x.shape[1], -1), out.numpy().reshape(x.shape[0], x.shape[1], -1),
                      *self._planes)

    def _cpu_out(self, shape: torch.Size) -> torch.Tensor:
        """The float batch to write: the kept buffer (its first rows for a short last batch)."""
        if not self.reuse:
            return torch.empty(shape, dtype=torch.float32)
        buf = self._buffer
        if buf is None or buf.shape[1:] != shape[1:] or buf.shape[0] < shape[0]:
            self._buffer = None  # the old one goes before the new one is mapped
            self._buffer = buf = torch.empty(shape, dtype=torch.float32)
        return buf[:shape[0]]

    def _affine(self, x: torch.Tensor) -> None:
        # In place: half the time of out-of-place ops on a CPU, and the same float32 rounding as
        # the numpy reference `ChannelTransform.apply`.
        if self.clip is not None:
            torch.minimum(x, self.clip, out=x)
        x.mul_(self.scale).add_(self.offset)


def uint16_to_float32(x: torch.Tensor) -> torch.Tensor:
    """uint16 -> float32 on any device (values 0..65535 exactly)."""
    if x.dtype != torch.uint16:
        return x.to(torch.float32)
    try:
        return x.to(torch.float32)
    except (RuntimeError, NotImplementedError):
        return _uint16_via_int32(x)  # a build without uint16 kernels on this device


def _uint16_via_int32(x: torch.Tensor) -> torch.Tensor:
    # Reinterpret the bits as int16 (same size), widen, drop the sign extension.
    return x.view(torch.int16).to(torch.int32).bitwise_and_(0xFFFF).to(torch.float32)


@dataclass
class Precision:
    """Autocast and gradient scaling of one run."""

    device: torch.device
    dtype: torch.dtype | None  # None: full float32
    scaler: Any  # torch.amp.GradScaler (enabled only for float16)

    def autocast(self) -> ContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    @property
    def name(self) -> str:
        return "float32" if self.dtype is None else str(self.dtype).replace("torch.", "")


def precision(device: torch.device, amp: bool) -> Precision:
    """--amp: bfloat16 autocast where the GPU supports it, else float16 with a GradScaler;
    on the CPU bfloat16 autocast (the scaler is not needed for bfloat16)."""
    dtype = None
    if amp:
        if device.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            dtype = torch.bfloat16
    scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)
    return Precision(device, dtype, scaler)


def compile_available() -> tuple[bool, str]:
    """Whether torch.compile can build kernels here (inductor needs a C++ compiler on the CPU)."""
    if not hasattr(torch, "compile"):
        return False, "this torch has no torch.compile"
    if shutil.which("g++") is None and shutil.which("c++") is None and shutil.which("clang++") is None:
        return False, "torch.compile needs a C++ compiler (g++/clang++) for CPU kernels and none is installed"
    return True, ""


def prepare_model(model: nn.Module, device: torch.device, *, channels_last: bool = False,
                  compile: bool = False) -> tuple[nn.Module, nn.Module]:
    """(model to save and load state from, module to call for the forward pass)."""
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    forward: nn.Module = model
    if compile:
        if device.type == "cpu":
            ok, why = compile_available()
            if not ok:
                raise UnavailableError(f"--compile: {why}")
        forward = torch.compile(model)
    return model, forward


def configure_backends(device: torch.device) -> None:
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as the original; fixed input size
