"""The one check of a run's options, wherever they come from: the command line, a checkpoint's
stored configuration or an arguments file. Each value must have the kind its declaration in
`train.cli.schema` gives (type and range); a bad one is a one-line `InputError` naming where it
came from. Reading them is their check: `read_options` hands back what the run keeps (`--input`
as its bands)."""

from __future__ import annotations

from typing import Any, Callable, Mapping

from sen12ms_common.errors import InputError

from .optionkinds import _Bad, shown
from .schema import DEVICES, MAX_STREAMS, MAX_THREADS, MAX_WORKERS, TRAIN, WORKERS_HELP, WorkersParam

# Options a checkpoint never sets (see their declarations).
NEVER_STORED: tuple[str, ...] = tuple(name for name, o in TRAIN.items() if not o.stored)

# name -> problem(value): None for a good value, else the one-line problem.
CHECKS: dict[str, Callable[[Any], str | None]] = {name: o.kind.problem for name, o in TRAIN.items()}


def _task_model(values: Mapping[str, Any], where: Callable[[str], str]) -> None:
    """The model must be one of the task's (a UNet cannot classify, a ResNet50 cannot segment)."""
    from ..models.registry import model_names  # the registry imports torch: only when options are checked

    if "task" not in values or "model" not in values:  # a part of the options (stored ones filling gaps)
        return
    task, model = values["task"], values["model"]
    if task in ("classification", "segmentation") and model not in model_names(task):
        raise InputError(f"{where('model')}: {shown(model)} is not a {task} model; choose one of: "
                         f"{', '.join(model_names(task))}")


def read_options(values: Mapping[str, Any], where: Callable[[str], str]) -> dict[str, Any]:
    """`values` (option name -> value) read and checked: InputError for the first of the wrong
    type or range, `where(name)` saying where it came from (`--batch-size`, `ckpt.pth: stored
    option 'batch_size'`). Names `train.cli.schema` does not declare are passed on unchecked."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        option = TRAIN.get(key)
        try:
            out[key] = option.kind.read(value) if option is not None else value
        except _Bad as exc:
            raise InputError(f"{where(key)}: {exc}") from None
    _task_model(values, where)
    return out


def check_options(values: Mapping[str, Any], where: Callable[[str], str]) -> None:
    """`read_options` for its check alone."""
    read_options(values, where)


def cli_name(key: str) -> str:
    option = TRAIN.get(key)
    return option.flag if option is not None else "--" + key.replace("_", "-")


def stored_options(saved: Mapping[Any, Any], source: str) -> dict[str, Any]:
    """The options a checkpoint's stored configuration may set, read and checked (InputError
    naming the file): every declared option except NEVER_STORED; unknown keys are ignored."""
    out = {k: v for k, v in saved.items() if isinstance(k, str) and k in TRAIN and TRAIN[k].stored}
    return read_options(out, lambda k: f"{source}: stored option {k!r}")


__all__ = ["DEVICES", "MAX_STREAMS", "MAX_THREADS", "MAX_WORKERS", "NEVER_STORED", "CHECKS", "WORKERS_HELP",
           "WorkersParam", "check_options", "read_options", "stored_options", "cli_name"]
