"""The error types a caller relies on (sen12ms_common.errors): what real calls on bad input raise,
with the builtin bases that `except ValueError` / `except OSError` / `except
pickle.UnpicklingError` code keeps catching, and a small, closed set of public types."""

from __future__ import annotations

import ast
import builtins
import pickle
import shutil
import tarfile
from pathlib import Path

import pytest

from sen12ms_common import errors
from sen12ms_common.errors import (CheckpointError, DataError, InputError, Sen12msError, ShardError, StorageError,
                                   UnavailableError, UnsafePickleError)
from sen12ms_common.format.manifest import MANIFEST_NAME, load_manifest
from sen12ms_common.storage import files as storage
from sen12ms_common.vocab.bands import resolve_bands

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("sen12ms_common", "convert", "train", "bench")
MAX_PUBLIC = 14


def test_a_missing_band_is_an_input_error_and_a_value_error():
    with pytest.raises(InputError, match="unknown band 'B13'") as err:
        resolve_bands("B2,B13")
    assert isinstance(err.value, ValueError) and isinstance(err.value, Sen12msError)


def test_a_folder_without_manifest_is_an_input_error(tmp_path: Path):
    with pytest.raises(InputError, match=f"{tmp_path}/{MANIFEST_NAME}: no manifest"):
        load_manifest(str(tmp_path))


def test_a_refused_pickle_is_an_input_error_and_an_unpickling_error(tmp_path: Path):
    from sen12ms_common.datafiles import safepickle

    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps(shutil.rmtree))
    with pytest.raises(pickle.UnpicklingError, match=r"evil\.pkl: refused to load") as err:
        safepickle.load(evil)
    assert isinstance(err.value, InputError) and isinstance(err.value, UnsafePickleError)


def _shard_set_with_one_cut_shard(sample_shards: Path, tmp_path: Path, cut: str) -> tuple[Path, object]:
    """A copy of the sample shard set's manifest and its first train shard, the shard cut short:
    `between` two samples (at the header of the second sample's first member) or `inside` one."""
    manifest = load_manifest(str(sample_shards))
    entry = manifest.shards("train")[0]
    root = tmp_path / "shards"
    root.mkdir()
    shutil.copy(sample_shards / MANIFEST_NAME, root / MANIFEST_NAME)
    data = (sample_shards / entry.name).read_bytes()
    with tarfile.open(sample_shards / entry.name) as tar:
        members = tar.getmembers()
    first_key = members[0].name.split(".", 1)[0]
    second = next(m for m in members if m.name.split(".", 1)[0] != first_key)
    at = second.offset if cut == "between" else second.offset_data + 100
    (root / entry.name).write_bytes(data[:at])
    return root, entry


@pytest.mark.parametrize("cut", ["between", "inside"])
def test_a_cut_shard_is_a_shard_error(sample_shards: Path, tmp_path: Path, cut: str):
    from convert.shards.verify import verify_shard

    root, entry = _shard_set_with_one_cut_shard(sample_shards, tmp_path, cut)
    layout = load_manifest(str(root)).layout_of("train")
    want = "holds 1 samples, the manifest says" if cut == "between" else "damaged or truncated tar"
    with pytest.raises(ShardError, match=f"^{entry.name}: .*{want}") as err:
        verify_shard(str(root), entry, layout, {})
    assert isinstance(err.value, DataError) and isinstance(err.value, ValueError)
    # Read with the manifest's size (the loaders' verify), the cut shard is refused before a byte is read.
    with pytest.raises(ShardError, match=rf"file is {len((root / entry.name).read_bytes())} bytes, expected "
                                         rf"{entry.bytes} \(truncated"):
        storage.open_read(str(root / entry.name), expected_size=entry.bytes)


def test_a_missing_checkpoint_is_a_checkpoint_error(tmp_path: Path):
    from train.run.checkpoint import load_checkpoint

    with pytest.raises(CheckpointError, match="no such checkpoint file") as err:
        load_checkpoint(str(tmp_path / "none.pt"))
    assert isinstance(err.value, InputError) and isinstance(err.value, ValueError)


def test_an_unwritable_output_is_a_storage_error_and_an_os_error(tmp_path: Path):
    from sen12ms_common.storage.outputs import writing

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(StorageError, match=f"^{blocker}/out.json: cannot write") as err:
        with writing(str(blocker / "out.json")):
            storage.write_bytes(str(blocker / "out.json"), b"{}")
    assert isinstance(err.value, OSError)


def test_a_device_that_is_not_here_is_unavailable():
    import torch

    from train.run.device import resolve_device

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is here")
    with pytest.raises(UnavailableError, match="--device cuda: no CUDA device") as err:
        resolve_device("cuda")
    assert isinstance(err.value, RuntimeError)


def _exception_classes() -> dict[str, list[str]]:
    """Every class of the four packages that derives from an exception: name -> the modules that
    define it (bases resolved by name across the packages, builtin and stdlib ones by their name)."""
    known = {n for n in dir(builtins) if isinstance(getattr(builtins, n), type)
             and issubclass(getattr(builtins, n), BaseException)}
    classes: list[tuple[str, str, list[str]]] = []
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ClassDef):
                    bases = [b.attr if isinstance(b, ast.Attribute) else getattr(b, "id", "") for b in node.bases]
                    classes.append((node.name, str(path.relative_to(REPO)), bases))
    found: dict[str, list[str]] = {}
    changed = True
    while changed:
        changed = False
        for name, where, bases in classes:
            if any(b in known or b.endswith(("Error", "Exception")) for b in bases) and where not in found.get(name, []):
                found.setdefault(name, []).append(where)
                known.add(name)
                changed = True
    return found


def test_a_dozen_public_error_types_all_in_one_module():
    public = {name: where for name, where in _exception_classes().items() if not name.startswith("_")}
    assert len(public) <= MAX_PUBLIC, f"{len(public)} public exception classes: {sorted(public)}"
    elsewhere = {name: where for name, where in public.items() if where != ["sen12ms_common/errors.py"]}
    assert not elsewhere, f"public exception classes outside sen12ms_common/errors.py: {elsewhere}"
    # ... and each of them is importable from there, with the builtin bases documented in docs/api.md.
    assert all(isinstance(getattr(errors, name), type) for name in public)
    assert issubclass(errors.StorageNotFoundError, FileNotFoundError)
    assert issubclass(errors.StorageAccessError, PermissionError)
    assert issubclass(errors.StorageUnavailableError, StorageError)
    assert not issubclass(errors.Interrupted, Sen12msError)
