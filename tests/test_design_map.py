"""docs/DESIGN.md's module map against the tree: every module of the four packages is in the
map, every module the map (or a note's heading) names exists, so the map cannot drift."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DESIGN = REPO / "docs" / "DESIGN.md"
PACKAGES = ("sen12ms_common", "convert", "train", "bench")
NAME = re.compile(r"`([A-Za-z0-9_/.]+\.py)`")


def section(title: str) -> str:
    text = DESIGN.read_text(encoding="utf-8")
    start = text.index(f"\n## {title}")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else len(text)]


def tree_modules() -> set[str]:
    return {str(p.relative_to(REPO)) for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}


def mapped() -> set[str]:
    """The paths in the first column of the module tables."""
    names = set()
    for line in section("The modules").splitlines():
        if line.startswith("| `"):
            names.update(NAME.findall(line.split("|")[1]))
    return names


def test_every_module_is_in_the_map():
    missing = sorted(tree_modules() - mapped())
    assert not missing, "modules missing from docs/DESIGN.md's map: " + ", ".join(missing)


def test_the_map_names_only_modules_that_exist():
    gone = sorted(mapped() - tree_modules())
    assert not gone, "docs/DESIGN.md's map names modules that are not in the tree: " + ", ".join(gone)


def test_notes_name_modules_that_exist():
    headings = re.findall(r"^### `([^`]+\.py)`", section("How the parts work"), flags=re.M)
    assert headings, "no notes found"
    gone = sorted(set(headings) - tree_modules())
    assert not gone, "docs/DESIGN.md has notes on modules that are not in the tree: " + ", ".join(gone)
