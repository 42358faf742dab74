"""The end of a run (issue 15, item 4): the summary table, metrics.csv with one row per epoch
(carried over by --resume), the training curves and the confusion matrix as PNG, and
AverageAcc beside AverageAccPresent; the same scores and PNG from `python -m train.evaluate`."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread
from sklearn.metrics import balanced_accuracy_score

from sen12ms_common.format.manifest import load_manifest
from train.tasks.metrics import compute_metrics

pytestmark = pytest.mark.slow  # training runs through the CLI

REPO = Path(__file__).resolve().parents[1]
TRAIN = ("--model", "SmallCNN", "--input", "rgb", "--label-type", "single_label", "--batch-size", "8",
         "--stats", "manifest", "--seed", "4", "--epochs", "2", "--no-progress")


def cli(module: str, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    return proc


def png_shape(path: Path) -> tuple[int, ...]:
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n"), path
    return imread(path).shape


@pytest.fixture(scope="module")
def resumed_run(sample_shards: Path, tmp_path_factory) -> tuple[Path, str, str, int]:
    """A run stopped one step into epoch 1 by --max-steps, then resumed to its end."""
    run = tmp_path_factory.mktemp("report") / "run"
    steps = -(-load_manifest(str(sample_shards)).samples("train") // 8)
    first = cli("train", "--shards", str(sample_shards), *TRAIN, "--run-dir", str(run), "--max-steps", str(steps + 1))
    (ckpt,) = (run / "checkpoints").glob("*_checkpoint.pth")
    second = cli("train", "--resume", str(ckpt), "--max-steps", "0")
    return run, first.stdout, second.stdout, steps


def test_metrics_csv_has_one_row_per_epoch_across_a_resume(resumed_run):
    run, first, second, steps = resumed_run
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    ts = sorted((run / "logs").glob("*_arguments.txt"))[0].name[:15]  # the first launch names the run
    # The partial epoch 2 of the first launch is replaced by the whole epoch of the second; epochs
    # are counted from 1 in the file as in the log.
    assert [(r["timestamp"], int(r["epoch"]), int(r["step"])) for r in rows] == [(ts, 1, steps), (ts, 2, 2 * steps)]
    lines = [ln for ln in (first + second).splitlines() if re.match(r"epoch \d/2: train loss", ln)]
    assert [ln.split(":")[0] for ln in lines] == ["epoch 1/2", "epoch 2/2", "epoch 2/2"]  # cut, then resumed
    assert f"epoch 2, batch 1, step {steps + 1}" in second  # where the resumed run goes on
    for row, line in zip(rows, (lines[0], lines[2])):
        assert f"train loss {float(row['train_loss']):.6f}" in line
        assert f"val loss {float(row['val_loss']):.6f} microF1 {float(row['val_microF1']):.4f}" in line
        assert (row["best"] == "1") == line.endswith("(best)")
        assert 0 <= float(row["val_AverageAcc"]) <= float(row["val_AverageAccPresent"]) <= 1
    assert int(rows[0]["train_samples"]) == int(rows[1]["train_samples"]) > 0
    height, width, _ = png_shape(run / "training_curves.png")
    assert width > height > 200


def test_the_summary_table_ends_the_run_and_the_log(resumed_run):
    run, _, second, _ = resumed_run
    scores = json.loads((run / "test_scores.json").read_text())
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    best = [r for r in rows if r["best"] == "1"][-1]
    summary = second[second.index("summary: "):].splitlines()
    assert summary[0].startswith(f"summary: best epoch {best['epoch']} (val microF1 {float(best['val_microF1']):.4f})")
    assert summary[1].split() == ["loss", "microF1", "sampleF1", "microPrec", "macroF1", "AverageAcc",
                                  "AverageAccPresent"]
    val, test = summary[2].split(), summary[3].split()
    assert val[:3] == ["val", "(epoch", f"{best['epoch']})"] and val[3] == f"{float(best['val_loss']):.4f}"
    assert val[4] == f"{float(best['val_microF1']):.4f}" and val[-1] == f"{float(best['val_AverageAccPresent']):.4f}"
    assert test[0] == "test" and test[2:] == [f"{scores[k]:.4f}" for k in ("microF1", "sampleF1", "microPrec",
                                                                           "macroF1", "AverageAcc",
                                                                           "AverageAccPresent")]
    absent = [c for c, r in scores["clsReport"].items() if isinstance(r, dict) and r.get("support") == 0]
    assert absent, "the sample test split lacks classes: the note must explain AverageAcc"
    classes = "class" if len(absent) == 1 else "classes"
    note = f"AverageAcc counts the {len(absent)} {classes} absent from the test split as 0"
    present = "class" if len(absent) == 9 else "classes"
    assert summary[4].startswith(note) and f"over the {10 - len(absent)} {present} present" in summary[4]
    log = next((run / "logs").glob("*_train.log")).read_text()
    assert log.endswith("\n".join(summary) + "\n")


def test_test_scores_give_average_accuracy_both_ways_and_a_confusion_png(resumed_run):
    run, _, _, _ = resumed_run
    scores = json.loads((run / "test_scores.json").read_text())
    pred = np.load(run / "test_predictions.npz")
    true_idx, pred_idx = pred["y_true"].argmax(1), pred["y_pred"].argmax(1)
    conf = np.array(scores["conf_mat"])
    assert scores["AverageAcc"] == pytest.approx(np.trace(conf) / 10)  # the original's: absent classes count 0
    assert scores["AverageAccPresent"] == pytest.approx(balanced_accuracy_score(true_idx, pred_idx))
    assert scores["AverageAccPresent"] > scores["AverageAcc"]
    height, width, _ = png_shape(run / "test_confusion.png")
    assert height > 300 and width > 300


def test_evaluate_out_writes_the_same_scores_and_pngs(resumed_run, sample_shards: Path, tmp_path: Path):
    run, _, _, _ = resumed_run
    (best,) = (run / "checkpoints").glob("*_model_best.pth")
    out = tmp_path / "eval"
    proc = cli("train.evaluate", "--shards", str(sample_shards), "--checkpoint", str(best), "--out", str(out),
               "--no-progress")
    assert sorted(p.name for p in out.iterdir()) == ["test_confusion.png", "test_predictions.npz", "test_scores.json"]
    assert json.loads((out / "test_scores.json").read_text()) == json.loads((run / "test_scores.json").read_text())
    assert (out / "test_confusion.png").read_bytes() == (run / "test_confusion.png").read_bytes()
    table = proc.stdout.splitlines()[2:]
    assert table[0].split()[-1] == "AverageAccPresent" and table[1].split()[0] == "test"
    assert table[2].startswith("AverageAcc counts the ")


def test_multi_label_runs_plot_per_class_outcomes(sample_shards: Path, tmp_path: Path):
    run = tmp_path / "multi"
    proc = cli("train", "--shards", str(sample_shards), "--model", "SmallCNN", "--input", "rgb", "--batch-size", "8",
               "--stats", "manifest", "--epochs", "1", "--max-steps", "2", "--no-progress", "--run-dir", str(run))
    scores = json.loads((run / "test_scores.json").read_text())
    assert "AverageAccPresent" not in scores and "OverallAcc" in scores
    assert proc.stdout.splitlines()[-3].split()[-1] == "OverallAcc"  # table header; no note under the table
    assert proc.stdout.splitlines()[-1].startswith("test ")
    png_shape(run / "test_confusion.png")
    assert len(list(csv.DictReader((run / "metrics.csv").open()))) == 1


def test_average_accuracy_over_present_classes_by_hand():
    y = np.eye(3, dtype=int)[[0, 1, 1, 0]]  # class c has no sample
    p = np.array([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5], [0.1, 0.8, 0.1], [0.2, 0.7, 0.1]])
    m = compute_metrics(y, p, "single_label", ["a", "b", "c"])
    assert m["AverageAcc"] == pytest.approx((0.5 + 0.5 + 0) / 3)
    assert m["AverageAccPresent"] == pytest.approx((0.5 + 0.5) / 2)


def test_scores_equal_in_every_epoch_are_one_curve_with_a_note():
    from train.run.report import _merge_equal

    same = [0.3, 0.5, None]
    series, note = _merge_equal({"microF1": same, "sampleF1": list(same), "microPrec": list(same),
                                 "macroF1": [0.1, 0.2, None]})
    assert series == {"val microF1 = sampleF1 = microPrec": same, "val macroF1": [0.1, 0.2, None]}
    assert note == ("sampleF1 and microPrec equal microF1 in every epoch (one label per sample: each is the "
                    "accuracy): drawn as one line")
    # Multi-label scores differ: a line each, no note.
    series, note = _merge_equal({"microF1": [0.3, 0.5], "sampleF1": [0.31, 0.5]})
    assert list(series) == ["val microF1", "val sampleF1"] and note == ""


def test_segmentation_confusion_marks_absent_classes_and_has_a_colour_bar(tmp_path: Path):
    from sen12ms_common.vocab.dfc import DfcScheme
    from train.tasks.segreport import confusion_png

    scheme = DfcScheme(savanna=False)
    n = len(scheme.names)
    cm = np.full((n, n), 5, dtype=np.int64)
    path = tmp_path / "c.png"
    path.write_bytes(confusion_png({"confusion": cm.tolist(), "AA": 0.1, "mIoU": 0.1}, scheme, "test"))
    full = imread(path)
    cm[2] = 0  # no pixel of the third class
    path.write_bytes(confusion_png({"confusion": cm.tolist(), "AA": 0.1, "mIoU": 0.1}, scheme, "test"))
    absent = imread(path)
    def grey(image: np.ndarray) -> int:  # pixels of the "absent" row's #e6e6e6
        return int(np.all(np.abs(image[..., :3] - 230 / 255) < 0.01, axis=-1).sum())

    assert grey(absent) > grey(full) + 10_000
    # The colour bar: a column of the Blues map's darkest blue (vmax 1) right of the matrix.
    dark = np.all(np.abs(absent[..., :3] - np.array([8, 48, 107]) / 255) < 0.03, axis=-1)
    assert dark[:, absent.shape[1] // 2:].any()
