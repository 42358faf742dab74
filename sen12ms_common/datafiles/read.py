"""Reading the label and split files: ours (JSON, text) and the original toolbox's pickles."""

from __future__ import annotations

import re
from typing import Any, Iterator

import numpy as np

from . import labeljson, safepickle
from ..errors import InputError, UnsafePickleError
from ..storage import files as storage
from ..vocab.igbp import N_FULL
from ..vocab.names import REQUIRED_SPLITS, SPLITS
from ..vocab.patches import parse_patch
from .limits import MAX_ENTRIES, MAX_FILE_BYTES, MAX_NAME_CHARS, MAX_STRING_CHARS, describe, excerpt

LABEL_JSON = "IGBP_probability_labels.json"
LABEL_PKL = "IGBP_probability_labels.pkl"
JSON_FORMAT = "sen12ms-igbp-probability-labels"
JSON_VERSION = 1
_LINE = re.compile(r"[^\n]+")
_LEADING_SPACE = re.compile(rb"(?:\xef\xbb\xbf)?[ \t\n\r]*")


def read_source(source: str, what: str, error: type[ValueError], folder_hint: str = "",
                limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of a local file or object; a missing, unreadable or folder path, or one larger
    than `limit` bytes, raises `error` naming it as `what` ("label file", "split list", ...)."""
    try:
        with storage.open_read(source) as f:
            data = f.read(limit + 1)
    except FileNotFoundError:
        raise error(f"{source}: no such {what}") from None
    except IsADirectoryError:
        raise error(f"{source}: is a folder, expected a {what}{folder_hint}") from None
    except OSError as exc:
        raise error(f"{source}: cannot read ({exc.strerror or exc})") from None
    if len(data) > limit:
        raise error(f"{source}: larger than {limit} bytes, the most a {what} may hold") from None
    return data


def text_lines(data: bytes, source: str, error: type[ValueError], expected: str,
               max_chars: int = MAX_NAME_CHARS) -> Iterator[tuple[int, str]]:
    """(line number, stripped text) of the non-blank lines of a UTF-8 text file; a line longer
    than `max_chars` or more than MAX_ENTRIES lines raise `error` before they are copied.
    `expected` says what a line should hold, for the messages."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise error(f"{source}: not a text file (expected {expected})") from None
    number, last, count = 1, 0, 0
    for m in _LINE.finditer(text):
        number += text.count("\n", last, m.start())
        last = m.start()
        if m.end() - m.start() > 4 * max_chars:
            raise error(f"{source}:{number}: a line of {m.end() - m.start()} characters (expected {expected})")
        line = m.group().strip()
        if not line:
            continue
        count += 1
        if count > MAX_ENTRIES:
            raise error(f"{source}:{number}: more than {MAX_ENTRIES} lines")
        yield number, line


# --- label files -------------------------------------------------------------------------------

def _as_vector(value: Any, key: str, source: str) -> np.ndarray:
    label = f"{source}: label of {excerpt(key)}"
    if isinstance(value, (list, tuple)):
        if len(value) != N_FULL:
            raise InputError(f"{label} has {len(value)} values, a probability label has {N_FULL}")
        odd = [x for x in value if not isinstance(x, (int, float, np.number))]
        if odd:
            raise InputError(f"{label} is not a numeric vector (it holds {describe(odd[0])})")
    elif not isinstance(value, np.ndarray):
        raise InputError(f"{label} is not a numeric vector ({describe(value)})")
    elif value.size != N_FULL:
        raise InputError(f"{label} has {value.size} values, a probability label has {N_FULL}")
    try:
        vec = np.asarray(value, dtype=np.float64).reshape(-1)
    except OverflowError:
        vec = np.full(N_FULL, np.inf)
    if not np.isfinite(vec).all():
        raise InputError(f"{label} holds a value that is not a finite number")
    return vec


def _check_mapping(obj: Any, source: str) -> dict[str, np.ndarray]:
    if not isinstance(obj, dict):
        raise InputError(f"{source}: expected a dict of S2 file name -> {N_FULL} probabilities, "
                         f"found {type(obj).__name__}")
    if len(obj) > MAX_ENTRIES:
        raise InputError(f"{source}: more than {MAX_ENTRIES} labels")
    out: dict[str, np.ndarray] = {}
    for key, value in obj.items():
        if not isinstance(key, str) or len(key) > MAX_NAME_CHARS:
            raise InputError(f"{source}: label key {describe(key)} is not a file name")
        out[key] = _as_vector(value, key, source)
    return dict(sorted(out.items()))


def _parse_json(data: bytes, source: str) -> dict[str, np.ndarray]:
    try:
        doc = labeljson.parse_label_json(data, source, N_FULL)
    except InputError as exc:
        raise InputError(str(exc)) from None
    if "format" not in doc.header:  # the bare mapping of name -> vector
        if doc.labels is not None:
            raise InputError(f"{source}: a 'labels' entry without a 'format' entry ({JSON_FORMAT!r})")
        if doc.not_labels:
            key, pos = doc.not_labels[0]
            line = data.count(b"\n", 0, pos) + 1
            raise InputError(f"{source}: line {line}: label of {excerpt(key)} is not a list of {N_FULL} numbers")
        return dict(sorted(doc.bare.items()))
    if doc.header["format"] != JSON_FORMAT:
        raise InputError(f"{source}: JSON format {describe(doc.header['format'])}, expected {JSON_FORMAT!r}")
    if doc.header.get("version") != JSON_VERSION:
        raise InputError(f"{source}: label file version {describe(doc.header.get('version'))}, "
                         f"this toolbox reads {JSON_VERSION}")
    if doc.labels is None:
        raise InputError(f"{source}: no 'labels' entry")
    if doc.bare:
        raise InputError(f"{source}: label of {excerpt(next(iter(doc.bare)))} outside the 'labels' entry")
    return dict(sorted(doc.labels.items()))


def parse_labels(data: bytes, source: str) -> dict[str, np.ndarray]:
    """`load_labels` of the bytes of a label file: JSON if `source` ends in .json or the bytes
    start with '{', else a pickle. `source` names the file in errors."""
    first = _LEADING_SPACE.match(data).end()
    if source.lower().endswith(".json") or data[first:first + 1] == b"{":
        return _parse_json(data, source)
    try:
        obj = safepickle.loads(data, source)
    except UnsafePickleError as exc:
        raise InputError(str(exc)) from None
    return _check_mapping(obj, source)


def load_labels(path: str) -> dict[str, np.ndarray]:
    """Probability labels (S2 file name -> float64 (17,)) from our JSON or the original's pickle.

    Sums are not validated here (the converter checks each sample and reports); a malformed
    file, or one over the limits of `datalimits`, raises `InputError` naming it.
    """
    source = str(path)
    return parse_labels(read_source(source, "label file", InputError, f" ({LABEL_JSON} or {LABEL_PKL})"), source)


# --- split lists -------------------------------------------------------------------------------

def _parse_names(names: Iterator[tuple[str, Any]]) -> list[str]:
    """S2 file names of (where, name) pairs: each a SEN12MS S2 patch name, none twice."""
    out: list[str] = []
    seen: set[str] = set()
    for where, name in names:
        if not isinstance(name, str):
            raise InputError(f"{where}: {describe(name)} is not a file name string")
        name = name.strip()
        try:
            if len(name) > MAX_NAME_CHARS:
                raise InputError(name)
            pid = parse_patch(name)
        except InputError:
            raise InputError(f"{where}: {excerpt(name)} is not a SEN12MS patch name "
                             "(expected e.g. ROIs1158_spring_s2_1_p30.tif)") from None
        if pid.modality != "s2":
            raise InputError(f"{where}: {excerpt(name)} is an {pid.modality} name; split lists hold S2 file names")
        filename = pid.filename()
        if filename in seen:
            raise InputError(f"{where}: {filename} is listed twice")
        seen.add(filename)
        out.append(filename)
    return out


def parse_split_list(data: bytes, source: str) -> list[str]:
    """`read_split_list` of the bytes of a split list: a pickle if `source` ends in .pkl, else text."""
    if source.endswith(".pkl"):
        try:
            obj = safepickle.loads(data, source)
        except UnsafePickleError as exc:
            raise InputError(str(exc)) from None
        if not isinstance(obj, (list, tuple)):
            raise InputError(f"{source}: expected a pickled list of S2 file names, found {type(obj).__name__}")
        if len(obj) > MAX_ENTRIES:
            raise InputError(f"{source}: more than {MAX_ENTRIES} names")
        return _parse_names((f"{source} (item {i})", name) for i, name in enumerate(obj, 1))
    lines = text_lines(data, source, InputError, "one S2 file name per line")
    return _parse_names((f"{source}:{number}", line) for number, line in lines)


def read_split_list(path: str) -> list[str]:
    """S2 file names of one split list: text (one per line) or the original's pickled list."""
    source = str(path)
    return parse_split_list(read_source(source, "split list", InputError), source)


def read_excluded(path: str) -> dict[str, str]:
    """The `<S2 file name>: <reason>` lines of a split folder's `excluded.txt` (why patches are in
    no list); lines without ': ' are skipped. A file that is not text or over the limits raises
    `InputError` (one line)."""
    source = str(path)
    out: dict[str, str] = {}
    for _, line in text_lines(read_source(source, "list of excluded patches", InputError), source,
                              InputError, "'<S2 file name>: <reason>' per line", max_chars=MAX_STRING_CHARS // 4):
        name, sep, reason = line.partition(": ")
        if sep and name.strip():
            out[name.strip()] = reason.strip()
    return out


def load_splits(split_dir: str) -> dict[str, list[str]]:
    """Split lists of a folder: `{split}_list.txt`, else `{split}_list.pkl` (restricted unpickler).

    train and test are required, val is optional (no 'val' key without it). A name in two
    splits, a repeated name or a name that is not an S2 patch raises `InputError`.
    """
    root = str(split_dir)
    out: dict[str, list[str]] = {}
    for split in SPLITS:
        txt, pkl = storage.join(root, f"{split}_list.txt"), storage.join(root, f"{split}_list.pkl")
        if storage.exists(txt):
            out[split] = read_split_list(txt)
        elif storage.exists(pkl):
            out[split] = read_split_list(pkl)
        elif split in REQUIRED_SPLITS:
            raise InputError(f"{root}: no {split}_list.txt or {split}_list.pkl")
    owner: dict[str, str] = {}
    for split, names in out.items():
        for name in names:
            if name in owner:
                raise InputError(f"{root}: {name} is in both the {owner[name]} and the {split} list")
            owner[name] = split
    return out


__all__ = ["LABEL_JSON", "LABEL_PKL", "JSON_FORMAT", "JSON_VERSION", "SPLITS", "REQUIRED_SPLITS", "read_source",
           "text_lines", "parse_labels", "load_labels", "parse_split_list", "read_split_list", "read_excluded", "load_splits"]
