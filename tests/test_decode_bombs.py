"""Decompression and size bombs in shards: a zstd frame that declares 8 GiB (RLE blocks that
really expand to it) and a tar header that declares 1 TiB. `convert verify`, `python -m train`
and `python -m train.evaluate` end with one line naming the shard and sample, never a
MemoryError, under an address-space limit a bomb would exceed; with --skip-bad-shards the
shard is skipped and named."""

from __future__ import annotations

import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from sen12ms_common.format.manifest import checksums_of, load_manifest

pytestmark = pytest.mark.slow  # converts, trains and verifies in subprocesses

REPO = Path(__file__).resolve().parents[1]
ADDRESS_SPACE = 6 << 30  # enough for torch, numba's LLVM and a SmallCNN run; an 8 GiB band is not
BOMB = 8 << 30
TRAIN = ("--model", "SmallCNN", "--input", "s1s2", "--batch-size", "2", "--epochs", "1", "--workers", "0",
         "--threads", "1", "--stats", "official", "--device", "cpu")


def zstd_bomb(size: int = BOMB) -> bytes:
    """One zstd frame whose header declares `size` bytes, made of RLE blocks of 128 KiB (4 bytes
    each) that really decode to it: a 256 KiB member for 8 GiB."""
    block = 1 << 17
    header = b"\x28\xb5\x2f\xfd" + bytes([0xC0, 0x38]) + size.to_bytes(8, "little")  # FCS 8 bytes, 128 KiB window
    n = size // block
    blocks = bytearray()
    for i in range(n):
        last = 1 if i == n - 1 else 0
        blocks += ((block << 3) | (1 << 1) | last).to_bytes(3, "little") + b"\0"
    return header + bytes(blocks)


def limited() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env=env, preexec_fn=limited)


def rewrite_first_sample(out: Path, split: str, change) -> tuple[str, str]:
    """Rewrite the first sample of the split's first shard with `change(info, data, sizes of its
    chunked members) -> (header, data)`
    and make the manifest's checksums match (only the decoder's own checks can catch it)."""
    manifest = json.loads((out / "manifest.json").read_text())
    entry = manifest["splits"][split]["shards"][0]
    shard = out / entry["name"]
    buf = io.BytesIO()
    with tarfile.open(shard) as src:
        members = [(info, src.extractfile(info).read()) for info in src.getmembers()]
    key = members[0][0].name.split(".", 1)[0]
    sizes = {m: np.frombuffer(data, "<i4") for info, data in members
             if info.name.startswith(key + ".") and info.name.endswith("sizes") for m in [info.name.split(".")[1]]}
    for info, data in members:
        if info.name.startswith(key + "."):
            header, data = change(info, data, sizes)
        else:
            header = info.tobuf(tarfile.USTAR_FORMAT)
        buf.write(header + data + b"\0" * (-len(data) % 512))
    buf.write(b"\0" * 1024)
    shard.write_bytes(buf.getvalue())
    entry.update(bytes=shard.stat().st_size, **checksums_of(str(shard)))
    (out / "manifest.json").write_text(json.dumps(manifest))
    return entry["name"], key


def with_zstd_bomb(info: tarfile.TarInfo, data: bytes, sizes: dict[str, np.ndarray]) -> tuple[bytes, bytes]:
    """Band 1 (B2, in every input) of the s2 member becomes the bomb; its sizes member follows."""
    if info.name.endswith(".s2.zst"):
        old = sizes["s2"]
        starts = np.concatenate(([0], np.cumsum(old)))
        data = data[:starts[1]] + zstd_bomb() + data[starts[2]:]
    elif info.name.endswith(".s2.zstsizes"):
        new = sizes["s2"].copy()
        new[1] = len(zstd_bomb())
        data = new.astype("<i4").tobytes()
    info = tarfile.TarInfo(info.name)
    info.size = len(data)
    return info.tobuf(tarfile.USTAR_FORMAT), data


def with_tar_bomb(info: tarfile.TarInfo, data: bytes, sizes: dict[str, np.ndarray]) -> tuple[bytes, bytes]:
    """The s2 member's header declares 1 TiB (GNU base-256 size field)."""
    header = info.tobuf(tarfile.USTAR_FORMAT)
    if info.name.endswith(".s2.zst"):
        big = tarfile.TarInfo(info.name)
        big.size = 1 << 40
        header = big.tobuf(tarfile.GNU_FORMAT)
    return header, data


@pytest.fixture(scope="module")
def clean(sample_shards: Path, tmp_path_factory) -> tuple[Path, Path]:
    """The sample shards and a checkpoint trained on them for one step."""
    run_dir = tmp_path_factory.mktemp("bombs") / "run"
    r = run("train", "--shards", str(sample_shards), "--run-dir", str(run_dir), "--max-steps", "1", *TRAIN)
    assert r.returncode == 0, r.stdout + r.stderr
    return sample_shards, next((run_dir / "checkpoints").glob("*_model_best.pth"))


def one_error_line(r: subprocess.CompletedProcess, *parts: str) -> str:
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and "MemoryError" not in r.stderr, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: ") and all(p in last for p in parts), last
    return last


def test_a_zstd_frame_declaring_8_gib_is_refused_by_every_reader(clean, tmp_path):
    shards, ckpt = clean
    out = tmp_path / "set"
    shutil.copytree(shards, out)
    bombed = {split: rewrite_first_sample(out, split, with_zstd_bomb) for split in ("train", "test")}
    declared = f"member .s2.zst declares {BOMB} bytes for a band of 131072"

    shard, key = bombed["train"]
    one_error_line(run("convert", "verify", str(out), "--no-progress"), f"{shard}: sample {key}: {declared}")
    one_error_line(run("train", "--shards", str(out), "--run-dir", str(tmp_path / "run"), *TRAIN),
                   f"{out / shard}: sample {key}: {declared}")
    shard, key = bombed["test"]
    # The default --workers auto: worker processes on a machine with several CPUs.
    one_error_line(run("train.evaluate", "--shards", str(out), "--checkpoint", str(ckpt), "--out",
                       str(tmp_path / "eval"), "--batch-size", "8"), f"{out / shard}: sample {key}: {declared}")
    assert not (tmp_path / "eval").exists() or not list((tmp_path / "eval").iterdir())


def test_a_tar_header_declaring_1_tib_is_refused_and_skipped_when_asked(clean, tmp_path):
    shards, ckpt = clean
    out = tmp_path / "set"
    shutil.copytree(shards, out)
    shard, key = rewrite_first_sample(out, "train", with_tar_bomb)
    declared = f"'{key}.s2.zst' at byte "
    one_error_line(run("convert", "verify", str(out), "--no-progress"), f"{shard}: ", "damaged or truncated tar",
                   f"declares {1 << 40} bytes")
    one_error_line(run("train", "--shards", str(out), "--run-dir", str(tmp_path / "run"), *TRAIN),
                   f"{out / shard}: unreadable after 0 samples", declared, f"declares {1 << 40} bytes")
    skipped = run("train", "--shards", str(out), "--run-dir", str(tmp_path / "skip"), "--skip-bad-shards", *TRAIN)
    assert skipped.returncode == 0, skipped.stdout + skipped.stderr
    assert "Traceback" not in skipped.stderr and "MemoryError" not in skipped.stderr
    assert f"skipping bad shard: {out / shard}: unreadable after 0 samples" in skipped.stderr, skipped.stderr
    n = load_manifest(str(out)).samples("train") - load_manifest(str(out)).splits["train"][0].samples
    assert f"train loss" in skipped.stdout and f"({n} samples, " in skipped.stdout, skipped.stdout
    assert f"train: skipped 1 bad shard(s)/sample(s): {out / shard}: unreadable after 0 samples" in skipped.stdout
