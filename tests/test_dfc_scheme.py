"""DFC2020 targets, the baseline's band groups and its normalisation (issue 16, items 1 and 2).

The baseline's facts are written out here from its code/datasets.py (lukasliebel/dfc2020_baseline)
and reimplemented in plain numpy, independently of sen12ms_common.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from sen12ms_common.errors import InputError
from sen12ms_common.format.sample import quantize_s1
from sen12ms_common.vocab import bands, dfc, igbp
from sen12ms_common.vocab.inputs import STATS_CHOICES, channel_transform

# code/datasets.py DFC2020_CLASSES: index = IGBP value, entry = DFC2020 class (0 = none).
BASELINE_DFC2020_CLASSES = [0, 1, 1, 1, 1, 1, 2, 2, 3, 3, 4, 5, 6, 7, 6, 8, 9, 10]
# code/utils.py: class names and colour map (the 11th colour draws ignored pixels).
BASELINE_NAMES = ["Forest", "Shrubland", "Savanna", "Grassland", "Wetlands", "Croplands", "Urban/Built-up",
                  "Snow/Ice", "Barren", "Water"]
BASELINE_COLOURS = ["#009900", "#c6b044", "#fbff13", "#b6ff05", "#27ff87", "#c24f44", "#a5a5a5", "#69fff8",
                    "#f9ffa4", "#1c0dff", "#ffffff"]
# code/datasets.py band indices (1-based into the 13-band S2 file).
BASELINE_S2_HR, BASELINE_S2_MR, BASELINE_S2_LR = [2, 3, 4, 8], [5, 6, 7, 9, 12, 13], [1, 10, 11]


def baseline_load_lc(values: np.ndarray, no_savanna: bool, igbp_input: bool = True) -> np.ndarray:
    """The baseline's load_lc after reading band 1, step by step."""
    lc = np.take(BASELINE_DFC2020_CLASSES, values) if igbp_input else values.astype(np.int64)
    if no_savanna:
        lc[lc == 3] = 0
        lc[lc > 3] -= 1
    lc -= 1
    lc[lc == -1] = 255
    return lc


def baseline_labels_to_dfc(pred: np.ndarray, no_savanna: bool) -> np.ndarray:
    """The baseline's labels_to_dfc (code/utils.py): training classes -> DFC2020 1..10."""
    out = np.copy(pred)
    if no_savanna:
        for i in range(2, 9):
            out[pred == i] = i + 1
    out[pred != 255] += 1
    return out


def test_importing_dfc_does_not_import_torch_or_rasterio():
    code = ("import sys, sen12ms_common.vocab.dfc, sen12ms_common.vocab.bands; "
            "print(sorted(m for m in ('torch', 'rasterio') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_vocabulary_lives_once_and_equals_the_baselines_table():
    assert list(igbp.DFC2020_OF_IGBP) == BASELINE_DFC2020_CLASSES
    assert list(dfc.DfcScheme().names) == BASELINE_NAMES
    assert list(dfc.DfcScheme().colours) == BASELINE_COLOURS[:10]
    no_sav = dfc.DfcScheme(savanna=False)
    assert no_sav.num_classes == 9 and "Savanna" not in no_sav.names
    assert no_sav.dfc_classes == (1, 2, 4, 5, 6, 7, 8, 9, 10)
    assert list(no_sav.colours) == [c for i, c in enumerate(BASELINE_COLOURS[:10]) if i != 2]


@pytest.mark.parametrize("savanna", [True, False])
def test_every_igbp_value_maps_as_the_baseline_maps_it(savanna):
    values = np.arange(18, dtype=np.uint8)
    expected = baseline_load_lc(values, no_savanna=not savanna)
    got = dfc.igbp_to_dfc(values, savanna=savanna)
    assert got.dtype == np.uint8 and got.tolist() == expected.tolist()
    # Written out once more, so that a change to both sides cannot pass unnoticed.
    if savanna:
        assert got.tolist() == [255, 0, 0, 0, 0, 0, 1, 1, 2, 2, 3, 4, 5, 6, 5, 7, 8, 9]
    else:
        assert got.tolist() == [255, 0, 0, 0, 0, 0, 1, 1, 255, 255, 2, 3, 4, 5, 4, 6, 7, 8]


def test_values_outside_igbp_are_ignored_and_other_dtypes_are_read():
    assert (dfc.igbp_to_dfc(np.arange(18, 256, dtype=np.uint8)) == 255).all()
    assert dfc.igbp_to_dfc(np.array([[12, 13]], dtype=np.int64)).tolist() == [[5, 6]]
    with pytest.raises(InputError, match="0..255"):
        dfc.igbp_to_dfc(np.array([300]))
    with pytest.raises(InputError, match="float"):
        dfc.igbp_to_dfc(np.array([1.0]))


@pytest.mark.parametrize("savanna", [True, False])
def test_generated_masks(savanna):
    rng = np.random.default_rng(16)
    masks = rng.integers(0, 18, size=(5, 256, 256), dtype=np.uint8)
    got = dfc.igbp_to_dfc(masks, savanna)
    assert got.shape == masks.shape
    assert np.array_equal(got, baseline_load_lc(masks, no_savanna=not savanna))
    # DFC2020 masks (dfc band 1, already in DFC classes 1..10, 0 = none).
    dfc_masks = rng.integers(0, 11, size=(3, 256, 256), dtype=np.uint8)
    assert np.array_equal(dfc.dfc_to_train(dfc_masks, savanna),
                          baseline_load_lc(dfc_masks, no_savanna=not savanna, igbp_input=False))


def test_real_lc_patch(real_dir):
    import rasterio

    with rasterio.open(real_dir / "ROIs1158_spring_lc_1_p30.tif") as ds:
        lc = ds.read(1)
    for savanna in (True, False):
        got = dfc.igbp_to_dfc(lc, savanna)
        assert np.array_equal(got, baseline_load_lc(lc, no_savanna=not savanna))
    # IGBP 4, 5 (forest), 8, 9 (savanna): about 69.6 % forest, 30.4 % savanna (reference README).
    full = dfc.igbp_to_dfc(lc)
    assert set(np.unique(full).tolist()) == {0, 2}
    assert (full == 2).mean() == pytest.approx(0.266 + 0.038, abs=0.002)
    folded = dfc.igbp_to_dfc(lc, savanna=False)
    assert ((folded == 255) == (full == 2)).all() and set(np.unique(folded).tolist()) == {0, 255}


@pytest.mark.parametrize("savanna", [True, False])
def test_predictions_back_to_dfc_classes_and_colour_table(savanna):
    scheme = dfc.DfcScheme(savanna)
    pred = np.append(np.arange(scheme.num_classes), 255).astype(np.uint8)
    back = dfc.train_to_dfc(pred, savanna)
    assert back.tolist() == baseline_labels_to_dfc(pred.astype(np.int64), not savanna).tolist()
    assert np.array_equal(dfc.dfc_to_train(back, savanna), pred)  # a round trip
    table = scheme.colormap()
    assert sorted(table) == list(scheme.dfc_classes) + [255]
    assert table[1] == (0x00, 0x99, 0x00, 255) and table[10] == (0x1c, 0x0d, 0xff, 255)
    assert table[255] == (255, 255, 255, 255)
    assert (3 in table) == savanna


# --- inputs: the baseline's band groups ---------------------------------------------------------

def _s2_indices(spec: str) -> list[int]:
    return [r.index + 1 for r in bands.resolve_bands(spec) if r.modality == "s2"]


@pytest.mark.parametrize("hr, mr, lr, s1", [(h, m, lo, s) for h in (0, 1) for m in (0, 1) for lo in (0, 1)
                                            for s in (0, 1) if h or m or lo or s])
def test_every_group_combination_reads_the_baselines_channels(hr, mr, lr, s1):
    # The baseline: sorted(selected S2 indices), then both S1 bands (get_ninputs channels).
    s2_idx = sorted((BASELINE_S2_HR if hr else []) + (BASELINE_S2_MR if mr else []) + (BASELINE_S2_LR if lr else []))
    name = "+".join(g for g, on in (("s2hr", hr), ("s2mr", mr), ("s2lr", lr), ("s1", s1)) if on)
    refs = bands.resolve_bands(name)
    assert name in bands.INPUT_SETS
    assert _s2_indices(name) == s2_idx
    assert [r.name for r in refs if r.modality == "s1"] == (["VV", "VH"] if s1 else [])
    assert all(r.modality == "s2" for r in refs[:len(s2_idx)])
    assert len(refs) == len(s2_idx) + 2 * s1
    # Groups given in another order name the same set.
    assert bands.resolve_bands("+".join(reversed(name.upper().split("+")))) == refs


def test_group_names_extend_the_input_sets_without_changing_them():
    assert list(bands.INPUT_SETS)[:5] == ["rgb", "s2", "s1", "s1s2", "rgbs1"]
    assert bands.INPUT_SETS["s1"] == ("VV", "VH")
    # The baseline's published models: S2 high + medium (10 channels), and with S1 (12).
    assert bands.INPUT_SETS["s2hr+s2mr"] == bands.INPUT_SETS["s2"]
    assert bands.INPUT_SETS["s2hr+s2mr+s1"] == bands.INPUT_SETS["s1s2"]
    with pytest.raises(InputError, match=r"unknown input set 's2hr\+s2xx'.*s2hr\+s2mr\+s1"):
        bands.resolve_bands("s2hr+s2xx")
    with pytest.raises(InputError, match="unknown input set"):
        bands.resolve_bands("s2hr+s2hr")


# --- inputs: the baseline's normalisation -------------------------------------------------------

def baseline_s2(s2: np.ndarray) -> np.ndarray:
    """code/datasets.py load_s2 after reading."""
    x = np.clip(s2.astype(np.float32), 0, 10000)
    return (x / 10000).astype(np.float32)


def baseline_s1(s1: np.ndarray) -> np.ndarray:
    """code/datasets.py load_s1 after reading."""
    x = np.clip(np.nan_to_num(s1.astype(np.float32)), -25, 0)
    return (x / 25 + 1).astype(np.float32)


def _stored(s2: np.ndarray, s1: np.ndarray, refs) -> np.ndarray:
    q = quantize_s1(s1)  # what the converter stores
    return np.stack([s2[r.index] if r.modality == "s2" else q[r.index] for r in refs])


def _expected(s2: np.ndarray, s1: np.ndarray, refs) -> np.ndarray:
    b2, b1 = baseline_s2(s2), baseline_s1(s1)
    return np.stack([b2[r.index] if r.modality == "s2" else b1[r.index] for r in refs])


def test_dfc2020_stats_is_a_choice():
    assert "dfc2020" in STATS_CHOICES and STATS_CHOICES[:3] == ("official", "manifest", "none")
    with pytest.raises(InputError, match="dfc2020"):
        channel_transform(bands.resolve_bands("s2hr+s2lr"), "official")


def test_dfc2020_stats_on_extreme_values():
    refs = bands.resolve_bands("s2hr+s2mr+s2lr+s1")
    rng = np.random.default_rng(3)
    s2 = rng.integers(0, 65536, size=(13, 32, 32), dtype=np.uint16)
    s2[:, 0, :4] = (0, 1, 10000, 65535)
    s1 = rng.uniform(-40, 8, size=(2, 32, 32)).astype(np.float32)
    s1[:, 0, :6] = (np.nan, -np.inf, np.inf, -25.0, 0.0, -12.5)
    got = channel_transform(refs, "dfc2020").apply(_stored(s2, s1, refs))
    want = _expected(s2, s1, refs)
    # S2 exact up to float32 rounding; S1 within half a quantisation step (25 / 65535 / 2 dB) / 25.
    n2 = sum(r.modality == "s2" for r in refs)
    np.testing.assert_allclose(got[:n2], want[:n2], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got[n2:], want[n2:], rtol=0, atol=25 / 65535 / 2 / 25 + 1e-6)
    assert got[:n2].min() >= 0 and got[:n2].max() <= 1 and got[n2:].min() >= 0 and got[n2:].max() <= 1
    assert np.array_equal(got, channel_transform(refs, "none").apply(_stored(s2, s1, refs)))


def test_dfc2020_stats_on_real_patches(real_dir):
    import rasterio

    with rasterio.open(real_dir / "sen12mscr_ROIs1158_spring_s2_101_p30.tif") as ds:
        s2 = ds.read()
    with rasterio.open(real_dir / "ROIs1158_spring_s1_1_p30.tif") as ds:
        s1 = ds.read()
    assert s1.min() < -25  # the real patch needs the lower clip: the stored codes hold it
    for spec in ("s2hr+s2mr+s1", "s2hr", "s2lr+s1"):
        refs = bands.resolve_bands(spec)
        got = channel_transform(refs, "dfc2020").apply(_stored(s2, s1, refs))
        np.testing.assert_allclose(got, _expected(s2, s1, refs), rtol=1e-6, atol=25 / 65535 / 2 / 25 + 1e-6)
