"""Labels: probability vectors from lc patches, the original's label files, bad input."""

from __future__ import annotations

import json
import os
import pickle
import pickletools
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from convert.cli import cli
from convert.datafiles.labels import derive_labels, write_label_files
from convert.sample.sen12ms import synthesize, write_geotiff
from convert.shards.scan import Triplet, scan_tree
from sen12ms_common.datafiles import safepickle
from sen12ms_common.datafiles.read import LABEL_JSON, load_labels
from sen12ms_common.errors import InputError
from sen12ms_common.vocab.patches import PatchId

LABEL_FILES = [
    "IGBP_probability_labels.json", "IGBP_probability_labels.pkl",
    "single_label_IGBPfull_ClsNum.txt", "single_label_IGBPfull_ClsNum.pkl",
    "single_label_IGBPfull_OneHot.txt", "single_label_IGBPfull_OneHot.pkl",
    "single_label_IGBPsimple_ClsNum.txt", "single_label_IGBPsimple_ClsNum.pkl",
    "single_label_IGBPsimple_OneHot.txt", "single_label_IGBPsimple_OneHot.pkl",
]
REAL_LC = "ROIs1158_spring_lc_1_p30.tif"


def _counts_share(lc_path: str) -> np.ndarray:
    """The probability vector computed independently: bincount of lc band 1 over valid pixels."""
    with rasterio.open(lc_path) as ds:
        igbp = ds.read(1)
    counts = np.bincount(igbp.ravel(), minlength=18)[1:18].astype(np.float64)
    return counts / counts.sum()


def _run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.fixture()
def real_lc_tree(tmp_path: Path, real_dir: Path) -> Path:
    """The real lc patch (and real s1 patch) of ROIs1158_spring scene 1 with a generated s2 sibling."""
    root = tmp_path / "tree"
    pid = PatchId("ROIs1158_spring", 1, 30)
    for mod, name in (("lc", REAL_LC), ("s1", "ROIs1158_spring_s1_1_p30.tif")):
        (root / pid.relpath(mod)).parent.mkdir(parents=True)
        shutil.copy(real_dir / name, root / pid.relpath(mod))
    s2 = np.full((13, 256, 256), 1200, dtype=np.uint16)
    write_geotiff(root / pid.relpath("s2"), s2, 32737, (375412.3, 8116742.8))
    return root


def test_real_lc_patch_gives_the_published_vector(real_lc_tree: Path, tmp_path: Path, real_dir: Path):
    out = tmp_path / "labels"
    result = _run("labels", "--data", str(real_lc_tree), "--out", str(out), "--workers", "1", "--no-progress")
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir(out)) == sorted(LABEL_FILES)
    vec = load_labels(str(out / LABEL_JSON))["ROIs1158_spring_s2_1_p30.tif"]
    expected = np.zeros(17)
    expected[[3, 4, 7, 8]] = [0.1244, 0.5716, 0.2655, 0.0384]  # classes 4, 5, 8, 9
    np.testing.assert_allclose(vec, expected, atol=5e-5)
    np.testing.assert_array_equal(vec, _counts_share(str(real_dir / REAL_LC)))
    # Full scheme: Mixed Forests (5); simplified: Forest (1) = 0.1244 + 0.5716.
    assert (out / "single_label_IGBPfull_ClsNum.txt").read_text() == "ROIs1158_spring_s2_1_p30.tif:5\n"
    assert (out / "single_label_IGBPsimple_ClsNum.txt").read_text() == "ROIs1158_spring_s2_1_p30.tif:1\n"
    assert (out / "single_label_IGBPsimple_OneHot.txt").read_text() == \
        "ROIs1158_spring_s2_1_p30.tif:1,0,0,0,0,0,0,0,0,0\n"
    assert "labelled 1 patches" in result.output


def test_generated_tree_labels_equal_independent_counts(sample_tree: Path):
    scan = scan_tree(str(sample_tree))
    labels, problems = derive_labels(scan.triplets, workers=2, progress=False)
    assert problems == []
    assert list(labels) == sorted(t.id.filename() for t in scan.triplets)
    assert len(labels) == len(scan.triplets) == 48  # 8 scenes x 6 patches
    for t in scan.triplets:
        vec = labels[t.id.filename()]
        assert vec.dtype == np.float64 and vec.shape == (17,)
        np.testing.assert_array_equal(vec, _counts_share(t.paths["lc"]))
    serial, _ = derive_labels(scan.triplets, workers=1, progress=False)
    assert serial.keys() == labels.keys()
    assert all(np.array_equal(serial[k], labels[k]) for k in labels)


def _vec(**shares: float) -> np.ndarray:
    v = np.zeros(17)
    for cls, share in shares.items():
        v[int(cls[1:]) - 1] = share
    return v


# Hand-made vectors: ties in the full scheme, ties in the simplified scheme, simplified sums.
HAND = {
    "ROIs1970_fall_s2_7_p3.tif": _vec(c3=0.5, c5=0.5),            # full tie 3/5 -> 3; simple Forest
    "ROIs1158_spring_s2_128_p100.tif": _vec(c12=0.3, c13=0.4, c14=0.3),  # full 13; simple Croplands 0.6
    "ROIs2017_winter_s2_9_p11.tif": _vec(c10=0.5, c17=0.5),        # full tie -> 10; simple tie 4/10 -> 4
    "ROIs1868_summer_s2_146_p202.tif": _vec(c1=0.25, c6=0.25, c8=0.25, c16=0.25),  # all tied -> 1 / 1
}
FULL = {"ROIs1158_spring_s2_128_p100.tif": 13, "ROIs1868_summer_s2_146_p202.tif": 1,
        "ROIs1970_fall_s2_7_p3.tif": 3, "ROIs2017_winter_s2_9_p11.tif": 10}
SIMPLE = {"ROIs1158_spring_s2_128_p100.tif": 6, "ROIs1868_summer_s2_146_p202.tif": 1,
          "ROIs1970_fall_s2_7_p3.tif": 1, "ROIs2017_winter_s2_9_p11.tif": 4}


def test_label_files_in_the_original_formats(tmp_path: Path):
    paths = write_label_files(HAND, tmp_path / "a")
    assert [Path(p).name for p in paths] == LABEL_FILES
    names = sorted(HAND)
    out = tmp_path / "a"
    assert (out / "single_label_IGBPfull_ClsNum.txt").read_text() == "".join(f"{n}:{FULL[n]}\n" for n in names)
    assert (out / "single_label_IGBPsimple_ClsNum.txt").read_text() == "".join(f"{n}:{SIMPLE[n]}\n" for n in names)
    assert (out / "single_label_IGBPfull_ClsNum.txt").read_text().splitlines()[0] == "ROIs1158_spring_s2_128_p100.tif:13"
    onehot = (out / "single_label_IGBPfull_OneHot.txt").read_text().splitlines()
    assert onehot[0] == "ROIs1158_spring_s2_128_p100.tif:" + ",".join(["0"] * 12 + ["1"] + ["0"] * 4)
    simple_hot = (out / "single_label_IGBPsimple_OneHot.txt").read_text().splitlines()
    assert simple_hot[3] == "ROIs2017_winter_s2_9_p11.tif:0,0,0,1,0,0,0,0,0,0"

    # Pickles: the original's structures, readable by the restricted unpickler and by pickle.
    for loader in (safepickle.load, lambda p: pickle.loads(Path(p).read_bytes())):
        prob = loader(out / "IGBP_probability_labels.pkl")
        assert list(prob) == names and all(prob[n].dtype == np.float64 for n in names)
        assert all(np.array_equal(prob[n], HAND[n]) for n in names)
        assert loader(out / "single_label_IGBPfull_ClsNum.pkl") == FULL
        assert loader(out / "single_label_IGBPsimple_ClsNum.pkl") == SIMPLE
        hot = loader(out / "single_label_IGBPsimple_OneHot.pkl")
        assert hot["ROIs1158_spring_s2_128_p100.tif"].tolist() == [0, 0, 0, 0, 0, 1, 0, 0, 0, 0]
    # Only globals that NumPy 1.x has too (NumPy 2 would write numpy._core.multiarray._reconstruct).
    globals_used = {arg for op, arg, _ in pickletools.genops((out / "IGBP_probability_labels.pkl").read_bytes())
                    if op.name in ("GLOBAL", "STACK_GLOBAL")}
    assert globals_used == {"numpy ndarray", "numpy dtype"}

    # Our JSON and the compat pickle load to the same vectors.
    from_json, from_pkl = load_labels(str(out / LABEL_JSON)), load_labels(str(out / "IGBP_probability_labels.pkl"))
    assert list(from_json) == list(from_pkl) == names
    assert all(np.array_equal(from_json[n], HAND[n]) and np.array_equal(from_pkl[n], HAND[n]) for n in names)
    doc = json.loads((out / LABEL_JSON).read_text())
    assert doc["format"] == "sen12ms-igbp-probability-labels" and doc["version"] == 1 and doc["count"] == 4
    assert doc["classes"][12] == "Urban and Built-Up Lands"

    # Deterministic bytes, whatever the order of the input dict.
    write_label_files(dict(reversed(list(HAND.items()))), tmp_path / "b")
    for name in LABEL_FILES:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_load_labels_reads_the_original_pickle(tmp_path: Path):
    original = {
        "ROIs1158_spring_s2_1_p30.tif": np.array(HAND["ROIs1970_fall_s2_7_p3.tif"], dtype=np.float32),
        "ROIs1970_fall_s2_7_p3.tif": [0.0] * 16 + [1.0],
        "ROIs2017_winter_s2_9_p11.tif": np.full(17, 0.5),  # sums are not checked here
    }
    path = tmp_path / "IGBP_probability_labels.pkl"
    path.write_bytes(pickle.dumps(original, protocol=3))
    loaded = load_labels(str(path))
    assert sorted(loaded) == sorted(original)
    assert all(v.dtype == np.float64 and v.shape == (17,) for v in loaded.values())
    assert loaded["ROIs1970_fall_s2_7_p3.tif"][16] == 1.0
    np.testing.assert_array_equal(loaded["ROIs1158_spring_s2_1_p30.tif"], original["ROIs1158_spring_s2_1_p30.tif"])


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("content, message", [
    (b"{not json", "not valid JSON"),
    (json.dumps({"format": "sen12ms-igbp-probability-labels", "version": 1,
                 "labels": {"ROIs1158_spring_s2_1_p30.tif": [0.5, 0.5]}}).encode(),
     "label of 'ROIs1158_spring_s2_1_p30.tif' has 2 values, a probability label has 17"),
    (json.dumps({"format": "something-else", "labels": {}}).encode(), "JSON format 'something-else'"),
    (pickle.dumps(["ROIs1158_spring_s2_1_p30.tif"]), "expected a dict of S2 file name -> 17 probabilities, found list"),
    (pickle.dumps({"ROIs1158_spring_s2_1_p30.tif": "zero"}), "is not a numeric vector"),
    (pickle.dumps({"a": np.zeros(17)})[:40], "not a readable pickle"),
])
def test_malformed_label_files_give_one_line_errors(tmp_path: Path, content: bytes, message: str):
    path = tmp_path / ("labels.json" if content.startswith(b"{") else "labels.pkl")
    path.write_bytes(content)
    with pytest.raises(InputError) as err:
        load_labels(str(path))
    text = str(err.value)
    assert text.startswith(str(path)) and message in text and "\n" not in text
    assert isinstance(err.value, ValueError)


def test_malicious_label_pickle_is_refused_and_never_runs(tmp_path: Path):
    marker = tmp_path / "pwned"
    path = tmp_path / "IGBP_probability_labels.pkl"
    path.write_bytes(pickle.dumps({"x": _Evil(marker)}))
    with pytest.raises(InputError) as err:
        load_labels(str(path))
    assert str(err.value).startswith(f"{path}: refused to load") and "posix.system" in str(err.value)
    assert not marker.exists()
    with pytest.raises(InputError, match="no such label file"):
        load_labels(str(tmp_path / "missing.pkl"))


def _bad_tree(root: Path) -> dict[str, str]:
    """A small generated tree with one of each bad input planted; returns path -> expected reason."""
    synthesize(root, scenes=2, patches_per_scene=4, seed=11, progress=False)
    s2 = sorted(root.glob("*/s2_*/*.tif"))
    lc_of = {p: Path(str(p).replace("/s2_", "/lc_").replace("_s2_", "_lc_")) for p in s2}
    bad: dict[str, str] = {}
    # A file whose name is not SEN12MS.
    stray = s2[0].parent / "notes_p1.tif"
    stray.write_bytes(b"x")
    bad[str(stray)] = "not a SEN12MS patch name"
    # An s2 without its lc.
    lc_of[s2[0]].unlink()
    bad[str(s2[0])] = f"s2 patch without its lc sibling {lc_of[s2[0]]}"
    # An lc with IGBP value 255.
    with rasterio.open(lc_of[s2[1]], "r+") as ds:
        band = ds.read(1)
        band[10, 10] = 255
        ds.write(band, 1)
    bad[str(lc_of[s2[1]])] = "IGBP values outside 0..17: 255"
    # A truncated GeoTIFF.
    data = lc_of[s2[2]].read_bytes()
    lc_of[s2[2]].write_bytes(data[: len(data) // 3])
    bad[str(lc_of[s2[2]])] = "truncated or damaged GeoTIFF"
    # An lc without a single valid pixel.
    with rasterio.open(lc_of[s2[3]], "r+") as ds:
        ds.write(np.zeros((256, 256), dtype=np.uint8), 1)
    bad[str(lc_of[s2[3]])] = "no valid IGBP pixel"
    return bad


@pytest.mark.slow
def test_batch_lists_every_bad_input_and_keeps_the_good_ones(tmp_path: Path):
    root = tmp_path / "tree"
    bad = _bad_tree(root)
    out = tmp_path / "labels"
    result = CliRunner().invoke(cli, ["labels", "--data", str(root), "--out", str(out), "--workers", "2",
                                      "--no-progress"])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    err_lines = result.stderr.splitlines()
    listed = [line for line in err_lines if line.startswith(str(root))]
    assert len(listed) == len(bad) == 5
    for path, reason in bad.items():
        hits = [line for line in listed if line.startswith(f"{path}: ")]
        assert len(hits) == 1 and reason in hits[0], (path, listed)
    assert err_lines[-1] == ("Error: 5 input file(s) could not be used (listed above); "
                             "labels were written for the 4 good patches")
    # The good patches' labels were written, and equal independent counts.
    labels = load_labels(str(out / LABEL_JSON))
    n_triplets = len(scan_tree(str(root)).triplets)
    assert len(labels) == n_triplets - 4 == 4
    for name, vec in labels.items():
        lc = next(root.glob(f"*/lc_*/{name.replace('_s2_', '_lc_')}"))
        np.testing.assert_array_equal(vec, _counts_share(str(lc)))


def test_derive_labels_reports_instead_of_raising(tmp_path: Path):
    pid = PatchId("ROIs1158_spring", 1, 30)
    triplet = Triplet(pid, {"s2": str(tmp_path / pid.relpath("s2")), "lc": str(tmp_path / pid.relpath("lc"))})
    labels, problems = derive_labels([triplet], progress=False)
    assert labels == {}
    assert [(p.path, p.id) for p in problems] == [(str(tmp_path / pid.relpath("lc")), "ROIs1158_spring_s2_1_p30")]
    assert "file not found" in problems[0].reason and "\n" not in problems[0].reason


def test_labels_command_on_a_missing_folder(tmp_path: Path):
    result = CliRunner().invoke(cli, ["labels", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert result.stderr.strip() == f"Error: {tmp_path / 'nope'}: no such folder"
    assert not (tmp_path / "o").exists()
