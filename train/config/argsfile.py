"""The original toolbox's arguments file: one `key: value` line per option."""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping

from sen12ms_common.datafiles.read import read_source
from sen12ms_common.errors import InputError
from sen12ms_common.storage import files as storage
from sen12ms_common.storage.redaction import redact
from sen12ms_common.vocab.bands import INPUT_SETS, resolve_bands
from sen12ms_common.vocab.igbp import LABEL_TYPES, SCHEMES

# Every option of the original main_train.py, in its order.
ORIGINAL_KEYS: tuple[str, ...] = (
    "exp_name", "data_dir", "label_split_dir", "use_s2", "use_s1", "use_RGB", "IGBP_simple",
    "label_type", "threshold", "model", "lr", "decay", "batch_size", "num_workers", "epochs",
    "resume",
)
# Original options that describe the original's machine or its file layout, not the model or
# the data: dropped when mapping to our options.
_DROPPED = ("exp_name", "data_dir", "label_split_dir", "num_workers", "resume")

_LINE = re.compile(r"^(?P<key>[A-Za-z_][A-Za-z0-9_.-]*):(?:\s+(?P<value>.*))?$")

__all__ = ["ORIGINAL_KEYS", "ArgumentsFile", "write_arguments_file",
           "read_arguments_file", "original_to_options", "options_to_original"]


class ArgumentsFile(dict):
    """`read_arguments_file`'s result: a plain dict of str -> str that remembers where each
    key came from, so that later errors can name the file and line."""

    def __init__(self, values: Mapping[str, str], source: str = "<arguments>",
                 lines: Mapping[str, int] | None = None) -> None:
        super().__init__(values)
        self.source = source
        self.lines = dict(lines or {})

    def where(self, key: str) -> str:
        line = self.lines.get(key)
        return f"{self.source}:{line}" if line else str(self.source)


def write_arguments_file(path: str, args: Mapping[str, Any]) -> None:
    """Write `key: value` lines (`str(value)`, as the original) atomically, in `args` order."""
    lines = []
    for key, value in args.items():
        text = redact(value)  # an option's URL is recorded without its credentials
        if not _LINE.match(f"{key}: x"):
            raise ValueError(f"arguments file key {key!r} is not a plain identifier")
        if "\n" in text or "\r" in text:
            raise ValueError(f"arguments file value of {key!r} holds a line break: {text!r}")
        lines.append("%s: %s\n" % (key, text))
    storage.write_text(str(path), "".join(lines))


def read_arguments_file(path: str, known_keys: Iterable[str] | None = None) -> ArgumentsFile:
    """Read a `key: value` file (the original's or ours) into a dict of strings.

    Blank lines are skipped. A line that is not `key: value`, a repeated key, or (when
    `known_keys` is given) a key outside it raises `InputError` naming file and line.
    """
    path = str(path)
    try:
        text = read_source(path, "arguments file", InputError).decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a text arguments file (not UTF-8)") from None
    known = set(known_keys) if known_keys is not None else None
    values: dict[str, str] = {}
    lines: dict[str, int] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        m = _LINE.match(line)
        if m is None:
            shown = line if len(line) <= 60 else line[:57] + "..."
            raise InputError(f"{path}:{lineno}: not a 'key: value' line: {shown!r}")
        key, value = m["key"], (m["value"] or "").strip()
        if key in values:
            raise InputError(f"{path}:{lineno}: {key!r} given twice (first on line {lines[key]})")
        if known is not None and key not in known:
            raise InputError(f"{path}:{lineno}: unknown key {key!r}")
        values[key] = value
        lines[key] = lineno
    if not values:
        raise InputError(f"{path}: empty arguments file")
    return ArgumentsFile(values, path, lines)


def _where(d: Mapping[str, str], key: str) -> str:
    return d.where(key) if isinstance(d, ArgumentsFile) else "arguments"


def _bool(d: Mapping[str, str], key: str) -> bool:
    v = d[key].strip()
    if v.lower() in ("true", "false"):
        return v.lower() == "true"
    raise InputError(f"{_where(d, key)}: {key} must be True or False, not {v!r}")


def _number(d: Mapping[str, str], key: str, kind: type) -> Any:
    v = d[key].strip()
    try:
        x = kind(v)
    except ValueError:
        raise InputError(f"{_where(d, key)}: {key} must be {'an integer' if kind is int else 'a number'}, "
                         f"not {v!r}") from None
    if kind is float and x != x:
        raise InputError(f"{_where(d, key)}: {key} is NaN")
    return x


def _input_set(use_s1: bool, use_s2: bool, use_rgb: bool) -> str | None:
    """The original dataset's rule: S2 (10 bands) wins over RGB; S1 is appended after either."""
    optical = "s2" if use_s2 else "rgb" if use_rgb else None
    if optical is None:
        return "s1" if use_s1 else None
    return {"s2": "s1s2", "rgb": "rgbs1"}[optical] if use_s1 else optical


def original_to_options(d: Mapping[str, str], known_extra: Iterable[str] | None = None) -> dict[str, Any]:
    """Our options from an arguments file (the original's, or ours with extra keys).

    Returns `model` (str), `label_type` (str), `igbp` ('simple' | 'full'), `input` (an input
    set name such as 's1s2', or our band list), and where present `threshold`, `lr`, `decay`
    (float) and `batch_size`, `epochs` (int). Our own keys (`input`, `igbp`) take precedence
    over the original's `use_s1`/`use_s2`/`use_RGB` and `IGBP_simple`. Any other key of ours
    (`stats`, `loader`, ...) is passed through as a string; the original's keys without a
    counterpart here (`exp_name`, `data_dir`, `label_split_dir`, `num_workers`, `resume`) are
    dropped. With `known_extra`, a key that is neither the original's, one of those above nor
    in `known_extra` raises `InputError`.
    """
    mapped = set(ORIGINAL_KEYS) | {"input", "igbp"}
    _check_keys(d, mapped, known_extra)
    out: dict[str, Any] = {"model": d["model"].strip(), "label_type": d["label_type"].strip()}
    if out["label_type"] not in LABEL_TYPES:
        raise InputError(f"{_where(d, 'label_type')}: label_type must be one of "
                         f"{', '.join(LABEL_TYPES)}, not {out['label_type']!r}")
    if "igbp" in d:
        out["igbp"] = d["igbp"].strip()
        if out["igbp"] not in SCHEMES:
            raise InputError(f"{_where(d, 'igbp')}: igbp must be {' or '.join(SCHEMES)}, "
                             f"not {out['igbp']!r}")
    else:
        out["igbp"] = "simple" if _bool(d, "IGBP_simple") else "full"
    out["input"] = _input_of(d)
    for key, kind in (("threshold", float), ("lr", float), ("decay", float),
                      ("batch_size", int), ("epochs", int)):
        if key in d:
            out[key] = _number(d, key, kind)
    for key, value in d.items():
        if key not in mapped and key not in _DROPPED:
            out[key] = value
    return out


def _check_keys(d: Mapping[str, str], mapped: set[str], known_extra: Iterable[str] | None) -> None:
    """Unknown keys (with `known_extra`) and missing ones raise `InputError`."""
    if known_extra is not None:
        allowed = mapped | set(known_extra)
        for key in d:
            if key not in allowed:
                raise InputError(f"{_where(d, key)}: unknown key {key!r}")
    missing = [k for k in ("model", "label_type") if k not in d]
    if "input" not in d and not any(k in d for k in ("use_s1", "use_s2", "use_RGB")):
        missing.append("input (or use_s1 / use_s2 / use_RGB)")
    if "igbp" not in d and "IGBP_simple" not in d:
        missing.append("igbp (or IGBP_simple)")
    if missing:
        source = d.source if isinstance(d, ArgumentsFile) else "arguments"
        raise InputError(f"{source}: missing {', '.join(missing)}")


def _input_of(d: Mapping[str, str]) -> str:
    """Our `input` (an input set name or a band list), else the original's use_* flags."""
    if "input" in d:
        spec = d["input"].strip()
        try:
            resolve_bands(spec)
        except InputError as exc:
            raise InputError(f"{_where(d, 'input')}: {exc}") from None
        return spec.lower() if spec.lower() in INPUT_SETS else spec
    flags = {k: _bool(d, k) if k in d else False for k in ("use_s1", "use_s2", "use_RGB")}
    name = _input_set(flags["use_s1"], flags["use_s2"], flags["use_RGB"])
    if name is None:
        source = d.source if isinstance(d, ArgumentsFile) else "arguments"
        raise InputError(f"{source}: no input: use_s1, use_s2 and use_RGB are all False")
    return name


def options_to_original(options: Mapping[str, Any]) -> dict[str, Any]:
    """The original's keys for our options, so that its `test.py` can read our arguments file.

    Needs `model`, `label_type`, `igbp`, `input`; copies `threshold`, `lr`, `decay`,
    `batch_size`, `epochs` when present. An input that is not one of the original's five sets
    (a custom band list) gets all `use_*` False: only our reader understands it (via `input`).
    """
    spec = str(options["input"]).strip().lower()
    flags = {"s2": (False, True, False), "rgb": (False, False, True), "s1": (True, False, False),
             "s1s2": (True, True, False), "rgbs1": (True, False, True)}.get(spec, (False, False, False))
    out: dict[str, Any] = {
        "use_s2": flags[1], "use_s1": flags[0], "use_RGB": flags[2],
        "IGBP_simple": options["igbp"] == "simple",
        "label_type": options["label_type"],
    }
    for key in ("threshold", "model", "lr", "decay", "batch_size", "epochs"):
        if key in options or key == "model":
            out[key] = options[key]
    return out
