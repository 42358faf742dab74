"""The wheel: built from the checkout, installed into a fresh venv outside it, `convert splits` and
`python -m train --help` run there (the official hold-out list comes from the package data)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from convert.sample.sen12ms import synthesize
from sen12ms_common.vocab.official import HOLDOUT_NAME, TEST_LIST_NAME

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("sen12ms_common", "convert", "train")


def _source_copy(dst: Path) -> Path:
    """What the wheel is built from, copied so that the build leaves nothing in the checkout."""
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, dst / name)
    for pkg in PACKAGES:
        shutil.copytree(REPO / pkg, dst / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dst


def _fresh_venv(root: Path) -> Path:
    """A venv that sees this interpreter's site-packages (the pinned dependencies) through a .pth
    line: a plain path, so the editable install of the checkout found there is not activated."""
    venv.EnvBuilder(with_pip=False).create(root)
    python = root / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(purelib) / "shared_dependencies.pth").write_text("".join(f"{p}\n" for p in sorted(deps)))
    return python


def _clean_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["HOME"] = str(home)
    return env


def test_a_wheel_installed_outside_the_checkout_runs_splits_and_train(tmp_path: Path) -> None:
    work = tmp_path / "outside"
    src, dist, home = (work / d for d in ("src", "dist", "home"))
    for d in (src, dist, home):
        d.mkdir(parents=True)
    _source_copy(src)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                            "--no-cache-dir", "-q", "-w", str(dist), str(src)],
                           capture_output=True, text=True, cwd=work, env=_clean_env(home))
    assert build.returncode == 0, build.stdout + build.stderr
    wheel = next(dist.glob("sen12ms_toolbox-*.whl"))

    python = _fresh_venv(work / "venv")
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                              "--no-cache-dir", "-q", str(wheel)],
                             capture_output=True, text=True, cwd=work, env=_clean_env(home))
    assert install.returncode == 0, install.stdout + install.stderr

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(python), *args], capture_output=True, text=True, cwd=home, env=_clean_env(home))

    where = run("-c", "import convert, sen12ms_common.vocab.official as o; print(convert.__file__); "
                      "print(o.OFFICIAL_HOLDOUT); print(o.OFFICIAL_TEST_LIST.stat().st_size)")
    assert where.returncode == 0, where.stderr
    module, holdout, test_list_bytes = where.stdout.split()
    site = str(work / "venv")
    assert module.startswith(site) and holdout.startswith(site), where.stdout  # the wheel's, not the checkout's
    assert Path(holdout).read_bytes() == (REPO / "sen12ms_common" / "data" / HOLDOUT_NAME).read_bytes()
    assert int(test_list_bytes) == (REPO / "sen12ms_common" / "data" / TEST_LIST_NAME).stat().st_size

    tree = work / "tree"
    synthesize(tree, scenes=4, patches_per_scene=2, seed=3, progress=False)
    (tree / HOLDOUT_NAME).unlink()  # so that `convert splits` falls back to the shipped official list
    splits = run("-m", "convert", "splits", "--data", str(tree), "--out", str(work / "splits"))
    assert splits.returncode == 0, splits.stdout + splits.stderr
    assert holdout in splits.stdout
    assert sorted(p.name for p in (work / "splits").iterdir()) == sorted(
        [f"{s}_list.{e}" for s in ("train", "val", "test") for e in ("txt", "pkl")] + ["excluded.txt"])

    helped = run("-m", "train", "--help")
    assert helped.returncode == 0 and "--shards" in helped.stdout, helped.stderr
