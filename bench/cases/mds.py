"""MosaicML streaming's bench rows from the bench's side. Every release of mosaicml-streaming
caps numpy below 2.2 and the stack pins numpy 2.4.6, so MDS lives in an environment of its own:
a venv holding only it, its numpy and the dependencies the stack lacks
(requirements/mds-side.txt), which sees .venv's packages (torch included) behind its own. The
bench runs `bench.cases.mds_side` there for each set it writes and each epoch it times.

    python -m bench.cases.mds      # make (or remake) the environment: `make mds-env`
"""

from __future__ import annotations

import functools
import json
import os
import site
import subprocess
import sys
import venv
from pathlib import Path
from typing import Any

from bench.measure.timing import Repeat
from sen12ms_common.errors import UnavailableError

REPO = Path(__file__).resolve().parents[2]
REQUIREMENTS = REPO / "requirements" / "mds-side.txt"
ENV_VAR = "BENCH_MDS_ENV"  # another place for the environment (the tests point it elsewhere)


def env_dir() -> Path:
    return Path(os.environ.get(ENV_VAR) or REPO / ".venv" / "mds")


def side_python() -> Path:
    """The environment's Python; UnavailableError (the row's text) without one."""
    python = env_dir() / "bin" / "python"
    if not python.is_file():
        raise UnavailableError(f"not installed: mosaicml-streaming (it needs numpy < 2.2, so it runs in an "
                               f"environment of its own, {env_dir()}: make mds-env)")
    return python


def run_side(*args: Any, timeout: float = 3600) -> dict[str, Any]:
    """One `bench.cases.mds_side` command in the environment (with this process's CPU affinity)."""
    proc = subprocess.run([str(side_python()), "-m", "bench.cases.mds_side", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        err = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        raise RuntimeError(f"MDS environment {env_dir()}: {args[0]}: {err}")
    return json.loads(lines[-1])


def mds_version() -> str:
    """MDS's version, once it imported in the environment (checked once per environment: an
    import takes about 7 s, most of it transformers)."""
    return _checked_version(str(side_python()))


@functools.lru_cache(maxsize=None)
def _checked_version(python: str) -> str:
    try:
        return str(run_side("version", timeout=300)["version"])
    except RuntimeError as exc:
        raise UnavailableError(f"not installed: mosaicml-streaming ({exc}); make mds-env") from None


def mds_repeat(root: Path, batch_size: int, workers: int, seed: int, cache: Path) -> Repeat:
    """One shuffled epoch of MDS's StreamingDataset over its set through a DataLoader (timed in
    the environment's process; its start-up, importing torch, is not part of it)."""
    got = run_side("repeat", root, batch_size, workers, seed, cache)
    return Repeat(got["items"], got["seconds"], got["startup_s"])


def make_env(where: Path | None = None) -> Path:
    """The environment at `where` (default: `env_dir()`), made afresh."""
    where = where or env_dir()
    venv.EnvBuilder(clear=True, with_pip=True).create(where)
    python = where / "bin" / "python"
    side_site = subprocess.run([str(python), "-c", "import site; print(site.getsitepackages()[0])"],
                               capture_output=True, text=True, check=True).stdout.strip()
    # .venv's packages after the environment's own (a .pth's addsitedir appends), .pth files included
    # (the editable install of this repository).
    (Path(side_site) / "zz-stack.pth").write_text(f"import site; site.addsitedir({site.getsitepackages()[0]!r})\n")
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
                    "-r", str(REQUIREMENTS)], check=True)
    return where


if __name__ == "__main__":
    print(f"MDS environment: {make_env()} ({run_side('version')})")
    sys.exit(0)
