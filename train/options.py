"""The one check of a run's options, wherever they come from: the command line, a checkpoint's
stored configuration or an arguments file. Each value must have its type and lie in its range;
a bad one is a one-line `OptionError` naming where it came from."""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import click

from sen12ms_common.bands import BandError
from sen12ms_common.errors import Sen12msError
from sen12ms_common.igbp import LABEL_TYPES, SCHEMES
from sen12ms_common.inputs import STATS_CHOICES

from .optimizers import OPTIMIZERS
from .presets import PRESET_NAMES

DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")  # auto: CUDA when available, else the CPU

# Bounds that keep a run from hanging or allocating without end (documented in --help).
MAX_STREAMS = 1024
MAX_WORKERS = 1024
MAX_THREADS = 256
MAX_INT = 2**31 - 1           # counts: epochs, steps, batch size, shuffle buffer
MAX_SEED = 2**63 - 1
MAX_TB_IMAGES = 64            # validation patches shown in TensorBoard
# Options a checkpoint never sets: where the run writes comes from the command line (--run-dir)
# or from where the checkpoint lies, and --resume is the checkpoint itself; the preset and the
# starting weights belong to the run's start, which a resumed run has behind it.
NEVER_STORED: tuple[str, ...] = ("run_dir", "resume", "preset", "init_from", "init_partial", "pretrained_backbone")


class OptionError(ValueError, Sen12msError):
    """An option of the wrong type or out of its range (one line naming its source)."""


def _int(lo: int, hi: int) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        ok = isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi
        return None if ok else f"an integer in {lo}..{hi}"
    return check


def _real(lo: float, hi: float, low_open: bool = False) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        ok = (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
              and (lo < v if low_open else lo <= v) and v <= hi)
        bound = f"> {lo}" if low_open else f">= {lo}"
        return None if ok else (f"a finite number {bound}" + (f" and <= {hi}" if math.isfinite(hi) else ""))
    return check


def _choice(*choices: str) -> Callable[[Any], str | None]:
    return lambda v: None if isinstance(v, str) and v in choices else "one of " + ", ".join(choices)


def _bool(v: Any) -> str | None:
    return None if isinstance(v, bool) else "True or False"


def _text(v: Any) -> str | None:
    return None if isinstance(v, str) and v and "\n" not in v and len(v) <= 4096 else "a path or URL"


def _optional(check: Callable[[Any], str | None]) -> Callable[[Any], str | None]:
    return lambda v: None if v is None else check(v)


def _model(v: Any) -> str | None:
    from .models import TASKS, model_names

    known = [m for t in TASKS for m in model_names(t)]
    if isinstance(v, str) and v in known:
        return None
    return f"!unknown model {_shown(v)}; choose one of: {', '.join(known)}"


def _split(v: Any) -> str | None:
    from sen12ms_common.names import ALL_SPLITS

    return _choice(*ALL_SPLITS)(v)


def _task_model(values: Mapping[str, Any], where: Callable[[str], str]) -> None:
    """The model must be one of the task's (a UNet cannot classify, a ResNet50 cannot segment)."""
    from .models import model_names

    if "task" not in values or "model" not in values:  # a part of the options (stored ones filling gaps)
        return
    task, model = values["task"], values["model"]
    if task in ("classification", "segmentation") and model not in model_names(task):
        raise OptionError(f"{where('model')}: {_shown(model)} is not a {task} model; choose one of: "
                          f"{', '.join(model_names(task))}")


def _input(v: Any) -> str | None:
    from .config import canonical_input

    if not isinstance(v, str):
        return "an input set or band names"
    try:
        canonical_input(v)
    except (BandError, ValueError) as exc:
        return "!" + (str(exc).splitlines()[0] if str(exc) else "not an input set or band names")
    return None


def _workers(v: Any) -> str | None:
    return None if v == "auto" or _int(0, MAX_WORKERS)(v) is None else f"auto or an integer in 0..{MAX_WORKERS}"


def _loader(v: Any) -> str | None:
    from .data import loader_names

    return _choice(*loader_names())(v)


def _task(v: Any) -> str | None:
    from .tasks import task_names

    return _choice(*task_names())(v)


CHECKS: dict[str, Callable[[Any], str | None]] = {
    "shards": _optional(_text),
    "task": _task,
    "model": _model,
    "input": _input,
    "label_type": _choice(*LABEL_TYPES),
    "igbp": _choice(*SCHEMES),
    "threshold": _real(0.0, 1.0),
    "epochs": _int(1, MAX_INT),
    "batch_size": _int(1, MAX_INT),
    "lr": _real(0.0, math.inf, low_open=True),
    "decay": _real(0.0, math.inf),
    "optimizer": _choice(*OPTIMIZERS),
    "workers": _workers,
    "threads": _int(0, MAX_THREADS),
    "loader": _loader,
    "device": _choice(*DEVICES),
    "amp": _bool,
    "channels_last": _bool,
    "compile": _bool,
    "run_dir": _optional(_text),
    "resume": _optional(_text),
    "max_steps": _optional(_int(0, MAX_INT)),
    "stats": _choice(*STATS_CHOICES),
    "seed": _int(0, MAX_SEED),
    "shuffle_buffer": _int(1, MAX_INT),
    "streams": _int(1, MAX_STREAMS),
    "verify": _bool,
    "skip_bad_shards": _bool,
    "augment": _bool,
    "no_savanna": _bool,
    "output_stride": lambda v: None if v in (8, 16) and not isinstance(v, bool) else "8 or 16",
    "val_split": _split,
    "test_split": _split,
    "preset": _optional(_choice(*PRESET_NAMES)),
    "init_from": _optional(_text),
    "init_partial": _bool,
    "pretrained_backbone": _optional(_text),
    "val_every_steps": _int(0, MAX_INT),
    "tb_images": _int(0, MAX_TB_IMAGES),
}


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class WorkersParam(click.ParamType):
    """`--workers`: auto, or a number of worker processes (0: the process itself reads)."""

    name = "auto|N"

    def convert(self, value: Any, param: Any, ctx: Any) -> int | str:
        text = str(value).strip().lower()
        if text == "auto":
            return "auto"
        try:
            n = int(text) if not isinstance(value, bool) else -1
        except ValueError:
            self.fail(f"{value!r} is neither auto nor a number of processes", param, ctx)
        if not 0 <= n <= MAX_WORKERS:
            self.fail(f"{n} is not in the range 0<=x<={MAX_WORKERS}.", param, ctx)
        return n


WORKERS_HELP = ("Loader worker processes: auto (one per CPU here, shared among a node's ranks under torchrun, at "
                "most --streams; none on a single CPU), or a number; 0: this process reads, with --threads "
                "threads. Does not change the data order.")


def check_options(values: Mapping[str, Any], where: Callable[[str], str]) -> None:
    """Raise OptionError for the first value in `values` (option name -> value) of the wrong type
    or range; `where(name)` says where it came from (`--batch-size`, `ckpt.pth: stored option
    'batch_size'`). Names this module does not know are not checked."""
    for key, value in values.items():
        check = CHECKS.get(key)
        problem = check(value) if check is not None else None
        if problem is not None:  # a check says what is wanted, or ('!...') the whole problem
            text = problem[1:] if problem.startswith("!") else f"{_shown(value)} is not {problem}"
            raise OptionError(f"{where(key)}: {text}")
    _task_model(values, where)


def cli_name(key: str) -> str:
    return "--" + {"input": "input", "verify": "no-verify"}.get(key, key).replace("_", "-")


def stored_options(saved: Mapping[Any, Any], source: str) -> dict[str, Any]:
    """The options a checkpoint's stored configuration may set, checked (OptionError naming
    the file): every known option except NEVER_STORED; unknown keys are ignored."""
    out = {k: v for k, v in saved.items() if isinstance(k, str) and k in CHECKS and k not in NEVER_STORED}
    check_options(out, lambda k: f"{source}: stored option {k!r}")
    return out


__all__ = ["MAX_STREAMS", "MAX_THREADS", "MAX_WORKERS", "NEVER_STORED", "OptionError", "check_options", "stored_options",
           "cli_name"]
