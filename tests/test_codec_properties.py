"""Property-based tests (hypothesis) of the shard format: every uint16 array round-trips through
every codec, every S1 float input round-trips within half a quantisation step of its cleaned
value, and random or damaged bytes given to the decoders end in our error (ShardError,
or ShardError from the readers of whole shards), never another exception or a hang."""

from __future__ import annotations

from sen12ms_common.errors import ShardError

import io
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from sen12ms_common.format import codecs
from sen12ms_common.kernels import compiled as compiled_kernels
from sen12ms_common.format import sample as sf

# Modest example counts (CI time); a deadline per example catches a decoder that hangs.
PROPS = settings(max_examples=150, deadline=timedelta(seconds=5), database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
S1_TOLERANCE = 1e-12  # float64 rounding of the quantiser's arithmetic, far below the step (3.8e-4 dB)


def layouts(modality: str | None = None):
    """Any layout of one array modality: codec, level, shuffle on/off, a small patch size."""
    return st.builds(
        lambda codec, level, shuffle, mod, size: sf.SampleLayout(codec=codec, level=level if codec == "zstd" else 0,
                                                                  byte_shuffle=shuffle, modalities=(mod,), size=size),
        st.sampled_from(sf.CODECS), st.integers(1, 9), st.booleans(),
        st.just(modality) if modality else st.sampled_from(sf.ARRAY_MODALITIES), st.integers(1, 20))


# --- lossless arrays -----------------------------------------------------------------------------------

@pytest.mark.slow
@PROPS
@given(layout=layouts(), data=st.data(), byteorder=st.sampled_from("<>"), transposed=st.booleans())
def test_any_stored_array_round_trips_through_every_codec(layout, data, byteorder, transposed):
    (modality,) = layout.modalities
    shape = layout.shape(modality)
    dtype = np.dtype(sf.STORED_DTYPE[modality]).newbyteorder(byteorder)
    arr = data.draw(hnp.arrays(dtype, shape[::-1] if transposed else shape))
    if transposed:  # a non-contiguous view, as a reader may hand over
        arr = arr.transpose(2, 1, 0)
    members = sf.encode_array(arr, modality, layout)
    assert all(isinstance(v, bytes) for v in members.values())
    out = sf.decode_array(members, modality, layout)
    assert out.shape == shape and out.dtype == np.dtype(sf.STORED_DTYPE[modality]).newbyteorder("<")
    assert np.array_equal(out, arr)


@PROPS
@pytest.mark.slow
@given(arr=hnp.arrays(np.uint16, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=12)),
       level=st.integers(1, 19))
def test_shuffle_and_compression_primitives_round_trip_any_shape(arr, level):
    import lz4.block

    import zstandard

    shuffled = codecs.shuffle_bytes(arr)
    assert len(shuffled) == 2 * arr.size
    for packed, unpack in (
        (codecs._zstd_compressor(level).compress(shuffled), lambda b: zstandard.ZstdDecompressor().decompress(b)),
        (lz4.block.compress(shuffled, store_size=False), lambda b: lz4.block.decompress(b, uncompressed_size=2 * arr.size)),
        (shuffled, bytes),
    ):
        back = np.empty(arr.shape, dtype=np.uint16)
        codecs.unshuffle_into(unpack(packed), back)
        assert np.array_equal(back, arr)


@PROPS
@given(arr=hnp.arrays(np.uint16, st.tuples(st.integers(1, 4), st.integers(1, 40), st.integers(1, 40))),
       strided=st.booleans())
def test_a_run_of_shuffled_bands_unshuffles_alike_compiled_and_in_numpy(arr, strided):
    assert compiled_kernels("unshuffle") is not None  # numba is a dependency: the loader's fast path
    raw = np.frombuffer(b"".join(codecs.shuffle_bytes(band) for band in arr), dtype=np.uint8)
    for compiled in (True, False):
        # A batch slot's channels, or every other column of a wider array (not contiguous:
        # numpy's passes, which must leave the columns in between alone).
        full = np.zeros(arr.shape[:2] + (arr.shape[2] * (2 if strided else 1),), dtype=np.uint16)
        out = full[:, :, ::2] if strided else full
        codecs.unshuffle_run(raw, out, compiled=compiled)
        assert np.array_equal(out, arr)
        assert not strided or not full[:, :, 1::2].any()


def test_frame_checksums_are_checked_unless_the_shard_was_checked_whole():
    band = np.random.default_rng(3).integers(0, 4000, (16, 16), dtype=np.uint16)
    frame = bytearray(codecs.encode_band(band, "zstd", 3))
    frame[-1] ^= 0xFF  # the frame's own checksum (its last 4 bytes)
    out = np.empty((1, 16, 16), dtype=np.uint16)
    with pytest.raises(ShardError, match="does not decompress"):
        codecs.BandDecoder().decode_run(bytes(frame), [0, len(frame)], "zstd", [0], out, np.dtype("<u2"))
    skipping = codecs.BandDecoder(frame_checksums=False)
    assert not skipping.frame_checksums
    skipping.decode_run(bytes(frame), [0, len(frame)], "zstd", [0], out, np.dtype("<u2"))
    assert np.array_equal(out[0], band)


@PROPS
@given(layout=layouts("s2"), bad=st.tuples(st.integers(1, 14), st.integers(1, 21), st.integers(1, 21)))
def test_an_array_of_another_shape_is_refused_with_the_expected_one(layout, bad):
    assume(bad != layout.shape("s2"))
    with pytest.raises(ShardError) as err:
        sf.encode_array(np.zeros(bad, np.uint16), "s2", layout)
    assert str(err.value) == f"s2 array has shape {bad}, expected {layout.shape('s2')}"


# --- S1: any float input, within half a step of its cleaned value -------------------------------------------

s1_floats = st.one_of(
    st.floats(width=32, allow_nan=True, allow_infinity=True, allow_subnormal=True),
    st.floats(-25.0, 0.0, width=32),  # the range that is kept, densely
    st.sampled_from([-25.0, 0.0, -12.5, np.nextafter(np.float32(-25), np.float32(0)), 3.4e38, -3.4e38, 1e-45]),
)


@pytest.mark.slow
@PROPS
@given(x=hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=3, max_side=16), elements=s1_floats))
@example(x=np.array([np.nan, np.inf, -np.inf, -25.0, 0.0, -25.5, 0.5, -1e30, 1e30], np.float32))
def test_any_s1_input_round_trips_within_half_a_step_of_its_cleaned_value(x):
    q = sf.quantize_s1(x)
    assert q.dtype == np.uint16 and q.shape == x.shape
    cleaned = sf.clean_s1(x).astype(np.float64)
    assert np.all((cleaned >= sf.S1_MIN_DB) & (cleaned <= sf.S1_MAX_DB))
    back = sf.dequantize_s1(q, np.float64)
    assert np.abs(back - cleaned).max() <= sf.S1_STEP / 2 + S1_TOLERANCE
    # The cleaning the original toolbox does: NaN and +inf -> 0 dB, -inf -> -25 dB, clip to [-25, 0].
    assert np.all(q[np.isnan(x) | (x >= 0)] == sf.S1_LEVELS)
    assert np.all(q[x <= -25] == 0)
    # Order is kept: a larger input never gets a smaller code.
    finite = np.isfinite(x)
    xs, qs = x[finite], q[finite]
    idx = np.argsort(xs, kind="stable")
    assert np.all(np.diff(qs[idx].astype(np.int64)) >= 0)


@pytest.mark.slow
@PROPS
@given(x=hnp.arrays(np.float64, (2, 4, 4), elements=st.floats(allow_nan=True, allow_infinity=True)),
       codec=st.sampled_from(sf.CODECS))
def test_s1_through_a_whole_sample_decodes_to_the_quantised_codes(x, codec):
    layout = sf.SampleLayout(codec=codec, level=sf.DEFAULT_LEVEL[codec], modalities=("s1",), size=4)
    members = sf.encode_sample({"s1": x}, np.full(17, 1 / 17), {"k": 1}, layout)
    out = sf.decode_sample(members, layout)
    assert np.array_equal(out["s1"], sf.quantize_s1(x))
    assert np.abs(sf.dequantize_s1(out["s1"], np.float64) - sf.clean_s1(x)).max() <= sf.S1_STEP / 2 + S1_TOLERANCE


# --- random and damaged bytes: our error, never another ------------------------------------------------

SMALL = 6  # patch size of the fuzzed layouts: random bytes of the right length are plausible


def small_layout(codec: str, modalities=("s2", "s1", "lc")) -> sf.SampleLayout:
    return sf.SampleLayout(codec=codec, level=sf.DEFAULT_LEVEL[codec], modalities=modalities, size=SMALL)


def valid_members(codec: str, seed: int = 0) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    layout = small_layout(codec)
    arrays = {"s2": rng.integers(0, 12000, (13, SMALL, SMALL)).astype(np.uint16),
              "s1": rng.uniform(-30, 2, (2, SMALL, SMALL)).astype(np.float32),
              "lc": rng.integers(0, 18, (4, SMALL, SMALL)).astype(np.uint8)}
    return sf.encode_sample(arrays, np.full(17, 1 / 17), {"season": "ROIs1158_spring"}, layout)


def decodes_or_format_error(members: dict[str, bytes], layout: sf.SampleLayout) -> None:
    try:
        out = sf.decode_sample(members, layout)
    except ShardError:
        return
    for m in layout.modalities:
        assert out[m].shape == layout.shape(m) and out[m].dtype == layout.dtype(m)
    assert out["label"].shape == (17,) and out["label"].dtype == np.float32


def mutate(data: bytes, edits: list[tuple[str, int, int]]) -> bytes:
    b = bytearray(data)
    for kind, pos, value in edits:
        at = pos % (len(b) + 1)
        if kind == "flip" and b:
            b[at % len(b)] ^= value or 1
        elif kind == "cut":
            del b[at:]
        elif kind == "insert":
            b[at:at] = bytes([value]) * (1 + value % 7)
    return bytes(b)


edits = st.lists(st.tuples(st.sampled_from(["flip", "cut", "insert"]), st.integers(0, 1 << 20), st.integers(0, 255)),
                 min_size=1, max_size=4)


@PROPS
@given(codec=st.sampled_from(sf.CODECS),
       members=st.dictionaries(st.sampled_from(["s2.zst", "s2.lz4", "s2.raw", "s1.zst", "s1.lz4", "s1.raw", "lc.zst",
                                                "lc.lz4", "lc.raw", "s2.lz4sizes", "s1.lz4sizes", "lc.lz4sizes",
                                                "label.f32", "json"]),
                               st.binary(max_size=2 * 13 * SMALL * SMALL + 64), max_size=14))
@example(codec="zstd", members={**valid_members("zstd"), "json": b"[" * 100_000})  # nesting: RecursionError
@example(codec="lz4", members={**valid_members("lz4"), "s2.lz4sizes": b"\xff\xff\xff\xff" * 13})
@example(codec="none", members={**valid_members("none"), "s1.raw": b"\0" * (2 * 2 * SMALL * SMALL + 1)})
def test_random_bytes_give_a_format_error_never_a_crash(codec, members):
    decodes_or_format_error(members, small_layout(codec))


@PROPS
@given(codec=st.sampled_from(sf.CODECS), which=st.integers(0, 20), edits=edits)
def test_damaged_members_give_a_format_error_or_the_right_shape_never_a_crash(codec, which, edits):
    members = valid_members(codec)
    name = sorted(members)[which % len(members)]
    damaged = dict(members, **{name: mutate(members[name], edits)})
    decodes_or_format_error(damaged, small_layout(codec))
    if codec == "zstd" and name.endswith(".zst") and damaged[name] != members[name]:
        # zstd members carry a checksum: damage never passes for other pixels.
        try:
            out = sf.decode_sample(damaged, small_layout(codec))
        except ShardError:
            return
        mod = name.split(".")[0]
        assert np.array_equal(out[mod], sf.decode_sample(members, small_layout(codec))[mod])


# --- whole shards: verify and the training loader -----------------------------------------------------------

@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory) -> tuple[Path, bytes, object]:
    """A folder with a good two-sample shard (zstd), its manifest and index; returns the good bytes."""
    from sen12ms_common.format.manifest import Manifest, ShardEntry

    root = tmp_path_factory.mktemp("fuzz")
    layout = small_layout("zstd", ("s2", "s1"))
    buf = io.BytesIO()
    w = sf.TarShardWriter(buf)
    rng = np.random.default_rng(3)
    for key in ("ROIs1158_spring_s2_1_p1", "ROIs1158_spring_s2_1_p2"):
        arrays = {"s2": rng.integers(0, 9000, (13, SMALL, SMALL)).astype(np.uint16),
                  "s1": rng.uniform(-30, 2, (2, SMALL, SMALL)).astype(np.float32)}
        season, _, rest = key.partition("_s2_")
        scene, _, patch = rest.partition("_p")
        w.add_sample(key, sf.encode_sample(arrays, np.full(17, 1 / 17),
                                           {"season": season, "scene": int(scene), "patch": int(patch)}, layout))
    stats = w.close()
    good = buf.getvalue()
    (root / "train-000000.tar").write_bytes(good)
    (root / "train-000000.idx").write_text(sf.dali_index(stats.index))
    entry = ShardEntry("train-000000.tar", stats.samples, stats.bytes, stats.sha256, stats.xxh3_128)
    manifest = Manifest(layout, {"train": [entry]}, {})
    (root / "manifest.json").write_text(manifest.dumps())
    return root, good, manifest


SHARDS = settings(PROPS, max_examples=60, suppress_health_check=list(HealthCheck))


@pytest.mark.timeout(300)
@SHARDS
@given(edits=edits, random_bytes=st.one_of(st.none(), st.binary(max_size=4096)))
# A flipped byte in the .json member, which training does not read, of a stream's last shard:
# the sha256 check must still run after the stream's last batch (it once did not).
@example(edits=[("flip", 512, 0)], random_bytes=None)
def test_damaged_or_random_shards_give_a_shard_error_in_verify_and_the_loader(shard_dir, edits, random_bytes):
    from convert.shards.verify import verify_shard
    from sen12ms_common.errors import ShardError as VerifyError
    from sen12ms_common.vocab.bands import resolve_bands
    from sen12ms_common.vocab.igbp import LabelRule
    from sen12ms_common.vocab.inputs import channel_transform
    from train.data import LoaderSpec, make_loader
    from sen12ms_common.errors import DataError

    root, good, manifest = shard_dir
    data = random_bytes if random_bytes is not None else mutate(good, edits)
    (root / "train-000000.tar").write_bytes(data)
    (entry,) = manifest.shards("train")
    try:
        assert verify_shard(str(root), entry, manifest.layout, {}) == 2
        assert data == good  # verify passes only the exact bytes of the manifest
    except VerifyError as exc:
        assert str(exc).startswith(("train-000000.tar: ", "train-000000.idx: "))
    bands = resolve_bands("s1s2")
    for verify in (True, False):
        spec = LoaderSpec(str(root), manifest, "train", bands, LabelRule("multi_label"), 2,
                          channel_transform(bands, "official", {}), verify=verify)
        try:
            batches = list(make_loader("webdataset", spec).epoch(0))
        except DataError as exc:
            assert str(root / "train-000000.tar") in str(exc) and "\n" not in str(exc)
        else:
            assert verify is False or data == good
            assert [b["image"].shape for b in batches] == [(2, 12, SMALL, SMALL)]
