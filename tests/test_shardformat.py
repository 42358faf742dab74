"""The shard sample format: codecs round-trip, S1 quantisation error, tar layout and DALI index."""

from __future__ import annotations

from sen12ms_common.errors import ShardError

import io
import tarfile

import numpy as np
import pytest

from sen12ms_common.format import codecs
from sen12ms_common.format import sample as sf


def _arrays(rng):
    return {
        "s2": rng.integers(0, 12000, (13, 256, 256)).astype(np.uint16),
        "s1": rng.uniform(-32, 3, (2, 256, 256)).astype(np.float32),
        "lc": rng.integers(0, 18, (4, 256, 256)).astype(np.uint8),
    }


@pytest.mark.parametrize("codec", sf.CODECS)
def test_sample_round_trip(codec):
    rng = np.random.default_rng(1)
    arrays = _arrays(rng)
    arrays["s1"][0, :3, :3] = np.nan
    layout = sf.SampleLayout(codec=codec, level=sf.DEFAULT_LEVEL[codec], modalities=("lc", "s1", "s2"))
    assert layout.modalities == ("s2", "s1", "lc")
    members = sf.encode_sample(arrays, np.full(17, 1 / 17), {"season": "ROIs1158_spring"}, layout)
    out = sf.decode_sample(members, layout)
    assert np.array_equal(out["s2"], arrays["s2"]) and out["s2"].dtype == np.uint16
    assert np.array_equal(out["lc"], arrays["lc"])
    db = sf.dequantize_s1(out["s1"], np.float64)
    assert np.abs(db - sf.clean_s1(arrays["s1"])).max() <= sf.S1_STEP / 2
    assert np.all(db[0, :3, :3] == 0.0)  # NaN -> 0 dB
    assert out["label"].dtype == np.float32 and out["meta"] == {"season": "ROIs1158_spring"}


def test_byte_shuffle_is_the_stated_layout():
    a = np.array([0x0102, 0x0304], dtype=np.uint16)
    assert codecs.shuffle_bytes(a) == bytes([0x02, 0x04, 0x01, 0x03])
    out = np.zeros(2, dtype=np.uint16)
    codecs.unshuffle_into(codecs.shuffle_bytes(a), out)
    assert out.tolist() == [0x0102, 0x0304]


def test_damaged_members_raise_format_errors():
    rng = np.random.default_rng(2)
    for codec in sf.CODECS:
        layout = sf.SampleLayout(codec=codec)
        members = sf.encode_sample(_arrays(rng), np.full(17, 1 / 17), {}, layout)
        ext = layout.ext("s2")
        cut = dict(members, **{ext: members[ext][: len(members[ext]) // 2]})
        with pytest.raises(ShardError, match=r"s2\."):
            sf.decode_sample(cut, layout)
    with pytest.raises(ShardError, match="label.f32 is missing"):
        sf.decode_sample({k: v for k, v in members.items() if k != sf.LABEL_EXT}, layout)


def test_tar_writer_is_reproducible_and_index_points_at_members():
    rng = np.random.default_rng(3)
    layout = sf.SampleLayout(codec="zstd")
    samples = [(f"ROIs1158_spring_s2_1_p{i}", sf.encode_sample(_arrays(rng), np.full(17, 1 / 17), {"i": i}, layout))
               for i in range(3)]
    blobs = []
    for _ in range(2):
        buf = io.BytesIO()
        w = sf.TarShardWriter(buf)
        for key, m in samples:
            w.add_sample(key, m)
        stats = w.close()
        blobs.append(buf.getvalue())
    assert blobs[0] == blobs[1] and stats.bytes == len(blobs[0]) and stats.samples == 3
    data = blobs[0]
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        info = t.getmembers()[0]
        assert info.mtime == 0 and info.uid == 0 and info.uname == ""
    lines = sf.dali_index(stats.index).splitlines()
    assert lines[0] == "v1.2 3"
    fields = lines[2].split()
    for j in range(0, len(fields), 4):
        ext, off, size, name = fields[j], int(fields[j + 1]), int(fields[j + 2]), fields[j + 3]
        assert data[off:off + size] == samples[1][1][ext] and name == f"{samples[1][0]}.{ext}"
