"""Find the triplets of a SEN12MS tree (local folder or URL) and everything that is not one;
on request also those of the DFC2020 contest layout (`ROIs0000_validation`, `ROIs0000_test`)."""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field

from sen12ms_common.errors import InputError
from sen12ms_common.storage import files as storage
from sen12ms_common.vocab.patches import DFC2020_SEASONS, PatchId, parse_any_patch, parse_patch


@dataclass(frozen=True)
class Problem:
    """A file of the tree that cannot be used, and why."""

    path: str
    reason: str
    id: str = ""  # the S2 key of the triplet it concerns, where there is one


@dataclass(frozen=True)
class Triplet:
    """An S2 patch with the siblings that exist beside it (modality -> path or URL)."""

    id: PatchId
    paths: dict[str, str] = field(hash=False, compare=False)

    @property
    def key(self) -> str:
        return self.id.key


@dataclass
class ScanResult:
    triplets: list[Triplet]
    problems: list[Problem]

    def missing(self, triplet: Triplet, modalities: tuple[str, ...]) -> list[str]:
        return [m for m in modalities if m not in triplet.paths]


def _list_files(root: str, errors: list[OSError] | None = None) -> list[str]:
    """All files below root, as paths relative to it (with '/'), sorted; folders that cannot be
    listed go to `errors` (os.walk would skip them silently)."""
    if storage.is_remote(root):
        return storage.find(root)  # retries, and one-line errors naming the URL
    out = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=None if errors is None else errors.append):
        dirnames.sort()
        rel = os.path.relpath(dirpath, root)
        for name in filenames:
            out.append(name if rel == "." else f"{rel}/{name}".replace(os.sep, "/"))
    return sorted(out)


def _parse_name(name: str, dfc2020: bool) -> PatchId:
    return parse_any_patch(name) if dfc2020 else parse_patch(name)


def holds_dfc2020(files: list[str]) -> bool:
    """Whether a tree's files (relative paths) lie in a DFC2020 subset folder: the layout is
    recognised by its folder names."""
    return any(rel.split("/", 1)[0] in DFC2020_SEASONS for rel in files if "/" in rel)


def scan_tree(root: str, dfc2020: bool | None = False) -> ScanResult:
    """Group the patches under `root` into triplets keyed by their S2 patch.

    Files at the root level (hold-out lists, READMEs) are ignored; every other file must be a
    SEN12MS patch in its own folder (`<season>/<mod>_<scene>/`), else it is reported. With
    `dfc2020`, DFC2020 patches are grouped too (members s1, s2, lc, dfc, in
    `ROIs0000_validation/<mod>_validation/` and `ROIs0000_test/<mod>_0/`); `dfc2020=None`: when
    the tree has such folders.
    """
    if not storage.is_remote(root) and not os.path.isdir(root):
        raise storage.StorageNotFoundError(f"{root}: no such folder", root)
    found: dict[PatchId, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    problems: list[Problem] = []
    unlisted: list[OSError] = []
    files = _list_files(root, unlisted)
    if dfc2020 is None:
        dfc2020 = holds_dfc2020(files)
    for exc in unlisted:
        problems.append(Problem(str(exc.filename or root), f"cannot read this folder ({exc.strerror or exc}): "
                                                             "the patches in it are not converted"))
    for rel in files:
        parts = rel.split("/")
        if len(parts) == 1:
            continue
        path = storage.join(root, rel)
        try:
            pid = _parse_name(parts[-1], dfc2020)
        except InputError as exc:
            problems.append(Problem(path, str(exc)))
            continue
        expected = pid.relpath()
        if "/".join(parts[:-1]) != expected.rsplit("/", 1)[0]:
            problems.append(Problem(path, f"file is in the wrong folder (expected {expected})", pid.key))
            continue
        found[pid.with_modality("s2")][pid.modality].append(path)

    triplets = []
    for s2id in sorted(found):
        members = found[s2id]
        dups = {m: ps for m, ps in members.items() if len(ps) > 1}
        if dups:
            for m, ps in dups.items():
                for p in ps:
                    others = ", ".join(o for o in ps if o != p)
                    problems.append(Problem(p, f"duplicate patch id {s2id.stem(m)} (also at {others})", s2id.key))
            continue
        if "s2" not in members:
            for m, ps in members.items():
                problems.append(Problem(ps[0], f"{m} patch without its s2 sibling {s2id.relpath('s2')}", s2id.key))
            continue
        triplets.append(Triplet(s2id, {m: ps[0] for m, ps in members.items()}))
    return ScanResult(triplets, problems)
