"""The loader registry: `--loader NAME` -> the factory that makes a `Loader` from a
`LoaderSpec`; each factory imports its loader when called (DALI is an optional extra)."""

from __future__ import annotations

from typing import Callable

from sen12ms_common.errors import DataError, UnavailableError

from .spec import Loader, LoaderSpec


def _shards(spec: LoaderSpec) -> Loader:
    # Here, not at the top: the loader imports torch, and this registry is read by --help.
    from .webdataset import make_loader as webdataset_loader

    return webdataset_loader(spec)


def _dali(spec: LoaderSpec) -> Loader:
    try:  # here, not at the top: DALI is an optional extra (and takes a second to import)
        from .dali import make_loader as dali_loader  # optional extra: DALI
    except ImportError as exc:
        raise UnavailableError(f"the dali loader is not available ({exc}); install it: "
                               "pip install '.[dali]' (nvidia-dali-cuda130 for torch 2.14.1+cu130)") from exc
    return dali_loader(spec)


# --loader NAME -> the factory that makes it.
LOADERS: dict[str, Callable[[LoaderSpec], Loader]] = {"shards": _shards, "dali": _dali}

# Old name -> its name now: `--loader webdataset` still works (it never used the webdataset
# library; the run configuration says so once, `train.config.trainconfig`).
RENAMED: dict[str, str] = {"webdataset": "shards"}


def canonical_loader(name: str) -> str:
    """The loader's name now (`webdataset` -> `shards`); any other name as given."""
    return RENAMED.get(name, name)


def loader_names() -> list[str]:
    return list(LOADERS)


def get_factory(name: str) -> Callable[[LoaderSpec], Loader]:
    name = canonical_loader(name)
    if name not in LOADERS:
        raise DataError(f"unknown loader {name!r} (choose one of: {', '.join(LOADERS)})")
    return LOADERS[name]


def make_loader(name: str, spec: LoaderSpec) -> Loader:
    return get_factory(name)(spec)
