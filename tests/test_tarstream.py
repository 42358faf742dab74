"""sen12ms_common.format.tarstream: the tar walker of the loaders and `verify` gives exactly what
webdataset's tar iterator gives, for our shards and for archives of other writers (GNU long
names, pax), from streams that return short reads (the network) and into reused buffers, hands
every byte to the hash, names the offset of damage and never allocates what a header declares
beyond the caller's limit."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest

from sen12ms_common.format.mapped import map_file
from sen12ms_common.format.tarstream import READ_STEP, iter_members, iter_samples, split_name


def as_bytes(samples) -> list[tuple[str, dict[str, bytes]]]:
    return [(k, {e: bytes(v) for e, v in m.items()}) for k, m in samples]


def members_bytes(items) -> list[tuple[str, bytes]]:
    return [(n, None if d is None else bytes(d)) for n, d in items]


def make_tar(members: list[tuple[str, bytes]], fmt: int = tarfile.USTAR_FORMAT, extra: list[tarfile.TarInfo] = ()) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for info in extra:
            tar.addfile(info)
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def webdataset_samples(data: bytes, wanted: set[str]) -> list[tuple[str, dict[str, bytes]]]:
    from webdataset.tariterators import group_by_keys, tar_file_iterator

    files = ({**f, "__url__": "x.tar"} for f in
             tar_file_iterator(io.BytesIO(data), select_files=lambda n: split_name(n)[1] in wanted))
    return [(s["__key__"], {k: v for k, v in s.items() if not k.startswith("__")}) for s in group_by_keys(files)]


class ShortReads(io.RawIOBase):
    """A stream that returns at most `step` bytes per read, as a network stream may."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data, self._pos, self._step = data, 0, step

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = min(len(b), self._step, len(self._data) - self._pos)
        b[:n] = self._data[self._pos:self._pos + n]
        self._pos += n
        return n


def random_members(rng: np.random.Generator, samples: int) -> list[tuple[str, bytes]]:
    members = []
    for i in range(samples):
        for ext in ("s2.zst", "s1.zst", "label.f32", "json"):
            members.append((f"ROIs1158_spring_{i}_p{i * 7}.{ext}", rng.bytes(int(rng.integers(0, 3000)))))
    return members


@pytest.mark.parametrize("step", [7, 512, 1000, 1 << 22])
@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_samples_equal_webdatasets_for_any_read_size_and_tar_format(step, fmt):
    rng = np.random.default_rng(step + fmt)
    data = make_tar(random_members(rng, 9), fmt)
    wanted = {"s2.zst", "label.f32"}
    ours = as_bytes(iter_samples(ShortReads(data, step), wanted))
    assert ours == webdataset_samples(data, wanted)
    assert len(ours) == 9 and all(set(m) == wanted for _, m in ours)


def test_long_names_of_gnu_and_pax_writers_are_read():
    name = "x" * 150 + ".s2.zst"
    for fmt in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        data = make_tar([(name, b"abc"), ("k.json", b"{}")], fmt)
        assert members_bytes(iter_members(io.BytesIO(data), lambda n: True)) == [(name, b"abc"), ("k.json", b"{}")]


def test_directories_and_links_are_skipped_but_their_names_checked():
    d = tarfile.TarInfo("folder")
    d.type = tarfile.DIRTYPE
    link = tarfile.TarInfo("k.lnk")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    data = make_tar([("k.json", b"{}")], extra=[d, link])
    seen = []
    assert members_bytes(iter_members(io.BytesIO(data), lambda n: True, check_name=seen.append)) == [("k.json", b"{}")]
    assert seen == ["folder", "k.lnk", "k.json"]


def test_every_byte_reaches_on_bytes_when_draining():
    data = make_tar(random_members(np.random.default_rng(1), 5)) + b"\0" * 4096  # trailing padding
    h = hashlib.sha256()
    samples = list(iter_samples(ShortReads(data, 700), {"json"}, on_bytes=h.update, drain=True))
    assert len(samples) == 5
    assert h.hexdigest() == hashlib.sha256(data).hexdigest()


def test_members_larger_than_a_read_step_are_read_and_hashed_whole():
    # Shard members are ~100 KB to 2 MB: read in cache-sized steps, hashed step by step.
    rng = np.random.default_rng(2)
    members = [("k1.s2.npy", rng.bytes(READ_STEP * 5 + 3)), ("k1.s1.npy", rng.bytes((2 << 20) + 1)),
               ("k1.json", b"{}"), ("k2.s2.npy", rng.bytes(READ_STEP - 1))]
    data = make_tar(members)
    h, pieces = hashlib.sha256(), []

    def on_bytes(b):
        pieces.append(len(b))
        h.update(b)

    ours = as_bytes(iter_samples(io.BytesIO(data), {"s2.npy", "json"}, on_bytes=on_bytes, drain=True))
    assert ours == webdataset_samples(data, {"s2.npy", "json"})
    assert h.hexdigest() == hashlib.sha256(data).hexdigest()
    assert max(pieces) <= READ_STEP


def mapped(data: bytes, folder: Path) -> memoryview:
    """`data` as a loader sees a local shard: a file, mapped."""
    path = folder / f"{len(list(folder.iterdir()))}.tar"
    path.write_bytes(data)
    with open(path, "rb") as f:
        view = map_file(f)
    assert view is not None
    return view


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_a_mapped_archive_gives_its_streams_members_as_views_of_the_mapping(fmt, tmp_path):
    rng = np.random.default_rng(fmt)
    long_name = "x" * (50 if fmt == tarfile.USTAR_FORMAT else 150)  # ustar names end at 100 bytes
    members = random_members(rng, 6) + [(long_name + ".s2.zst", rng.bytes(READ_STEP + 5))]
    data = make_tar(members, fmt) + b"\0" * 4096
    wanted = {"s2.zst", "label.f32"}
    h, pieces = hashlib.sha256(), []
    samples = list(iter_samples(mapped(data, tmp_path), wanted, on_bytes=lambda b: (h.update(b), pieces.append(b)),
                                drain=True))
    assert as_bytes(samples) == as_bytes(iter_samples(io.BytesIO(data), wanted)) == webdataset_samples(data, wanted)
    assert h.hexdigest() == hashlib.sha256(data).hexdigest()
    # No copy: every member is a read-only view of the one mapping, as are the pieces hashed.
    views = [v for _, m in samples for v in m.values()] + pieces
    assert {type(v.obj).__name__ for v in views} == {"mmap"} and all(v.readonly for v in views)
    assert len({id(v.obj) for v in views}) == 1
    # Without a hash, members a reader does not want are passed over unread.
    assert as_bytes(iter_samples(mapped(data, tmp_path), wanted)) == as_bytes(samples)


def test_only_local_files_are_mapped(tmp_path):
    assert map_file(io.BytesIO(b"x" * 1024)) is None  # a stream: read, not mapped
    (tmp_path / "empty.tar").write_bytes(b"")
    with open(tmp_path / "empty.tar", "rb") as f:
        assert map_file(f) is None


@pytest.mark.parametrize("source", ["stream", "mapped"])
def test_truncated_and_damaged_archives_raise_read_error_with_the_offset(source, tmp_path):
    def src(b: bytes):
        return io.BytesIO(b) if source == "stream" else mapped(b, tmp_path)

    data = make_tar([("a.json", b"1" * 2000), ("b.json", b"2")])
    with pytest.raises(tarfile.ReadError, match=r"unexpected end of data in 'a.json' at byte 0"):
        list(iter_members(src(data[:1500]), lambda n: True))
    with pytest.raises(tarfile.ReadError, match=r"unexpected end of data in 'a.json' at byte 0"):
        list(iter_members(src(data[:1500]), lambda n: n != "a.json"))  # passed over, not read
    with pytest.raises(tarfile.ReadError, match=r"unexpected end of data at byte 2560 \(no end-of-archive"):
        list(iter_members(src(data[:2560]), lambda n: True))
    bad = bytearray(data)
    bad[2560 + 10] ^= 0xFF  # the second header's name: its checksum no longer matches
    with pytest.raises(tarfile.ReadError, match=r"bad tar header at byte 2560"):
        list(iter_members(src(bytes(bad)), lambda n: True))


def test_a_repeated_member_is_an_error():
    data = make_tar([("a.json", b"1"), ("a.json", b"2")])
    with pytest.raises(ValueError, match="the sample a holds json twice"):
        list(iter_samples(io.BytesIO(data), {"json"}))


@pytest.mark.slow
def test_real_shards_read_as_webdataset_reads_them(sample_shards: Path):
    for shard in sorted(sample_shards.glob("*.tar"))[:3]:
        data = shard.read_bytes()
        wanted = {"s2.zst", "s1.zst", "label.f32"}
        assert as_bytes(iter_samples(io.BytesIO(data), wanted)) == webdataset_samples(data, wanted)
        with open(shard, "rb") as f:
            view = map_file(f)
        assert view is not None and as_bytes(iter_samples(view, wanted)) == webdataset_samples(data, wanted)
