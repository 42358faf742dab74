"""The sample dataset's lc masks are learnable: a SmallUNet trained on CPU for a few hundred steps
on synthetic SEN12MS scenes maps land cover on held-out scenes (the official hold-out scenes of
the sample tree), scored as the DFC2020 baseline scores."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from sen12ms_common.vocab.bands import resolve_bands
from sen12ms_common.vocab.dfc import igbp_to_dfc
from sen12ms_common.vocab.inputs import channel_transform
from train.tasks.segmentation import SegmentationTask
import pytest

pytestmark = pytest.mark.slow  # a few hundred training steps

pytestmark = pytest.mark.slow  # trains until the model learns

# Measured (docs/segmentation.md, "Learnability"): mIoU 0.432, AA 0.831, OA 0.906 on these held-out
# scenes (6 of the 10 classes present: mIoU counts the 4 absent ones as 0, as the baseline does,
# so 0.6 is its ceiling here). The thresholds leave a margin for other CPUs and torch builds.
MIN_MIOU, MIN_AA, MIN_OA = 0.30, 0.65, 0.75
SCENES, PATCHES, SEED = 16, 3, 3
STEPS, BATCH, CROP = 300, 8, 64


def _scenes(seed: int):
    """(train images, train masks, held-out images, held-out masks) as tensors: S2 10 bands with the
    original's official normalisation, lc band 1 mapped to DFC2020 training classes."""
    from convert.sample.sen12ms import patch_arrays, plan_scenes, scene_landcover

    bands = resolve_bands("s2")
    transform = channel_transform(bands, "official")
    index = [b.index for b in bands]
    out = {False: ([], []), True: ([], [])}
    for spec in plan_scenes(SCENES, PATCHES, seed, broken=False):
        cells = scene_landcover(spec, seed)
        for patch in spec.patches:
            a = patch_arrays(spec, patch, cells, seed)
            out[spec.holdout][0].append(transform.apply(a["s2"][index]))
            out[spec.holdout][1].append(igbp_to_dfc(a["lc"][0]))
    return [torch.from_numpy(np.stack(v)) for held in (False, True) for v in out[held]]


def test_small_unet_learns_lc_masks_of_held_out_scenes() -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small convolutions: one thread is faster than two that wait on each other
    try:
        t0 = time.perf_counter()
        x_train, y_train, x_held, y_held = _scenes(SEED)
        task = SegmentationTask(savanna=True)
        torch.manual_seed(0)
        net = task.build_model("SmallUNet", x_train.shape[1])
        opt = torch.optim.Adam(net.parameters(), lr=3e-3)
        g = torch.Generator().manual_seed(0)
        net.train()
        for _ in range(STEPS):
            i = torch.randint(0, len(x_train), (BATCH,), generator=g)
            r, c = torch.randint(0, 256 - CROP + 1, (2,), generator=g).tolist()
            x, y = x_train[i, :, r:r + CROP, c:c + CROP], y_train[i, r:r + CROP, c:c + CROP]
            opt.zero_grad(set_to_none=True)
            loss = task.loss_fn(net(x), y.long())
            loss.backward()
            opt.step()
        net.eval()
        col = task.collector()
        with torch.no_grad():
            for k in range(0, len(x_held), 4):
                col.add({"mask": y_held[k:k + 4], "key": [str(j) for j in range(k, k + 4)]}, net(x_held[k:k + 4]))
        m = task.score(task.merge([col.part()], float(loss.detach())))
        took = time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)
    print(f"held-out: mIoU {m['mIoU']:.4f} AA {m['AA']:.4f} OA {m['OA']:.4f} classes {m['classesPresent']} "
          f"IoU {[round(v, 3) for v in m['IoU']]} ({took:.1f} s)")
    assert m["classesPresent"] == 6
    assert m["mIoU"] >= MIN_MIOU and m["AA"] >= MIN_AA and m["OA"] >= MIN_OA
