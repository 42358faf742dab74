"""--augment's symmetry codes: what each code does to a patch, the same on images (uint16) and
masks (uint8), and applied by the input transform before normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sen12ms_common.vocab.bands import resolve_bands
from sen12ms_common.vocab.inputs import channel_transform
from train.data.symmetry import SYMMETRIES, apply_symmetries, symmetric_view
from train.run.device import InputTransform


def test_each_code_is_the_symmetry_its_view_writes_and_all_eight_differ():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 65535, (3, 8, 8), dtype=np.uint16)
    batch = torch.from_numpy(np.stack([a] * SYMMETRIES))
    moved = apply_symmetries(batch, torch.arange(SYMMETRIES, dtype=torch.uint8))
    assert moved.dtype == torch.uint16 and batch.numpy().tolist() == [a.tolist()] * SYMMETRIES  # input untouched
    for code in range(SYMMETRIES):
        want = np.zeros_like(a)
        symmetric_view(want, code)[...] = a
        assert np.array_equal(moved[code].numpy(), want), code
    assert len({moved[c].numpy().tobytes() for c in range(SYMMETRIES)}) == SYMMETRIES
    # Known cases: code 1 mirrors left-right, 2 top-bottom, 4 transposes, 3 turns by 180 degrees.
    assert np.array_equal(moved[1].numpy(), a[:, :, ::-1]) and np.array_equal(moved[2].numpy(), a[:, ::-1])
    assert np.array_equal(moved[4].numpy(), a.transpose(0, 2, 1))
    assert np.array_equal(moved[3].numpy(), np.rot90(a, 2, axes=(1, 2)))


def test_masks_move_as_their_images_and_no_codes_is_no_move():
    values = torch.arange(2 * 2 * 4 * 4, dtype=torch.int32).reshape(2, 2, 4, 4)
    image, mask = values.numpy().astype(np.uint16), values[:, 0].numpy().astype(np.uint8)
    image, mask = torch.from_numpy(image), torch.from_numpy(mask)
    codes = torch.tensor([5, 6], dtype=torch.uint8)
    moved = apply_symmetries(image, codes)[:, 0].numpy().astype(np.uint8)
    assert np.array_equal(moved, apply_symmetries(mask, codes).numpy())
    assert apply_symmetries(image, None) is image
    with pytest.raises(ValueError, match="square"):
        apply_symmetries(torch.zeros(1, 1, 4, 6, dtype=torch.uint16), torch.tensor([4]))


def test_the_input_transform_applies_the_codes_before_normalising():
    bands = resolve_bands("s1s2")
    to_input = InputTransform(channel_transform(bands, "official"), torch.device("cpu"))
    x = torch.from_numpy(np.random.default_rng(1).integers(0, 4000, (4, 12, 16, 16), dtype=np.uint16))
    codes = torch.tensor([0, 3, 4, 7], dtype=torch.uint8)
    assert torch.equal(to_input(x, codes), apply_symmetries(to_input(x), codes))
    assert torch.equal(to_input(x, codes)[0], to_input(x)[0])
