"""The peer libraries' bench rows on a tiny bench dataset: each installed peer's set holds exactly
the arrays our loader delivers, its epoch through a DataLoader yields every sample once at a
positive rate; TorchGeo's SEN12MS reads the bench's GeoTIFF tree in our band order; a peer that
does not import gets a "not installed" row. MosaicML streaming runs in an environment of its own
(numpy < 2.2): made here from requirements/mds-side.txt unless `make mds-env` made it."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio

from bench.cases import mds
from bench.cases.loaders import LoaderSettings, webdataset_spec
from bench.cases.peercases import PEER_ROWS, peer_rows, prepare_peers
from bench.cases.peers import (litdata_repeat, peer_version, torchgeo_bands, torchgeo_repeat, torchgeo_root,
                               write_litdata, write_mds)
from bench.inputs.dataset import DatasetParams, ensure_shards, prepare
from bench.measure.results import Results
from bench.report.rows import _row
from bench.report.rows import CODEC_NAMES
from sen12ms_common.errors import UnavailableError
from sen12ms_common.vocab.bands import resolve_bands
from sen12ms_common.vocab.patches import parse_patch

pytestmark = pytest.mark.slow  # writes peer sets (litdata's writer runs in a process of its own)

INSTALLED = {"litdata": importlib.util.find_spec("litdata") is not None,
             "torchgeo": importlib.util.find_spec("torchgeo") is not None}


@pytest.fixture(scope="module")
def mds_env(tmp_path_factory: pytest.TempPathFactory):
    """MDS's environment: `make mds-env`'s, else one made here (as `make bench` makes it)."""
    if (mds.env_dir() / "bin" / "python").is_file():
        yield mds.env_dir()
        return
    where = mds.make_env(tmp_path_factory.mktemp("mds") / "env")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(mds.ENV_VAR, str(where))
        yield where


@pytest.fixture(scope="module")
def tiny(real_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("peers")
    ds = prepare(root / "data", DatasetParams(scenes=1, patches_per_scene=6, subset=6), echo=lambda s: None,
                 progress=False)
    return ds, ensure_shards(ds, "none", 8_000_000, 1, echo=lambda s: None, progress=False)


def _digest(image: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(image, dtype=np.uint16).tobytes()).hexdigest()


def our_epoch(source: Path) -> list[str]:
    """Digests of the uint16 images our loader delivers over the train split."""
    from train.data import make_loader

    loader = make_loader("webdataset", webdataset_spec(str(source), LoaderSettings(batch_size=4), 0, 0))
    try:
        return sorted(_digest(img) for b in loader.epoch(0) for img in b["image"].numpy())
    finally:
        loader.close()


def peer_epoch(dataset) -> list[str]:
    import torch

    batches = torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=0)
    return sorted(_digest(img) for b in batches for img in b["image"].numpy())


@pytest.mark.parametrize("codec", ["zstd", "none"])
def test_a_litdata_set_holds_our_arrays_and_its_epoch_has_a_rate(tiny, tmp_path: Path, codec: str):
    ds, source = tiny
    out = ds.root / "peers" / f"litdata-{codec}"
    if not INSTALLED["litdata"]:
        with pytest.raises(UnavailableError, match="^not installed: .*pip install -e '.\\[bench\\]'"):
            write_litdata(source, out, codec, "s1s2", len(ds.keys))
        return
    import litdata

    root = write_litdata(source, out, codec, "s1s2", len(ds.keys))
    assert write_litdata(source, out, codec, "s1s2", len(ds.keys)) == root  # the stamp: reused, not written again
    assert peer_epoch(litdata.StreamingDataset(str(root), cache_dir=str(tmp_path / "cache"))) == our_epoch(source)
    rep = litdata_repeat(root, 4, 1, 0, tmp_path / "cache2")
    assert rep.items == len(ds.keys) - 4 and rep.rate > 0  # the first batch is the start-up, not timed


@pytest.mark.parametrize("codec", ["zstd", "none"])
def test_an_mds_set_holds_our_arrays_and_its_epoch_has_a_rate(tiny, mds_env, tmp_path: Path, codec: str):
    ds, source = tiny
    out = ds.root / "peers" / f"mds-{codec}"
    assert peer_version("mds") == "0.13.0"  # the pinned release, numpy < 2.2 beside our 2.4.6
    root = write_mds(source, out, codec, "s1s2", len(ds.keys))
    assert write_mds(source, out, codec, "s1s2", len(ds.keys)) == root  # the stamp: reused, not written again
    assert any(root.glob("*.zstd")) == (codec == "zstd")
    assert mds.run_side("digests", root, tmp_path / "cache")["digests"] == our_epoch(source)
    rep = mds.mds_repeat(root, 4, 1, 0, tmp_path / "cache2")
    assert rep.items == len(ds.keys) - 4 and rep.rate > 0


@pytest.mark.skipif(not INSTALLED["torchgeo"], reason="torchgeo is not installed (the .[bench] extra)")
def test_torchgeo_reads_the_bench_tree_in_our_band_order(tiny, tmp_path: Path):
    from torchgeo.datasets import SEN12MS

    ds, _ = tiny
    root = torchgeo_root(ds.tree, tmp_path / "tg", ds.keys)
    dataset = SEN12MS(root=str(root), split="train", bands=torchgeo_bands("s1s2"))
    assert len(dataset) == len(ds.keys)
    i = 3
    key = Path(dataset.ids[i]).stem
    pid = parse_patch(key)
    bands = resolve_bands("s1s2")
    with rasterio.open(ds.tree / pid.relpath("s2")) as f:
        s2 = f.read([b.index + 1 for b in bands if b.modality == "s2"])
    with rasterio.open(ds.tree / pid.relpath("s1")) as f:
        s1 = f.read()
    got = dataset[i]["image"].numpy()
    assert np.array_equal(got[:10], s2) and np.allclose(got[10:], s1, equal_nan=True)
    rep = torchgeo_repeat(root, "s1s2", 4, 1, seed=0)
    assert rep.items == len(ds.keys) - 4 and rep.rate > 0
    torchgeo_root(ds.tree, tmp_path / "tg", ds.keys)  # made again over itself: the links are replaced


def test_a_peer_that_does_not_import_says_not_installed(tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    ds, _ = tiny
    for module in ("litdata", "torchgeo.datasets"):
        monkeypatch.setitem(sys.modules, module, None)  # `import litdata` now raises ImportError
    monkeypatch.setenv(mds.ENV_VAR, str(tmp_path / "no-env"))
    with pytest.raises(UnavailableError, match="not installed: mosaicml-streaming .*make mds-env"):
        peer_version("mds")
    with pytest.raises(UnavailableError, match="not installed: litdata"):
        peer_version("litdata")
    res = Results(1)
    assert prepare_peers(ds, "s1s2", 8_000_000, 1, res, lambda s: None) == {}
    rows = peer_rows(res, ("zstd", "none"), "Peers", CODEC_NAMES, lambda *a, **k: _row(res, *a, **k))
    assert len(rows) == len(PEER_ROWS)
    assert all(not r.ok and r.status.startswith("not installed: ") for r in rows), [r.status for r in rows]
