"""`make gpu-check` on a machine without a GPU: the one line and exit 0; and its parts up to where
CUDA is needed, on the CPU: the shard sets in three codecs, the batch comparison (DALI's CPU
pipeline against the webdataset loader), the timed training loop and the page it writes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.gpu.check import CheckResult, make_shards, render
from bench.gpu.loop import compare, train_rate
from sen12ms_common.format.manifest import load_manifest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the check would run")
def test_without_cuda_one_line_and_exit_0(tmp_path: Path):
    proc = subprocess.run([sys.executable, "-m", "bench.gpu.check", "--scratch", str(tmp_path / "scratch"), "--out",
                           str(tmp_path / "gpu.md")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["gpu-check: no CUDA device here (torch.cuda.is_available() is False): "
                                        "nothing to check"]
    assert proc.stderr == ""
    assert not (tmp_path / "scratch").exists() and not (tmp_path / "gpu.md").exists()


def test_make_gpu_check_is_a_target():
    make = (REPO / "Makefile").read_text()
    assert "\ngpu-check: install\n\t$(PY) -m bench.gpu.check --scratch $(GPU_CHECK_DIR)\n" in make


@pytest.fixture(scope="module")
def shard_sets(tmp_path_factory) -> dict[str, Path]:
    return make_shards(tmp_path_factory.mktemp("gpucheck"), scenes=4, patches=3, workers=2)


@pytest.mark.slow
def test_shard_sets_in_three_codecs(shard_sets: dict[str, Path]):
    assert list(shard_sets) == ["zstd", "lz4", "none"]
    samples = set()
    for codec, root in shard_sets.items():
        manifest = load_manifest(str(root))
        assert manifest.layout.codec == codec
        assert manifest.samples("train") > 0 and manifest.samples("test") > 0
        assert manifest.source.get("synthetic") is True
        samples.add(tuple(manifest.samples(s) for s in ("train", "val", "test")))
    assert len(samples) == 1  # the same samples in every codec
    again = make_shards(shard_sets["zstd"].parent, scenes=4, patches=3, workers=2)  # reused, not rewritten
    assert again == shard_sets


@pytest.mark.slow
@pytest.mark.parametrize("codec", ["zstd", "lz4", "none"])
def test_dali_batches_compared_with_the_cpu_loader(shard_sets: dict[str, Path], codec: str):
    pytest.importorskip("nvidia.dali", reason="the dali extra is not installed")
    c = compare(shard_sets[codec], codec, device="cpu", device_id=None, batch_size=2, threads=1)
    test = load_manifest(str(shard_sets[codec])).samples("test")
    assert c.equal and c.samples == test and c.batches == -(-test // 2)
    assert 0.0 <= c.max_abs_diff <= 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("loader", ["webdataset", "dali"])
def test_training_loop_measures_rate_and_stall(shard_sets: dict[str, Path], loader: str):
    if loader == "dali":
        pytest.importorskip("nvidia.dali", reason="the dali extra is not installed")
    r = train_rate(shard_sets["lz4"], "lz4", loader, device="cpu", model="SmallCNN", steps=3, warmup=1,
                   batch_size=2, amp=True, channels_last=True, workers=1)
    assert (r.codec, r.loader, r.steps, r.precision, r.channels_last) == ("lz4", loader, 3, "bfloat16", True)
    assert r.samples_per_s > 0 and 0.0 < r.stall_share < 1.0


def test_the_page_holds_both_tables():
    from bench.gpu.loop import Comparison, TrainRate

    result = CheckResult("NVIDIA H100 80GB HBM3", [Comparison("lz4", 4, 60, 2.4e-7, True)],
                         [TrainRate("lz4", "dali", 300, 2450.4, 0.031, "bfloat16", True)], seconds=201.0)
    page = render(result, steps=300, batch_size=32, workers=8, samples={"train": 400, "test": 60})
    assert page.startswith("# GPU check (`make gpu-check`)\n")
    assert "NVIDIA H100 80GB HBM3" in page and "400 training, 60 test samples" in page
    assert "| lz4 | 4 | 60 | 2.40e-07 | yes |" in page
    assert "| lz4 | dali | 2450 | 3.1 % | bfloat16 |" in page
