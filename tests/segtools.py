"""Helpers of the segmentation tests: checkpoints in the format `python -m train --task
segmentation` writes, and small synthetic scenes as arrays."""

from __future__ import annotations

from pathlib import Path


from sen12ms_common.vocab.bands import resolve_bands
from sen12ms_common.vocab.inputs import channel_transform


def write_seg_checkpoint(path: Path, *, model: str = "SmallUNet", input_spec: str = "s2hr+s2mr+s1",
                         no_savanna: bool = True, stats: str = "dfc2020", net=None, seed: int = 0) -> Path:
    """A checkpoint of our layout for a segmentation network (freshly initialised unless `net`)."""
    import torch

    from train.run.checkpoint import save_checkpoint
    from train.models.registry import build_model

    bands = resolve_bands(input_spec)
    t = channel_transform(bands, stats)
    if net is None:
        torch.manual_seed(seed)
        net = build_model(model, len(bands), 9 if no_savanna else 10, task="segmentation")
    extra = {
        "config": {"task": "segmentation", "model": model, "input": input_spec, "no_savanna": no_savanna,
                   "stats": stats, "output_stride": 16},
        "input_transform": {"bands": [b.name for b in bands], "scale": t.scale.tolist(),
                            "offset": t.offset.tolist(), "clip": [float(c) for c in t.clip]},
        "step": 0,
    }
    save_checkpoint(str(path), epoch=0, arch=model, model_state_dict=net.state_dict(), optimizer_state_dict={},
                    best_prec=0.0, extra=extra)
    return path
