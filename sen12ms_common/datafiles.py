"""Reading the label and split files: ours (JSON, text) and the original toolbox's pickles.

`load_labels` reads `IGBP_probability_labels.json` (ours) or `.pkl` (the original's);
`read_split_list` one split list (`train_list.txt` or `.pkl`), `load_splits` a folder of them.
Pickles go through the restricted unpickler (`safepickle`). Every problem raises an error whose
one-line message names the file (and the line, for text files). The formats are described in
labels/README.md and splits/README.md.
"""

from __future__ import annotations

import json
import pickle
from typing import Any

import numpy as np

from . import safepickle, storage
from .igbp import N_FULL
from .patches import PatchNameError, parse_patch

LABEL_JSON = "IGBP_probability_labels.json"
LABEL_PKL = "IGBP_probability_labels.pkl"
JSON_FORMAT = "sen12ms-igbp-probability-labels"
JSON_VERSION = 1
SPLITS: tuple[str, ...] = ("train", "val", "test")
REQUIRED_SPLITS: tuple[str, ...] = ("train", "test")


class LabelFileError(ValueError):
    """A label file that cannot be used; the message names the file."""


class SplitFileError(ValueError):
    """A hold-out or split list that cannot be used; the message names the file."""


def read_source(source: str, what: str, error: type[ValueError], folder_hint: str = "") -> bytes:
    """The bytes of a local file or object; a missing, unreadable or folder path raises `error`
    naming it as `what` ("label file", "split list", ...)."""
    try:
        return storage.read_bytes(source)
    except FileNotFoundError:
        raise error(f"{source}: no such {what}") from None
    except IsADirectoryError:
        raise error(f"{source}: is a folder, expected a {what}{folder_hint}") from None
    except OSError as exc:
        raise error(f"{source}: cannot read ({exc.strerror or exc})") from None


# --- label files -------------------------------------------------------------------------------

def _as_vector(value: Any, key: str, source: str) -> np.ndarray:
    try:
        vec = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise LabelFileError(f"{source}: label of {key!r} is not a numeric vector ({exc})") from None
    if vec.size != N_FULL:
        raise LabelFileError(f"{source}: label of {key!r} has {vec.size} values, a probability label has {N_FULL}")
    return vec


def _check_mapping(obj: Any, source: str) -> dict[str, np.ndarray]:
    if not isinstance(obj, dict):
        raise LabelFileError(f"{source}: expected a dict of S2 file name -> {N_FULL} probabilities, "
                             f"found {type(obj).__name__}")
    out: dict[str, np.ndarray] = {}
    for key, value in obj.items():
        if not isinstance(key, str):
            raise LabelFileError(f"{source}: label key {key!r} is not a file name string")
        out[key] = _as_vector(value, key, source)
    return dict(sorted(out.items()))


def _parse_json(data: bytes, source: str) -> dict[str, np.ndarray]:
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LabelFileError(f"{source}: not valid JSON ({exc})") from None
    if isinstance(obj, dict) and "format" in obj:
        if obj.get("format") != JSON_FORMAT:
            raise LabelFileError(f"{source}: JSON format {obj.get('format')!r}, expected {JSON_FORMAT!r}")
        if obj.get("version") != JSON_VERSION:
            raise LabelFileError(f"{source}: label file version {obj.get('version')!r}, this toolbox reads {JSON_VERSION}")
        if "labels" not in obj:
            raise LabelFileError(f"{source}: no 'labels' entry")
        obj = obj["labels"]
    return _check_mapping(obj, source)


def load_labels(path: str) -> dict[str, np.ndarray]:
    """Probability labels (S2 file name -> float64 (17,)) from our JSON or the original's pickle.

    Sums are not validated here (the converter checks each sample and reports); a malformed
    file raises `LabelFileError` naming it.
    """
    source = str(path)
    data = read_source(source, "label file", LabelFileError, f" ({LABEL_JSON} or {LABEL_PKL})")
    if source.lower().endswith(".json") or data.lstrip()[:1] == b"{":
        return _parse_json(data, source)
    try:
        obj = safepickle.loads(data, source)
    except pickle.UnpicklingError as exc:
        raise LabelFileError(str(exc).splitlines()[0]) from None
    return _check_mapping(obj, source)


# --- split lists -------------------------------------------------------------------------------

def _parse_names(names: list, source: str, lines: list[int] | None = None) -> list[str]:
    out: list[str] = []
    seen: set[str] = set()
    for i, name in enumerate(names):
        where = f"{source}:{lines[i]}" if lines else f"{source} (item {i + 1})"
        if not isinstance(name, str):
            raise SplitFileError(f"{where}: {name!r} is not a file name string")
        try:
            pid = parse_patch(name.strip())
        except PatchNameError:
            raise SplitFileError(f"{where}: {name.strip()!r} is not a SEN12MS patch name "
                                 "(expected e.g. ROIs1158_spring_s2_1_p30.tif)") from None
        if pid.modality != "s2":
            raise SplitFileError(f"{where}: {name.strip()!r} is an {pid.modality} name; split lists hold S2 file names")
        filename = pid.filename()
        if filename in seen:
            raise SplitFileError(f"{where}: {filename} is listed twice")
        seen.add(filename)
        out.append(filename)
    return out


def read_split_list(path: str) -> list[str]:
    """S2 file names of one split list: text (one per line) or the original's pickled list."""
    source = str(path)
    data = read_source(source, "split list", SplitFileError)
    if source.endswith(".pkl"):
        try:
            obj = safepickle.loads(data, source)
        except pickle.UnpicklingError as exc:
            raise SplitFileError(str(exc).splitlines()[0]) from None
        if not isinstance(obj, (list, tuple)):
            raise SplitFileError(f"{source}: expected a pickled list of S2 file names, found {type(obj).__name__}")
        return _parse_names(list(obj), source)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SplitFileError(f"{source}: not a text file (expected one S2 file name per line)") from None
    numbered = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    return _parse_names([line for _, line in numbered], source, [n for n, _ in numbered])


def load_splits(split_dir: str) -> dict[str, list[str]]:
    """Split lists of a folder: `{split}_list.txt`, else `{split}_list.pkl` (restricted unpickler).

    train and test are required, val is optional (no 'val' key without it). A name in two
    splits, a repeated name or a name that is not an S2 patch raises `SplitFileError`.
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
            raise SplitFileError(f"{root}: no {split}_list.txt or {split}_list.pkl")
    owner: dict[str, str] = {}
    for split, names in out.items():
        for name in names:
            if name in owner:
                raise SplitFileError(f"{root}: {name} is in both the {owner[name]} and the {split} list")
            owner[name] = split
    return out


__all__ = ["LABEL_JSON", "LABEL_PKL", "JSON_FORMAT", "JSON_VERSION", "SPLITS", "REQUIRED_SPLITS", "LabelFileError",
           "SplitFileError", "read_source", "load_labels", "read_split_list", "load_splits"]
