"""Labels: the 17-class IGBP probability vector of every patch, and the original's label files."""

from __future__ import annotations

import io
import json
import os
import pickle
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import click
import numpy as np

from convert.shards.geotiff import read_patch
from convert.shards.scan import Problem, Triplet, scan_tree
from convert.workers import WorkerPool
from sen12ms_common.cpus import usable_cpus
from sen12ms_common.datafiles.read import JSON_FORMAT, JSON_VERSION, LABEL_JSON, LABEL_PKL
from sen12ms_common.errors import InputError, StorageError, report_errors
from sen12ms_common.progress import Counter, ProgressOptions, as_options, progress_options
from sen12ms_common.storage import files as storage
from sen12ms_common.storage.outputs import output_folder, writing
from sen12ms_common.vocab.igbp import (IGBP_NAMES, N_FULL, N_SIMPLE, SIMPLE_NAMES, one_hot, probability_from_igbp,
                                       single_label, to_simple)

# The original's pickles are protocol 3 (Python 3.0+), which its Python 3.7 code reads.
PICKLE_PROTOCOL = 3


# --------------------------------------------------------------------------- deriving labels

def expected_sibling(triplet: Triplet, modality: str) -> str:
    """Where the `modality` member of a triplet would be (for messages about a missing one)."""
    s2 = triplet.paths.get("s2", "")
    rel_s2, rel = triplet.id.relpath("s2"), triplet.id.relpath(modality)
    if s2.replace(os.sep, "/").endswith(rel_s2):
        return s2[: len(s2) - len(rel_s2)] + rel
    return rel


def _reason(exc: BaseException, path: str) -> str:
    """The one-line reason of an error, without the file name its message may start with."""
    text = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
    prefix = f"{path}: "
    return text[len(prefix):] if text.startswith(prefix) else text


def label_of(triplet: Triplet) -> tuple[str, np.ndarray | None, Problem | None, Problem | None]:
    """(S2 file name, probability vector or None, problem or None, warning or None) of one
    triplet; the warning notes no-data pixels (IGBP class 0) that the label leaves out."""
    name = triplet.id.filename("s2")
    lc = triplet.paths.get("lc")
    if lc is None:
        where = triplet.paths.get("s2", triplet.id.relpath("s2"))
        return name, None, Problem(where, f"s2 patch without its lc sibling {expected_sibling(triplet, 'lc')}",
                                   triplet.key), None
    try:
        patch = read_patch(lc, "lc")
        prob = probability_from_igbp(patch.data[0])
    except InputError as exc:
        return name, None, Problem(lc, _reason(exc, lc), triplet.key), None
    except Exception as exc:  # a batch job reports every bad input instead of dying on one
        return name, None, Problem(lc, f"cannot read: {exc.__class__.__name__}: {_reason(exc, lc)}", triplet.key), None
    zeros = int(np.count_nonzero(patch.data[0] == 0))
    note = None
    if zeros:
        note = Problem(lc, f"IGBP band holds {zeros} no-data pixels (class 0); the label is the share of the other "
                           f"{patch.data[0].size - zeros} pixels", triplet.key)
    return name, prob.astype(np.float64), None, note


def _ordered_map(fn: Callable[[Triplet], Any], items: Sequence[Triplet], workers: int,
                 progress: bool | ProgressOptions, desc: str) -> Iterable[Any]:
    """fn over items, in input order (so the result does not depend on `workers`), with progress."""
    # The workers fork before the progress bar starts its monitor thread.
    with WorkerPool(fn, min(workers, len(items))) as pool, \
            Counter(as_options(progress), desc, len(items), "patch") as bar:
        for result in pool.map(items):
            yield result
            bar.update(1)


def derive_labels(triplets: list[Triplet], workers: int = 1, progress: bool | ProgressOptions = True,
                  warnings: list[Problem] | None = None) -> tuple[dict[str, np.ndarray], list[Problem]]:
    """Probability labels of the triplets' lc patches, keyed by S2 file name, and the problems.

    A triplet without an lc patch, an unreadable lc file, IGBP values outside 0..17 or an lc
    patch without a single valid pixel gives a `Problem` (one line naming the file), never an
    exception. The result is the same for any number of worker processes. Patches labelled in
    spite of no-data pixels are appended to `warnings`, if given.
    """
    labels: dict[str, np.ndarray] = {}
    problems: list[Problem] = []
    for name, prob, problem, note in _ordered_map(label_of, list(triplets), workers, progress, "labels"):
        if problem is not None:
            problems.append(problem)
        else:
            labels[name] = prob
        if note is not None and warnings is not None:
            warnings.append(note)
    return dict(sorted(labels.items())), problems


# --------------------------------------------------------------------------- writing label files

class _CompatPickler(pickle.Pickler):
    """Pickles numpy arrays through the globals `numpy.ndarray` and `numpy.dtype` only.

    NumPy 2 pickles arrays through `numpy._core.multiarray._reconstruct`, which NumPy 1.x (the
    original toolbox's environment) cannot import. `ndarray(shape, dtype)` plus the array's own
    state loads under NumPy 1.x and 2.x alike, and through our restricted unpickler.
    """

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is np.ndarray:
            arr = np.ascontiguousarray(obj)
            return np.ndarray, (arr.shape, arr.dtype), arr.__reduce__()[2]
        return NotImplemented


def compat_pickle(obj: Any) -> bytes:
    """Deterministic pickle bytes of plain data with numpy arrays, readable by NumPy 1.x and 2.x."""
    buf = io.BytesIO()
    _CompatPickler(buf, protocol=PICKLE_PROTOCOL).dump(obj)
    return buf.getvalue()


def _json_text(names: list[str], matrix: np.ndarray) -> str:
    head = {
        "format": JSON_FORMAT,
        "version": JSON_VERSION,
        "description": "share of each patch's valid pixels in the IGBP classes 1..17 (lc band 1), "
                       "keyed by the S2 file name",
        "classes": list(IGBP_NAMES),
        "count": len(names),
    }
    lines = ["{"] + [f"  {json.dumps(k)}: {json.dumps(v)}," for k, v in head.items()]
    # One patch per line: diffable, and a 180k-patch file stays streamable line by line.
    entries = [f"    {json.dumps(n)}: {json.dumps([float(x) for x in row])}" for n, row in zip(names, matrix)]
    lines.append('  "labels": {' + ("\n" + ",\n".join(entries) + "\n  }" if entries else "}"))
    lines.append("}")
    return "\n".join(lines) + "\n"


def _text_lines(names: list[str], values: list[str]) -> str:
    return "".join(f"{n}:{v}\n" for n, v in zip(names, values))


def label_file_contents(labels: dict[str, np.ndarray]) -> dict[str, bytes]:
    """File name -> bytes of every label file, in a fixed order (see labels/README.md)."""
    names = sorted(labels)
    matrix = np.zeros((len(names), N_FULL), dtype=np.float64)
    for i, n in enumerate(names):
        vec = np.asarray(labels[n], dtype=np.float64).reshape(-1)
        if vec.size != N_FULL:
            raise InputError(f"label of {n!r} has {vec.size} values, a probability label has {N_FULL}")
        matrix[i] = vec
    files: dict[str, bytes] = {
        LABEL_JSON: _json_text(names, matrix).encode("utf-8"),
        LABEL_PKL: compat_pickle({n: matrix[i].copy() for i, n in enumerate(names)}),
    }
    for scheme, probs, n_classes in (("full", matrix, N_FULL), ("simple", to_simple(matrix), N_SIMPLE)):
        classes = single_label(probs) if len(names) else np.zeros(0, dtype=np.int64)
        hot = one_hot(classes, n_classes)
        stem = f"single_label_IGBP{scheme}"
        files[f"{stem}_ClsNum.txt"] = _text_lines(names, [str(int(c)) for c in classes]).encode()
        files[f"{stem}_ClsNum.pkl"] = compat_pickle({n: int(c) for n, c in zip(names, classes)})
        files[f"{stem}_OneHot.txt"] = _text_lines(names, [",".join(map(str, row)) for row in hot.tolist()]).encode()
        files[f"{stem}_OneHot.pkl"] = compat_pickle({n: hot[i].copy() for i, n in enumerate(names)})
    return files


def write_label_files(labels: dict[str, np.ndarray], out_dir: str | Path) -> list[str]:
    """Write our JSON and the original's label files into `out_dir` (a folder or an s3:// prefix);
    returns their paths. Each file appears complete or not at all; the bytes depend only on the
    labels. A folder that cannot be written raises a one-line StorageError."""
    with writing(str(out_dir)):
        return storage.write_files(str(out_dir), label_file_contents(labels))


# --------------------------------------------------------------------------- command line

def report_problems(problems: list[Problem], what: str) -> None:
    """List every bad input at the end, one line each, then fail with a one-line summary."""
    if not problems:
        return
    click.echo(f"\n{len(problems)} bad input(s):", err=True)
    for p in sorted(problems, key=lambda p: (p.path, p.reason)):
        click.echo(f"{p.path}: {p.reason}", err=True)
    raise click.ClickException(f"{len(problems)} input file(s) could not be used (listed above); {what}")


@click.command("labels")
@click.option("--data", required=True, metavar="DIR",
              help="Root of the SEN12MS tree (local folder or URL such as s3://bucket/sen12ms).")
@click.option("--out", required=True, metavar="DIR|URL",
              help="Folder or s3://bucket/prefix to write the label files into (created if missing).")
@click.option("--workers", default=usable_cpus, show_default="all usable CPU cores",
              type=click.IntRange(1, 1024), help="Processes reading lc patches in parallel.")
@progress_options(counted=True)
@report_errors
def labels_command(data: str, out: str, workers: int, progress: bool, progress_interval: float) -> None:
    """Derive the IGBP probability labels from the lc patches and write the original's label files.

    Writes IGBP_probability_labels.json (what this toolbox reads), IGBP_probability_labels.pkl
    and single_label_IGBP{full,simple}_{ClsNum,OneHot}.{txt,pkl}, keyed by the S2 file name.
    Every bad input is listed at the end; the files are still written for the good patches.
    """
    out = output_folder(out, "--out")
    scan = scan_tree(data)
    labels, problems = derive_labels(scan.triplets, workers=workers,
                                     progress=ProgressOptions(progress, progress_interval))
    problems = list(scan.problems) + problems
    if not labels and not problems:
        raise click.ClickException(f"{data}: no SEN12MS patches found")
    if labels:
        try:
            paths = write_label_files(labels, out)
        except StorageError as exc:
            raise click.ClickException(f"{exc}; no label file was written or replaced there") from None
        probs = np.stack([labels[n] for n in sorted(labels)])
        counts = np.bincount(single_label(to_simple(probs)), minlength=N_SIMPLE + 1)[1:]
        click.echo(f"labelled {len(labels)} patches of {len(scan.triplets)} triplets under {data}")
        click.echo("single labels, simplified scheme: "
                   + ", ".join(f"{SIMPLE_NAMES[i]} {c}" for i, c in enumerate(counts) if c))
        click.echo(f"wrote {len(paths)} files to {out}: " + ", ".join(storage.basename(p) for p in paths))
    report_problems(problems, f"labels were written for the {len(labels)} good patches" if labels
                    else "no label could be derived")
