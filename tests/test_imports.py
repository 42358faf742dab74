"""The import graph, read from the source with `ast`: no circle between modules, `convert` and
`train` never import each other, `sen12ms_common` imports no torch when it is imported, and an
import inside a function says why it is there (a comment on its line or the line above)."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("sen12ms_common", "convert", "train", "bench")


@dataclass(frozen=True)
class Import:
    source: str      # the importing module
    target: str      # the imported name, absolute ("train.data", "torch.nn", ...)
    line: int
    top: bool        # executed when the module is imported (not inside a function)
    typing: bool     # under `if TYPE_CHECKING:`: never executed


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the four packages."""
    found = {}
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _absolute(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    base = base[: len(base) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def _typing_block(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (getattr(test, "id", None) == "TYPE_CHECKING"
                                         or getattr(test, "attr", None) == "TYPE_CHECKING")


def imports_of(module: str, path: Path) -> list[Import]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    found: list[Import] = []

    def visit(node: ast.AST, top: bool, typing: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend(Import(module, a.name, child.lineno, top, typing) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = _absolute(module, is_package, child)
                found.extend(Import(module, f"{base}.{a.name}", child.lineno, top, typing) for a in child.names)
            else:
                inner = top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                visit(child, inner, typing or _typing_block(child))

    visit(tree, True, False)
    return found


def _internal(target: str, modules: dict[str, Path]) -> str | None:
    """The module of ours that `target` names: the longest dotted prefix that is one."""
    parts = target.split(".")
    for n in range(len(parts), 0, -1):
        name = ".".join(parts[:n])
        if name in modules:
            return name
    return None


@pytest.fixture(scope="module")
def graph() -> tuple[dict[str, Path], list[Import]]:
    modules = module_files()
    return modules, [imp for m, p in modules.items() for imp in imports_of(m, p)]


def test_no_import_circle(graph):
    modules, imports = graph
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for imp in imports:
        target = _internal(imp.target, modules)
        if target is not None and target != imp.source and not imp.typing:
            edges[imp.source].add(target)
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    circles = []

    def walk(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(edges[m]):
            if state.get(t) == 1:
                circles.append(" -> ".join(path[path.index(t):] + [m, t]) if t in path else f"{m} -> {t}")
            elif t not in state:
                walk(t, path + [m])
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            walk(m, [])
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_convert_and_train_never_import_each_other(graph):
    _, imports = graph
    crossing = [f"{i.source}:{i.line} imports {i.target}" for i in imports
                if {i.source.split(".")[0], i.target.split(".")[0]} == {"convert", "train"}]
    assert not crossing, "\n".join(crossing)


def test_common_imports_no_torch_when_imported(graph):
    _, imports = graph
    heavy = [f"{i.source}:{i.line} imports {i.target}" for i in imports
             if i.source.split(".")[0] == "sen12ms_common" and i.top and not i.typing
             and i.target.split(".")[0] in ("torch", "torchvision", "convert", "train")]
    assert not heavy, "\n".join(heavy)


def _says_why(line: str) -> bool:
    """A comment on `line` that is more than a linter's marker."""
    comment = line.partition("#")[2]
    return bool(re.sub(r"noqa(: *[A-Z0-9, ]+)?|type: *ignore(\[[^]]*\])?", "", comment).strip(" ()"))


def test_an_import_inside_a_function_says_why(graph):
    modules, imports = graph
    lines = {m: p.read_text(encoding="utf-8").splitlines() for m, p in modules.items()}
    silent = []
    for i in imports:
        if i.top or i.typing:
            continue
        text = lines[i.source]
        here, above = text[i.line - 1], text[i.line - 2] if i.line > 1 else ""
        if not _says_why(here) and not (above.strip().startswith("#") and _says_why(above)):
            silent.append(f"{modules[i.source].relative_to(REPO)}:{i.line}: {here.strip()}")
    assert not silent, "imports inside a function without a comment saying why:\n" + "\n".join(sorted(set(silent)))
