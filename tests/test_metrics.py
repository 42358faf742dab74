"""The metric set: every value against sklearn (or the definition, where sklearn has none)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from sen12ms_common.vocab.igbp import IGBP_NAMES, SIMPLE_NAMES
from train.tasks.metrics import ORIGINAL_SCALAR_KEYS, compute_metrics, predict, scalar_metrics


def _sk(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def _check_against_sklearn(m: dict, y: np.ndarray, probs: np.ndarray, pred: np.ndarray, names) -> None:
    for key, fn in (("Prec", skm.precision_score), ("Rec", skm.recall_score), ("F1", skm.f1_score)):
        for prefix, avg in (("macro", "macro"), ("micro", "micro"), ("sample", "samples")):
            assert m[prefix + key] == pytest.approx(_sk(fn, y, pred, average=avg, zero_division=0), abs=1e-12)
    for prefix, avg in (("macro", "macro"), ("micro", "micro"), ("sample", "samples")):
        assert m[prefix + "F2"] == pytest.approx(
            _sk(skm.fbeta_score, y, pred, beta=2, average=avg, zero_division=0), abs=1e-12)
    assert m["HammingLoss"] == pytest.approx(skm.hamming_loss(y, pred), abs=1e-12)
    assert m["subsetAcc"] == pytest.approx(skm.accuracy_score(y, pred), abs=1e-12)
    assert m["coverageError"] == pytest.approx(skm.coverage_error(y, probs), abs=1e-12)
    assert m["rankLoss"] == pytest.approx(skm.label_ranking_loss(y, probs), abs=1e-12)
    assert m["labelAvgPrec"] == pytest.approx(skm.label_ranking_average_precision_score(y, probs), abs=1e-12)
    assert m["clsReport"] == _sk(skm.classification_report, y, pred, target_names=list(names),
                                 output_dict=True, zero_division=0)
    # The original's Accuracy_score, from its definition, cell by cell.
    n, c = y.shape
    per_class = [np.mean([(pred[i, j] == y[i, j]) for i in range(n)]) for j in range(c)]
    assert m["macroAcc"] == pytest.approx(np.mean(per_class), abs=1e-12)
    assert m["microAcc"] == pytest.approx(1.0 - skm.hamming_loss(y, pred), abs=1e-12)
    assert m["sampleAcc"] == pytest.approx(
        _sk(skm.jaccard_score, y, pred, average="samples", zero_division=0), abs=1e-12)
    top = [int(np.argmax(probs[i])) for i in range(n)]
    assert m["oneError"] == pytest.approx(np.mean([y[i, top[i]] == 0 for i in range(n)]), abs=1e-12)
    assert m["numSamples"] == n
    json.dumps(m, allow_nan=False)  # every value is plain JSON


def test_multi_label_metrics_equal_sklearn_on_random_predictions():
    rng = np.random.default_rng(0)
    n, c = 300, 10
    y = (rng.random((n, c)) < 0.25).astype(np.float32)
    y[:7] = 0  # samples without any true class (possible with a high threshold)
    y[:, 7] = 0  # a class that never occurs (Snow/Ice)
    probs = np.clip(0.6 * y + 0.55 * rng.random((n, c)), 0, 1).astype(np.float32)
    probs[0] = 0.1  # one empty sample also predicted empty
    m = compute_metrics(y, probs, "multi_label", SIMPLE_NAMES)
    pred = (probs >= 0.5).astype(int)
    _check_against_sklearn(m, y.astype(int), probs.astype(np.float64), pred, SIMPLE_NAMES)

    assert np.array_equal(m["multilabel_conf_mat"], skm.multilabel_confusion_matrix(y.astype(int), pred))
    tn_tp = [m["multilabel_conf_mat"][j][0][0] + m["multilabel_conf_mat"][j][1][1] for j in range(c)]
    assert m["class-wise Acc"] == pytest.approx([t / n for t in tn_tp], abs=1e-12)
    assert m["AverageAcc"] == pytest.approx(np.mean(m["class-wise Acc"]), abs=1e-12)
    # Overall accuracy: mean over samples of |pred AND true| / |pred OR true| (0/0 -> 0).
    inter = (pred * y).sum(1)
    union = ((pred + y) > 0).sum(1)
    per_sample = [inter[i] / union[i] if union[i] else 0.0 for i in range(n)]
    assert m["OverallAcc"] == pytest.approx(np.mean(per_sample), abs=1e-12)
    assert m["OverallAcc"] == pytest.approx(
        _sk(skm.jaccard_score, y.astype(int), pred, average="samples", zero_division=0), abs=1e-12)
    assert "conf_mat" not in m


def test_single_label_metrics_equal_sklearn_and_count_absent_classes_as_zero():
    rng = np.random.default_rng(1)
    n, c = 400, 17
    present = [k for k in range(c) if k not in (2, 14)]  # 3 and 15 have no samples
    true_idx = rng.choice(present, size=n)
    logits = rng.normal(size=(n, c))
    logits[np.arange(n), true_idx] += rng.normal(1.5, 1.0, size=n)  # better than chance
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = np.eye(c, dtype=np.float32)[true_idx]
    m = compute_metrics(y, probs, "single_label", IGBP_NAMES)
    pred_idx = probs.argmax(1)
    pred = np.eye(c, dtype=int)[pred_idx]
    _check_against_sklearn(m, y.astype(int), probs, pred, IGBP_NAMES)

    acc = skm.accuracy_score(true_idx, pred_idx)
    assert m["microF1"] == pytest.approx(acc) and m["sampleAcc"] == pytest.approx(acc)
    assert m["oneError"] == pytest.approx(1 - acc)
    conf = np.array(m["conf_mat"])
    assert conf.shape == (c, c)
    assert np.allclose(conf[present].sum(1), 1.0)
    assert np.all(conf[[2, 14]] == 0)
    assert np.allclose(conf, skm.confusion_matrix(true_idx, pred_idx, labels=np.arange(c), normalize="true"))
    # Average accuracy: mean per-class recall over ALL 17 classes, the two absent ones as 0.
    balanced = _sk(skm.balanced_accuracy_score, true_idx, pred_idx)  # averages over present classes only
    assert m["AverageAcc"] == pytest.approx(balanced * len(present) / c, abs=1e-12)
    assert m["AverageAcc"] == pytest.approx(m["macroRec"], abs=1e-12)
    assert "OverallAcc" not in m and "multilabel_conf_mat" not in m


def test_small_cases_by_hand():
    names = ["a", "b", "c"]
    y = np.array([[1, 0, 0], [0, 0, 0], [1, 1, 0]])
    probs = np.array([[0.9, 0.2, 0.1], [0.1, 0.4, 0.2], [0.7, 0.3, 0.5]])  # 0.5 counts as present
    m = compute_metrics(y, probs, "multi_label", names)
    # The empty sample predicted empty: an exact match (subsetAcc), but 0/0 -> 0 in OverallAcc.
    assert m["OverallAcc"] == pytest.approx((1 + 0 + 1 / 3) / 3)
    assert m["subsetAcc"] == pytest.approx(2 / 3)
    assert m["HammingLoss"] == pytest.approx(2 / 9)
    assert m["oneError"] == pytest.approx(1 / 3)  # the empty sample's top class is never true

    y1 = np.array([[1, 0, 0], [0, 1, 0], [0, 1, 0], [1, 0, 0]])
    p1 = np.array([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5], [0.1, 0.8, 0.1], [0.2, 0.7, 0.1]])
    m1 = compute_metrics(y1, p1, "single_label", names)
    # Row 0 ties a/b: the first class wins. Class c has no samples.
    assert m1["conf_mat"] == [[0.5, 0.5, 0.0], [0.0, 0.5, 0.5], [0.0, 0.0, 0.0]]
    assert m1["AverageAcc"] == pytest.approx((0.5 + 0.5 + 0) / 3)
    assert m1["microPrec"] == pytest.approx(0.5)


def test_predict_rules():
    p = np.array([[0.5, 0.49999, 0.9], [0.3, 0.3, 0.1]])
    assert predict(p, "multi_label").tolist() == [[1, 0, 1], [0, 0, 0]]
    assert predict(p, "single_label").tolist() == [[0, 0, 1], [1, 0, 0]]  # tie -> first class
    with pytest.raises(ValueError):
        predict(p, "multi")


def test_scalar_metrics_are_the_original_keys_plus_accuracies():
    rng = np.random.default_rng(2)
    y = (rng.random((20, 4)) < 0.5).astype(int)
    m = compute_metrics(y, rng.random((20, 4)), "multi_label", list("abcd"))
    s = scalar_metrics(m)
    assert list(s) == list(ORIGINAL_SCALAR_KEYS) + ["AverageAcc", "OverallAcc"]
    assert all(type(v) is float for v in s.values())
    ys = np.eye(4, dtype=int)[rng.integers(0, 4, 20)]
    s1 = scalar_metrics(compute_metrics(ys, rng.random((20, 4)), "single_label", list("abcd")))
    assert list(s1) == list(ORIGINAL_SCALAR_KEYS) + ["AverageAcc", "AverageAccPresent"]


@pytest.mark.parametrize("y, probs, label_type, names, match", [
    (np.array([[1, 1, 0]]), np.ones((1, 3)) / 3, "single_label", "abc", "exactly one 1"),
    (np.array([[1, 0, 0]]), np.ones((1, 2)) / 2, "multi_label", "abc", "N x C"),
    (np.array([[1, 0, 0]]), np.ones((1, 3)) / 3, "multi_label", "ab", "class names"),
    (np.array([[2, 0, 0]]), np.ones((1, 3)) / 3, "multi_label", "abc", "0/1"),
    (np.array([[1, 0, 0]]), np.array([[np.nan, 0, 0]]), "multi_label", "abc", "NaN"),
    (np.zeros((0, 3)), np.zeros((0, 3)), "multi_label", "abc", "no samples"),
])
def test_bad_input_is_refused(y, probs, label_type, names, match):
    with pytest.raises(ValueError, match=match):
        compute_metrics(y, probs, label_type, list(names))
