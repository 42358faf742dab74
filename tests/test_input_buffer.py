"""The CPU float conversion into a reused buffer (`InputTransform(reuse=True)`): the same values as
a fresh conversion and the numpy reference, one buffer across batches (a short last batch uses
its first rows), a new one when the batch shape changes, and the callers that consume each batch
before the next use it."""

from __future__ import annotations

import numpy as np
import torch

from sen12ms_common.vocab.bands import resolve_bands
from sen12ms_common.vocab.inputs import channel_transform
from train.run.device import InputTransform

CPU = torch.device("cpu")


def to_input_transform():
    return channel_transform(resolve_bands("s1s2"), "official")


def _batch(seed: int, n: int, channels: int = 12, size: int = 16) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(0, 12000, (n, channels, size, size), dtype=np.uint16))


def test_reused_buffer_holds_the_same_values_as_a_fresh_conversion_and_the_reference():
    for stats in ("official", "none"):  # "none" clips S2 at 10000: the clip runs on the buffer too
        transform = channel_transform(resolve_bands("s1s2"), stats)
        fresh, reused = InputTransform(transform, CPU), InputTransform(transform, CPU, reuse=True)
        for seed, n in ((0, 5), (1, 5), (2, 3)):
            x = _batch(seed, n)
            got = reused(x)
            assert got.dtype == torch.float32 and got.shape == x.shape
            assert torch.equal(got, fresh(x))
            np.testing.assert_allclose(got.numpy(), transform.apply(x.numpy()), rtol=1e-6, atol=1e-6)


def test_one_buffer_across_batches_a_short_last_batch_in_its_first_rows_and_a_new_one_per_shape():
    to_input = InputTransform(channel_transform(resolve_bands("s1s2"), "official"), CPU, reuse=True)
    first = to_input(_batch(0, 4))
    ptr = first.data_ptr()
    second = to_input(_batch(1, 4))
    assert second.data_ptr() == ptr  # the contract: a batch is valid until the next call
    assert torch.equal(first, second)  # the first batch now shows the second's values
    short = to_input(_batch(2, 3))
    assert short.data_ptr() == ptr and short.shape[0] == 3 and short.is_contiguous()
    other = to_input(_batch(3, 4, size=8))  # another patch size: another buffer
    assert other.shape == (4, 12, 8, 8) and other.data_ptr() != ptr
    bigger = to_input(_batch(4, 6, size=8))  # more rows than the buffer holds: a bigger one
    assert bigger.shape[0] == 6 and torch.equal(bigger, InputTransform(to_input_transform(), CPU)(_batch(4, 6, size=8)))


def test_without_reuse_every_batch_is_a_new_tensor():
    to_input = InputTransform(channel_transform(resolve_bands("s1s2"), "official"), CPU)
    a, b = to_input(_batch(0, 2)), to_input(_batch(1, 2))
    assert a.data_ptr() != b.data_ptr() and not torch.equal(a, b)


def test_symmetry_codes_and_a_reused_buffer_give_the_fresh_result():
    transform = channel_transform(resolve_bands("s1s2"), "official")
    reused, fresh = InputTransform(transform, CPU, reuse=True), InputTransform(transform, CPU)
    x, codes = _batch(5, 4), torch.tensor([0, 3, 4, 7], dtype=torch.uint8)
    assert torch.equal(reused(x, codes), fresh(x, codes))


def test_the_training_setup_converts_into_a_reused_buffer(sample_shards):
    """The training loop (and evaluation) consume each batch before asking for the next, so
    make_setup's transform reuses its buffer on the CPU."""
    from train.run.setup import make_setup

    setup = make_setup(shards=str(sample_shards), model_name="SmallCNN", input_spec="s1s2", label_type="single_label",
                       igbp="simple", threshold=0.1, stats="official", device="cpu")
    assert setup.input_fn.reuse
    x = _batch(0, 2, size=32)
    assert setup.input_fn(x).data_ptr() == setup.input_fn(_batch(1, 2, size=32)).data_ptr()
