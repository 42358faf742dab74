"""Both loaders accept exactly the same members (issue 29, item 9): a member the webdataset loader
refuses (a zstd frame without a content size, behind a skippable frame, a band split in two
frames; an uncompressed member of another size than the layout's; a label of 16, 18 or 0
floats) is refused by the DALI loader too, as one line naming the sample, never decoded."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
import zstandard

from sen12ms_common.errors import ShardError
from sen12ms_common.format import sample as sf
from sen12ms_common.format.codecs import shuffle_bytes
from sen12ms_common.format.manifest import Manifest, ShardEntry, index_name, shard_name
from test_loader import SIZE, spec
from train.data import make_loader

BAD_KEY = "ROIs1158_spring_s2_1_p3"


def _frames(frames: list[bytes]) -> dict[str, bytes]:
    return {"s2.zst": b"".join(frames), "s2.zstsizes": struct.pack(f"<{len(frames)}i", *map(len, frames))}


def _band1(members: dict[str, bytes], band1: bytes | list[bytes]) -> dict[str, bytes]:
    """s2's members with band 1's frame (B2, which every input uses) replaced (by one or several
    chunks counted as one)."""
    sizes = struct.unpack("<13i", members["s2.zstsizes"])
    starts = np.cumsum((0,) + sizes)
    frames = [members["s2.zst"][starts[i]:starts[i + 1]] for i in range(13)]
    frames[1] = band1 if isinstance(band1, bytes) else b"".join(band1)
    return _frames(frames)


def _hostile(kind: str, members: dict[str, bytes], s2: np.ndarray) -> dict[str, bytes]:
    raw1 = shuffle_bytes(s2[1])
    if kind == "no-content-size":
        return {**members, **_band1(members, zstandard.ZstdCompressor(write_content_size=False).compress(raw1))}
    if kind == "skippable-first":
        skip = struct.pack("<II", 0x184D2A50, 4) + b"abcd"
        return {**members, **_band1(members, [skip, zstandard.ZstdCompressor().compress(raw1)])}
    if kind == "split-frames":
        c = zstandard.ZstdCompressor()
        half = len(raw1) // 2
        return {**members, **_band1(members, [c.compress(raw1[:half]), c.compress(raw1[half:])])}
    if kind == "raw-longer":
        return {**members, "s2.raw": members["s2.raw"] + members["s2.raw"][: 2 * SIZE * SIZE]}
    if kind.startswith("label-"):
        return {**members, sf.LABEL_EXT: np.ones(int(kind[6:]), np.float32).tobytes()}
    raise AssertionError(kind)


def write_set(root, codec: str, kind: str) -> None:
    """A test split of 2 shards x 4 samples (+ their DALI index files); sample 3 is hostile."""
    layout = sf.SampleLayout(codec=codec, level=sf.DEFAULT_LEVEL[codec], size=SIZE)
    rng = np.random.default_rng(1)
    root.mkdir(parents=True)
    entries, n = [], 0
    for i in range(2):
        buf = io.BytesIO()
        w = sf.TarShardWriter(buf)
        for _ in range(4):
            key = f"ROIs1158_spring_s2_1_p{n + 1}"
            s2 = rng.integers(0, 12500, (13, SIZE, SIZE)).astype(np.uint16)
            s1 = rng.uniform(-32, 3, (2, SIZE, SIZE)).astype(np.float32)
            members = sf.encode_sample({"s2": s2, "s1": s1}, rng.dirichlet(np.ones(17)), {"key": key}, layout)
            w.add_sample(key, _hostile(kind, members, s2) if key == BAD_KEY else members)
            n += 1
        st = w.close()
        name = shard_name("test", i)
        (root / name).write_bytes(buf.getvalue())
        (root / index_name(name)).write_text(sf.dali_index(st.index))
        entries.append(ShardEntry(name, st.samples, st.bytes, st.sha256, st.xxh3_128))
    stats = {b: {"mean": 100.0, "std": 50.0} for b in sf.MODALITY_BANDS["s2"]}
    stats.update({"VV": {"mean": -12.0, "std": 4.0}, "VH": {"mean": -19.0, "std": 4.5}})
    (root / "manifest.json").write_text(Manifest(layout, {"test": entries}, stats).dumps())


CASES = [("zstd", "no-content-size"), ("zstd", "skippable-first"), ("zstd", "split-frames"),
         ("none", "raw-longer"), ("zstd", "label-16"), ("zstd", "label-18"), ("zstd", "label-0"),
         ("none", "label-16")]


def _refused(make, root) -> str:
    with pytest.raises(ShardError) as err:
        for _ in make().epoch(0):
            pass
    text = str(err.value)
    assert BAD_KEY in text and str(root) in text and "\n" not in text, text
    return text


@pytest.mark.parametrize("codec,kind", CASES)
def test_the_webdataset_loader_refuses_the_hostile_member(tmp_path, codec, kind):
    root = tmp_path / "s"
    write_set(root, codec, kind)
    for verify in (True, False):
        _refused(lambda: make_loader("webdataset", spec(root, "test", batch_size=2, verify=verify)), root)


@pytest.mark.slow  # compiles DALI pipelines
@pytest.mark.parametrize("codec,kind", CASES)
def test_the_dali_loader_refuses_the_same_member(tmp_path, codec, kind):
    pytest.importorskip("nvidia.dali", reason="the dali extra is not installed")
    from train.data.dali import DaliLoader

    root = tmp_path / "s"
    write_set(root, codec, kind)
    for verify in (True, False):
        s = spec(root, "test", batch_size=2, verify=verify)
        _refused(lambda: DaliLoader(s, num_threads=1, device_id=None), root)
