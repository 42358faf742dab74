"""The DALI loader (CPU-only pipeline, `device_id=None`) against the webdataset loader on shards
that `python -m convert shards` wrote from the sample tree: same samples, labels and values in
the same order, rank splitting, symmetries, resume, damaged members, the GPU graph's definition
and the training CLI end to end."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("nvidia.dali", reason="the dali extra is not installed")

from sen12ms_common.errors import DataError, ShardError  # noqa: E402
from sen12ms_common.format.manifest import index_name, load_manifest  # noqa: E402
from sen12ms_common.format.sample import LABEL_EXT  # noqa: E402
from sen12ms_common.vocab.bands import resolve_bands  # noqa: E402
from sen12ms_common.vocab.igbp import LabelRule  # noqa: E402
from sen12ms_common.vocab.inputs import channel_transform  # noqa: E402
from train.data import LoaderSpec, make_loader  # noqa: E402
from train.data.dali import DaliLoader, channel_plan, define_pipeline, keys_of, shard_range  # noqa: E402
from train.run.device import InputTransform  # noqa: E402

pytestmark = pytest.mark.slow  # converts shard sets and compiles DALI pipelines

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


def convert(tree: Path, out: Path, codec: str) -> Path:
    subprocess.run([sys.executable, "-m", "convert", "shards", "--data", str(tree), "--out", str(out),
                    "--codec", codec, "--shard-size", "5MB", "--workers", "2", "--no-progress"],
                   check=True, cwd=REPO, capture_output=True)
    return out


@pytest.fixture(scope="module")
def shard_sets(sample_shards: Path, sample_tree: Path, tmp_path_factory) -> dict[str, Path]:
    """codec -> shards of the sample tree (zstd: the session's `sample_shards`)."""
    base = tmp_path_factory.mktemp("dali")
    return {"zstd": sample_shards, "lz4": convert(sample_tree, base / "lz4", "lz4"),
            "none": convert(sample_tree, base / "none", "none")}


def make_spec(root: Path, split: str, *, input_spec: str = "s1s2", label_type: str = "multi_label",
              igbp: str = "simple", stats: str = "official", batch_size: int = 5, **kw) -> LoaderSpec:
    manifest = load_manifest(str(root))
    bands = resolve_bands(input_spec)
    return LoaderSpec(str(root), manifest, split, bands, LabelRule(label_type, igbp), batch_size,
                      channel_transform(bands, stats, manifest.stats), **kw)


def dali(spec: LoaderSpec, **kw) -> DaliLoader:
    kw.setdefault("num_threads", 1)
    kw.setdefault("device_id", None)
    return DaliLoader(spec, **kw)


def keys(loader, epoch: int = 0, start_batch: int = 0) -> list[str]:
    return [k for b in loader.epoch(epoch, start_batch) for k in b["key"]]


def assert_same_batches(spec: LoaderSpec, got: list[dict], want: list[dict], *, exact_image: bool) -> None:
    """DALI batches vs webdataset batches (uint16, normalised as the training loop does)."""
    to_input = InputTransform(spec.transform, CPU)
    assert [b["key"] for b in got] == [b["key"] for b in want]
    for g, w in zip(got, want):
        assert torch.equal(g["prob"], w["prob"]) and g["prob"].dtype == torch.float32
        assert g["target"].dtype == w["target"].dtype and torch.equal(g["target"], w["target"])
        if exact_image:
            assert g["image"].dtype == torch.uint16 and torch.equal(g["image"], w["image"])
        else:
            assert g["image"].dtype == torch.float32
            assert torch.allclose(g["image"], to_input(w["image"]), rtol=1e-6, atol=1e-5)


# --- same samples, labels and values as the webdataset loader -----------------------------------

@pytest.mark.parametrize("codec", ["zstd", "lz4", "none"])
@pytest.mark.parametrize("input_spec,label_type,igbp,stats", [
    ("s1s2", "multi_label", "simple", "manifest"),
    ("rgb", "single_label", "full", "none"),  # `none` clips S2 at 10000: the clip path
])
def test_same_batches_as_the_webdataset_loader(shard_sets, codec, input_spec, label_type, igbp, stats):
    root = shard_sets[codec]
    for split in ("test", "val"):
        spec = make_spec(root, split, input_spec=input_spec, label_type=label_type, igbp=igbp, stats=stats)
        # One read stream: the DALI reader reads a rank's range as one stream.
        wds = make_loader("webdataset", dataclasses.replace(spec, streams=1))
        loader = dali(spec)
        want, got = list(wds.epoch(0)), list(loader.epoch(0))
        assert len(loader) == len(wds) == len(got)
        assert loader.samples == wds.samples == load_manifest(str(root)).samples(split)
        assert got[0]["image"].shape == (5, len(spec.bands), 256, 256)
        assert_same_batches(spec, got, want, exact_image=False)


def test_uint16_batches_equal_the_webdataset_loaders(shard_sets):
    spec = make_spec(shard_sets["zstd"], "test", input_spec="B8,VV,B4")
    want = list(make_loader("webdataset", dataclasses.replace(spec, streams=1)).epoch(0))
    assert_same_batches(spec, list(dali(spec, normalise=False).epoch(0)), want, exact_image=True)


def test_same_sample_set_with_the_default_streams(shard_sets):
    spec = make_spec(shard_sets["lz4"], "test", input_spec="rgb")
    assert sorted(keys(dali(spec))) == sorted(keys(make_loader("webdataset", spec)))


@pytest.mark.parametrize("codec,input_spec,stats", [
    ("zstd", "s1s2", "official"),
    ("none", "B8,VV,B4", "none"),  # slices of two runs, cat across modalities, clip
    ("lz4", "rgb", "manifest"),
])
def test_gpu_graph_operators_on_the_cpu_give_the_same_values(shard_sets, codec, input_spec, stats):
    """`cpu_kernels=False`: the GPU graph's slices, cat, cast, min, multiply and add on the CPU."""
    spec = make_spec(shard_sets[codec], "test", input_spec=input_spec, stats=stats)
    want = list(make_loader("webdataset", dataclasses.replace(spec, streams=1)).epoch(0))
    assert_same_batches(spec, list(dali(spec, cpu_kernels=False).epoch(0)), want, exact_image=False)


# --- ranks, epochs, resume ------------------------------------------------------------------

def test_evaluation_ranks_are_disjoint_and_cover_the_split_once(shard_sets):
    root = shard_sets["none"]
    everything = keys(make_loader("webdataset", make_spec(root, "test", streams=1)))
    parts = []
    for rank in range(2):
        spec = make_spec(root, "test", rank=rank, world_size=2, input_spec="rgb")
        loader = dali(spec)
        got = keys(loader)
        begin, end = shard_range(len(everything), rank, 2)
        assert got == everything[begin:end] and loader.samples == len(got)
        assert len(loader) == len(list(loader.epoch(0)))
        parts.append(got)
    assert not set(parts[0]) & set(parts[1])
    assert sorted(parts[0] + parts[1]) == sorted(everything)


@pytest.mark.parametrize("world_size,batch_size", [(2, 4), (3, 4)])
def test_training_ranks_run_the_same_batches_on_disjoint_samples(shard_sets, world_size, batch_size):
    root = shard_sets["zstd"]
    total = load_manifest(str(root)).samples("train")
    for epoch in range(2):
        seen: list[set[str]] = []
        for rank in range(world_size):
            spec = make_spec(root, "train", train=True, rank=rank, world_size=world_size, batch_size=batch_size,
                             input_spec="rgb", shuffle_buffer=6, seed=3)
            loader = dali(spec)
            sizes = [len(b["key"]) for b in loader.epoch(epoch)]
            per_rank = total // world_size
            assert loader.samples == per_rank and len(loader) == len(sizes) == -(-per_rank // batch_size)
            assert sizes == [batch_size] * (len(sizes) - 1) + [per_rank - batch_size * (len(sizes) - 1)]
            got = keys(loader, epoch)
            assert len(set(got)) == len(got) == per_rank
            seen.append(set(got))
        for a in range(world_size):
            for b in range(a + 1, world_size):
                assert not seen[a] & seen[b]


def test_training_order_is_a_function_of_seed_and_epoch_and_resumes_mid_epoch(shard_sets):
    spec = make_spec(shard_sets["lz4"], "train", train=True, batch_size=4, input_spec="rgb", shuffle_buffer=8, seed=5)
    a, b = dali(spec), dali(spec)
    e0, e1 = keys(a, 0), keys(a, 1)
    assert sorted(e0) == sorted(e1) and e0 != e1
    assert keys(b, 1) == e1
    full = list(a.epoch(1))
    resumed = list(b.epoch(1, start_batch=3))
    assert [x["key"] for x in resumed] == [x["key"] for x in full[3:]]
    assert all(torch.equal(x["image"], y["image"]) for x, y in zip(resumed, full[3:]))
    other_seed = dali(dataclasses.replace(spec, seed=6))
    assert keys(other_seed, 1) != e1


def test_random_symmetries_only_move_pixels(shard_sets):
    spec = make_spec(shard_sets["zstd"], "train", train=True, batch_size=8, input_spec="rgb", seed=1)
    plain = {k: b["image"][i] for b in dali(spec, augment=False).epoch(0) for i, k in enumerate(b["key"])}
    moved = {k: b["image"][i] for b in dali(spec, augment=True).epoch(0) for i, k in enumerate(b["key"])}
    assert set(plain) == set(moved)
    used = set()
    for k, x in plain.items():
        y = moved[k]
        # The multiset of pixel values of every channel is kept ...
        assert torch.equal(torch.sort(x.flatten(1), dim=1).values, torch.sort(y.flatten(1), dim=1).values)
        # ... because each sample is one of the 8 symmetries of the square.
        match = [(t, h, v) for t in (0, 1) for h in (0, 1) for v in (0, 1)
                 if torch.equal(y, _symmetry(x, t, h, v))]
        assert match, k
        used.add(match[0])
    assert len(used) >= 3  # random, not one fixed transform
    # Evaluation never augments.
    evaluation = make_spec(shard_sets["zstd"], "test", input_spec="rgb")
    assert not dali(evaluation, augment=True).augment


def _symmetry(x: torch.Tensor, transpose: int, horizontal: int, vertical: int) -> torch.Tensor:
    y = x.transpose(1, 2) if transpose else x
    y = y.flip(2) if horizontal else y
    return y.flip(1) if vertical else y


# --- bad input --------------------------------------------------------------------------------

def _member(root: Path, shard: str, ext: str, sample: int = 1) -> tuple[str, int, int]:
    """(key, offset, size) of member `ext` of the sample-th sample, from the DALI index."""
    lines = (root / index_name(shard)).read_text().splitlines()[1:]
    fields = lines[sample].split()
    for i in range(0, len(fields), 4):
        if fields[i] == ext:
            return fields[i + 3].split(".", 1)[0], int(fields[i + 1]), int(fields[i + 2])
    raise AssertionError(f"{ext} not in {shard}")


@pytest.mark.parametrize("codec,ext,damage", [
    ("zstd", "s2.zst", "flip"),         # zstd frame checksum / decompression error
    ("zstd", "s1.zstsizes", "flip"),    # zstd chunk sizes that do not add up to the member
    ("lz4", "s1.lz4sizes", "flip"),     # chunk sizes that do not add up to the member
    ("none", "s2.raw", "short-index"),  # the index gives the raw member too few bytes
])
def test_damaged_member_is_named_and_skipped_only_when_asked(shard_sets, tmp_path, codec, ext, damage):
    """Without shard checksums (--no-verify) each sample's own damage is found: the frame's
    checksum, chunk sizes, the member's length."""
    root = tmp_path / codec
    shutil.copytree(shard_sets[codec], root)
    manifest = load_manifest(str(root))
    shard = manifest.shards("test")[0].name
    key, offset, size = _member(root, shard, ext)
    if damage == "flip":
        data = bytearray((root / shard).read_bytes())
        data[offset + size // 2] ^= 0xFF
        (root / shard).write_bytes(bytes(data))  # same size: passes the size check up front
    else:
        idx = root / index_name(shard)
        idx.write_text(idx.read_text().replace(f"{ext} {offset} {size} ", f"{ext} {offset} {size - 512} ", 1))
    spec = make_spec(root, "test", input_spec="s1s2", verify=False)
    with pytest.raises(ShardError) as err:
        list(dali(spec).epoch(0))
    assert f"sample {key}" in str(err.value) and str(root) in str(err.value) and "\n" not in str(err.value)
    loader = dali(dataclasses.replace(spec, skip_bad_shards=True))
    got = keys(loader)
    assert key not in got and len(got) == manifest.samples("test") - 1
    assert len(loader.skipped) == 1 and key in loader.skipped[0]


@pytest.mark.parametrize("codec", ["zstd", "lz4", "none"])
def test_a_shard_that_does_not_match_is_never_used_and_skipped_whole_only_when_asked(shard_sets, tmp_path, codec):
    """Verifying (the default), no batch holds a sample of a shard whose xxh3-128 differs from
    the manifest's, whichever byte changed (here one in the middle of a member the input does
    not even use, which no frame checksum or size would notice)."""
    root = tmp_path / codec
    shutil.copytree(shard_sets[codec], root)
    manifest = load_manifest(str(root))
    entries = manifest.shards("train")
    entry = entries[len(entries) // 2]
    _, offset, size = _member(root, entry.name, LABEL_EXT)
    data = bytearray((root / entry.name).read_bytes())
    data[offset + size + 100] ^= 0x01  # tar padding after the label: no decoder reads it
    (root / entry.name).write_bytes(bytes(data))
    spec = make_spec(root, "train", input_spec="rgb", train=True, seed=3)
    with pytest.raises(ShardError, match="content does not match the manifest") as err:
        list(dali(spec).epoch(0))
    assert entry.name in str(err.value) and "\n" not in str(err.value)
    loader = dali(dataclasses.replace(spec, skip_bad_shards=True))
    got = keys(loader)
    with tarfile.open(root / entry.name) as tar:
        bad_keys = {m.name.split(".", 1)[0] for m in tar.getmembers()}
    assert got and not bad_keys & set(got)
    assert len(loader.skipped) == 1 and entry.name in loader.skipped[0]
    assert keys(dali(dataclasses.replace(spec, verify=False))), "without verification the bytes are not checked"


def test_missing_index_file_is_named_and_skipped_only_when_asked(shard_sets, tmp_path):
    root = tmp_path / "shards"
    shutil.copytree(shard_sets["none"], root)
    entry = load_manifest(str(root)).shards("test")[1]
    (root / index_name(entry.name)).unlink()
    spec = make_spec(root, "test")
    with pytest.raises(ShardError, match=index_name(entry.name)):
        dali(spec)
    loader = dali(dataclasses.replace(spec, skip_bad_shards=True))
    assert loader.samples == load_manifest(str(root)).samples("test") - entry.samples
    assert len(keys(loader)) == loader.samples and index_name(entry.name) in loader.skipped[0]


def test_index_that_disagrees_with_the_manifest_is_refused(shard_sets, tmp_path):
    root = tmp_path / "shards"
    shutil.copytree(shard_sets["none"], root)
    idx = root / index_name(load_manifest(str(root)).shards("test")[0].name)
    header, *lines = idx.read_text().splitlines()
    idx.write_text("\n".join([f"v1.2 {len(lines) - 1}"] + lines[:-1]) + "\n")  # one sample dropped
    with pytest.raises(ShardError, match="index files list .* samples, the manifest"):
        list(dali(make_spec(root, "test")).epoch(0))


def test_without_dali_the_loader_says_how_to_install_it(shard_sets, tmp_path):
    code = ("import sys; sys.modules['nvidia.dali'] = None\n"  # as if the extra were not installed
            "from train.__main__ import main\n"
            "main(prog_name='python -m train')")
    r = subprocess.run([sys.executable, "-c", code, "--shards", str(shard_sets["zstd"]), "--model", "SmallCNN",
                        "--loader", "dali", "--max-steps", "1", "--run-dir", str(tmp_path / "run")],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr
    assert "dali loader is not available" in lines[0] and "pip install '.[dali]'" in lines[0]
    assert "nvidia-dali-cuda130" in lines[0]


# --- the GPU graph, end to end, helpers -----------------------------------------------------------

@pytest.mark.parametrize("codec", ["lz4", "zstd", "none"])
@pytest.mark.parametrize("augment", [False, True])
def test_gpu_graph_decodes_and_normalises_on_the_gpu(shard_sets, codec, augment):
    """The graph of a GPU pipeline (`device_id=0`), defined and argument-checked without a GPU:
    lz4 is inflated on the GPU, zstd is decompressed on the CPU, float32 only on the GPU."""
    from nvidia.dali.pipeline import _collect_ops

    spec = make_spec(shard_sets[codec], "train", train=augment)
    loader = DaliLoader(spec, device_id=0, augment=augment, num_threads=1)
    gspec = loader.graph_spec(0)
    assert gspec.gpu and not gspec.fused
    pipe, names = define_pipeline(gspec, batch_size=4, num_threads=1, device_id=0, seed=1)
    outputs = dict(zip(names, pipe._graph_out))
    assert outputs["image"].device == "gpu" and outputs["prob"].device == "cpu" and outputs["key"].device == "cpu"
    ops = [(o._op.schema_name, o._op.device) for o in _collect_ops(list(pipe._graph_out))]  # checks arguments too
    inflates = [d for name, d in ops if name in ("decoders__Inflate", "experimental__Inflate")]
    assert inflates == (["gpu", "gpu"] if codec == "lz4" else [])
    numba = [d for name, d in ops if name == "NumbaFunction"]
    # chunk tables of s2 and s1 (+ the zstd decoders), the label's length check
    assert numba == {"lz4": ["cpu"] * 3, "zstd": ["cpu"] * 5, "none": ["cpu"]}[codec]
    # On the CPU: reading, the codec kernels and their constants, keys, random draws, statuses.
    cpu_side = {"readers__Webdataset", "NumbaFunction", "Constant", "GetProperty", "Pad", "random__CoinFlip"}
    on_cpu = [name for name, d in ops if d == "cpu"]
    assert set(on_cpu) <= cpu_side | {"_ArithmeticGenericOp"}
    # s2 status | s1 status | label status (zstd: s2's and s1's each chunk table status | decoder status)
    assert on_cpu.count("_ArithmeticGenericOp") == {"none": 0, "lz4": 2, "zstd": 4}[codec]
    assert [d for name, d in ops if name == "Cast"] == ["gpu"]  # float32 exists only on the GPU
    assert (("Flip", "gpu") in ops and ("Transpose", "gpu") in ops) == augment


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("codec", ["lz4", "zstd", "none"])
def test_gpu_pipeline_matches_the_webdataset_loader(shard_sets, codec):  # pragma: no cover - GPU only
    spec = make_spec(shard_sets[codec], "test", device="cuda")
    want = list(make_loader("webdataset", dataclasses.replace(spec, streams=1, device="cpu")).epoch(0))
    got = list(DaliLoader(spec).epoch(0))
    assert all(b["image"].is_cuda for b in got)
    assert_same_batches(spec, [{**b, "image": b["image"].cpu()} for b in got], want, exact_image=False)


def test_train_cli_runs_end_to_end_with_the_dali_loader(shard_sets, tmp_path):
    run = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "train", "--shards", str(shard_sets["zstd"]), "--model", "SmallCNN",
                        "--input", "s1s2", "--loader", "dali", "--augment", "--epochs", "1", "--max-steps", "2",
                        "--batch-size", "8", "--workers", "1", "--device", "cpu", "--run-dir", str(run)],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    args = next((run / "logs").glob("*_arguments.txt")).read_text().splitlines()
    assert "augment: True" in args and "loader: dali" in args
    scores = json.loads((run / "test_scores.json").read_text())
    assert 0.0 <= scores["microF1"] <= 1.0
    preds = np.load(run / "test_predictions.npz")
    want = sorted(keys(make_loader("webdataset", make_spec(shard_sets["zstd"], "test"))))
    assert list(preds["keys"]) == want


def test_throughput_reports_samples_per_second(shard_sets):
    from bench.cases.dali import throughput

    for loader in ("dali", "webdataset"):
        res = throughput(str(shard_sets["none"]), "test", loader=loader, threads=1 if loader == "dali" else 0,
                         input_spec="rgb", batch_size=4, epochs=1)
        assert res["samples"] == load_manifest(str(shard_sets["none"])).samples("test")
        assert res["samples_per_s"] > 0 and res["seconds"] > 0


def test_channel_plan_decodes_each_band_once_in_first_use_order():
    plan = channel_plan(resolve_bands("B8,VV,B4,B5,VH"))
    assert plan.decode == {"s2": (7, 3, 4), "s1": (0, 1)}
    assert plan.runs == (("s2", 0, 1), ("s1", 0, 1), ("s2", 1, 3), ("s1", 1, 2))
    assert channel_plan(resolve_bands("s1s2")).runs == (("s2", 0, 10), ("s1", 0, 2))


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("normalised", [False, True])
def test_zstd_channels_kernel_decodes_each_band_into_its_channel(shuffle, normalised):
    # The CPU graph's zstd path, called directly: byte-shuffled or not (the manifest's
    # `byte_shuffle`), uint16 or normalised, bands of two modalities interleaved and repeated.
    from sen12ms_common.format.codecs import encode_band
    from train.data.dali_fused import channel_params, zstd_channels_kernel

    rng = np.random.default_rng(5)
    arrays = {"s2": rng.integers(0, 4096, (13, 8, 8), dtype=np.uint16), "s1": rng.integers(0, 65535, (2, 8, 8),
                                                                                          dtype=np.uint16)}
    inputs = []
    for m in ("s2", "s1"):
        chunks = [encode_band(band, "zstd", 3, shuffle) for band in arrays[m]]
        inputs += [np.frombuffer(b"".join(chunks), dtype=np.uint8), np.array([len(c) for c in chunks], np.int32)]
    sources = [(0, 7), (1, 0), (0, 3), (0, 7), (1, 1)]
    want = np.stack([arrays["s2" if i == 0 else "s1"][b] for i, b in sources])
    scale, offset, clip = np.full(5, 0.5, np.float32), np.arange(5, dtype=np.float32), np.full(5, 3000, np.float32)
    params = channel_params(sources, scale, offset, clip) if normalised else channel_params(sources)
    if normalised:
        want = np.minimum(want.astype(np.float32), clip[:, None, None]) * scale[:, None, None] + offset[:, None, None]
    kernel = zstd_channels_kernel((13, 2), (8, 8), 5, normalised, shuffle)
    out, status = np.empty(want.shape, dtype=want.dtype), np.empty(1, np.int32)
    kernel.run_fn(out, status, *inputs, params)
    assert status[0] == 0
    np.testing.assert_array_equal(out, want)
    wrong = list(inputs)
    wrong[3] = inputs[3] + np.array([1, 0], np.int32)  # s1's chunk sizes no longer add up to its member
    kernel.run_fn(out, status, *wrong, params)
    assert status[0] == 2 and not out.any()
    damaged = list(inputs)
    damaged[0] = inputs[0].copy()
    damaged[0][int(inputs[1][:7].sum()) + 20] ^= 0xFF  # inside band 7 of s2: its frame fails
    kernel.run_fn(out, status, *damaged, params)
    assert status[0] == 1 and not out.any()


@pytest.mark.parametrize("shuffle", [True, False])
def test_zstd_kernel_of_the_gpu_graph_decodes_the_frames_it_is_given(shuffle):
    # The GPU graph's zstd path (CPU decompression, then bands to the GPU), called directly.
    from sen12ms_common.format.codecs import encode_band
    import numba

    from train.data.dali_ops import zstd_kernel

    bands = np.random.default_rng(6).integers(0, 65535, (3, 8, 8), dtype=np.uint16)
    chunks = [encode_band(band, "zstd", 3, shuffle) for band in bands]
    src = np.frombuffer(b"".join(chunks), dtype=np.uint8)
    sizes = np.array([len(c) for c in chunks], np.int32)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int32)
    run = numba.njit(zstd_kernel((8, 8), shuffle).run_fn)  # compiled, as DALI compiles it
    out, status = np.empty((2, 8, 8), np.uint16), np.empty(1, np.int32)
    run(out, status, src, offsets[[2, 0]], sizes[[2, 0]])
    assert status[0] == 0
    np.testing.assert_array_equal(out, bands[[2, 0]])
    run(out, status, src, offsets[[2, 0]] + 1, sizes[[2, 0]])  # not where the frames start
    assert status[0] == 1 and not out.any()


def test_zstd_kernels_check_frame_checksums_unless_the_shard_was_checked():
    from sen12ms_common.format.codecs import encode_band
    import numba

    from train.data.dali_ops import zstd_kernel

    band = np.random.default_rng(7).integers(0, 65535, (8, 8), dtype=np.uint16)
    frame = bytearray(encode_band(band, "zstd", 3, True))
    frame[-1] ^= 0xFF  # the frame's own checksum (its last 4 bytes)
    src = np.frombuffer(bytes(frame), dtype=np.uint8)
    offsets, sizes = np.zeros(1, np.int32), np.array([len(frame)], np.int32)
    out, status = np.empty((1, 8, 8), np.uint16), np.empty(1, np.int32)
    numba.njit(zstd_kernel((8, 8), True).run_fn)(out, status, src, offsets, sizes)
    assert status[0] == 1 and not out.any()
    numba.njit(zstd_kernel((8, 8), True, frame_checksums=False).run_fn)(out, status, src, offsets, sizes)
    assert status[0] == 0
    np.testing.assert_array_equal(out[0], band)


def test_keys_come_from_the_readers_source_info():
    rows = [b"/data/a:b/train-000001.tar:1536:ROIs1158_spring_s2_1_p30.label.f32", b"x.tar:0:k_2.json"]
    width = max(map(len, rows)) + 3
    arr = np.zeros((2, width), np.uint8)
    for i, r in enumerate(rows):
        arr[i, :len(r)] = np.frombuffer(r, np.uint8)
    assert keys_of(arr) == ["ROIs1158_spring_s2_1_p30", "k_2"]


def test_remote_roots_are_refused_with_a_hint(shard_sets):
    spec = dataclasses.replace(make_spec(shard_sets["zstd"], "test"), root="s3://bucket/shards")
    with pytest.raises(DataError, match="--loader shards"):
        DaliLoader(spec, device_id=None)

