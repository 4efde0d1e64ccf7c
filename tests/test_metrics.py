"""metrics.py against scikit-learn (the oracle) and against cases with known answers."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from sklearn import metrics as skm

from cifake_lib import CIFAR_CLASSES
from cifake_lib.evaluation.metrics import (
    METRIC_FIELDS,
    RECORD_FIELDS,
    _Resampler,
    apply_temperature,
    bootstrap_ci,
    choose_threshold,
    compute_metrics,
    expected_calibration_error,
    fit_temperature,
    metrics_record,
    read_predictions,
    reliability_bins,
    write_predictions,
)


def _scores(n: int, seed: int, *, decimals: int | None = None, sep: float = 0.3):
    """Labels and p_fake with some signal; rounding creates ties, which every metric must handle."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = np.clip(0.5 + sep * (y - 0.5) + rng.normal(0, 0.25, n), 0, 1)
    if decimals is not None:
        p = np.round(p, decimals)
    return y, p


# --------------------------------------------------------------------------- oracle: scikit-learn

@pytest.mark.parametrize("seed,decimals,threshold", [(0, None, 0.5), (1, 2, 0.37), (2, 1, 0.6), (3, None, 0.9)])
def test_metrics_equal_sklearn(seed, decimals, threshold):
    y, p = _scores(3000, seed, decimals=decimals)
    m = compute_metrics(y, p, threshold=threshold, n_boot=0)
    pred = (p >= threshold).astype(int)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred), abs=1e-12)
    assert m["precision"] == pytest.approx(skm.precision_score(y, pred, zero_division=0), abs=1e-12)
    assert m["recall"] == pytest.approx(skm.recall_score(y, pred, zero_division=0), abs=1e-12)
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred, zero_division=0), abs=1e-12)
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p), abs=1e-12)
    assert m["average_precision"] == pytest.approx(skm.average_precision_score(y, p), abs=1e-12)
    assert m["brier"] == pytest.approx(skm.brier_score_loss(y, p), abs=1e-12)
    assert m["confusion"] == skm.confusion_matrix(y, pred, labels=[0, 1]).tolist()
    assert m["threshold"] == threshold
    assert (m["n"], m["n_real"], m["n_fake"]) == (len(y), int((y == 0).sum()), int(y.sum()))
    nat = (p >= 0.5).astype(int)
    assert m["natural_threshold"]["accuracy"] == pytest.approx(skm.accuracy_score(y, nat), abs=1e-12)
    assert m["natural_threshold"]["f1"] == pytest.approx(skm.f1_score(y, nat, zero_division=0), abs=1e-12)
    assert m["natural_threshold"]["confusion"] == skm.confusion_matrix(y, nat, labels=[0, 1]).tolist()


def test_zero_division_matches_sklearn():
    y = np.array([0, 1, 0, 1])
    p = np.array([0.1, 0.2, 0.3, 0.4])  # nothing predicted FAKE at 0.5
    m = compute_metrics(y, p, n_boot=0)
    pred = np.zeros(4, int)
    assert m["precision"] == skm.precision_score(y, pred, zero_division=0) == 0.0
    assert m["f1"] == skm.f1_score(y, pred, zero_division=0) == 0.0


def test_resampled_statistics_equal_sklearn_on_each_resample():
    """The vectorised bootstrap computes, for each resample, what sklearn computes on it."""
    y, p = _scores(500, 4, decimals=2)
    idx = np.random.default_rng(0).integers(0, len(y), (6, len(y)))
    acc, auc = _Resampler(y, p, [0.5, 0.31])(idx)
    for r, i in enumerate(idx):
        assert auc[r] == pytest.approx(skm.roc_auc_score(y[i], p[i]), abs=1e-12)
        assert acc[r, 0] == pytest.approx(skm.accuracy_score(y[i], p[i] >= 0.5), abs=1e-12)
        assert acc[r, 1] == pytest.approx(skm.accuracy_score(y[i], p[i] >= 0.31), abs=1e-12)


def test_per_class_accuracy():
    y, p = _scores(2000, 5)
    classes = np.random.default_rng(5).integers(-1, 10, len(y))
    classes[classes == 3] = -1  # "cat" never known
    m = compute_metrics(y, p, threshold=0.45, classes=classes, n_boot=0)
    assert "cat" not in m["per_class_accuracy"]
    assert set(m["per_class_accuracy"]) == {c for k, c in enumerate(CIFAR_CLASSES) if k != 3}
    for k, name in enumerate(CIFAR_CLASSES):
        if k == 3:
            continue
        mask = classes == k
        assert m["per_class_accuracy"][name] == pytest.approx(skm.accuracy_score(y[mask], p[mask] >= 0.45))
    assert compute_metrics(y, p, classes=np.full(len(y), -1), n_boot=0)["per_class_accuracy"] == {}
    assert compute_metrics(y, p, n_boot=0)["per_class_accuracy"] == {}


def test_fields_and_json_safe():
    y, p = _scores(400, 6)
    m = compute_metrics(y, p, threshold=0.4, classes=np.arange(400) % 10, n_boot=50)
    for field in METRIC_FIELDS:
        assert field in m, field
    assert list(m)[: len(METRIC_FIELDS)] == list(METRIC_FIELDS)
    assert json.loads(json.dumps(m)) == m  # plain Python types only, no NaN
    assert all(type(v) is float for v in m["accuracy_ci95"] + m["roc_auc_ci95"])
    for key in ("accuracy", "precision", "recall", "f1", "confusion", "accuracy_ci95"):
        assert key in m["natural_threshold"]


# --------------------------------------------------------------------------- ECE

def test_ece_known_answers():
    # Confidence 0.9 everywhere, right half the time: |0.5 - 0.9| = 0.4.
    y = np.array([1, 0] * 50)
    assert expected_calibration_error(y, np.full(100, 0.9)) == pytest.approx(0.4)
    assert expected_calibration_error(1 - y, np.full(100, 0.1)) == pytest.approx(0.4)  # top label REAL
    # Perfectly calibrated bins: 80% right at confidence 0.8 (as p=0.8 and as p=0.2), 100% at 1.0.
    y_cal = np.array([1] * 8 + [0] * 2 + [0] * 8 + [1] * 2 + [1] * 5 + [0] * 5)
    p_cal = np.array([0.8] * 10 + [0.2] * 10 + [1.0] * 5 + [0.0] * 5)
    assert expected_calibration_error(y_cal, p_cal) == pytest.approx(0.0, abs=1e-12)
    # Two bins with different gaps, weighted by their share: 0.5 * 0.4 + 0.5 * 0.0.
    y2 = np.r_[y, [1] * 100]
    p2 = np.r_[np.full(100, 0.9), np.ones(100)]
    assert expected_calibration_error(y2, p2) == pytest.approx(0.2)
    assert compute_metrics(y2, p2, n_boot=0)["ece"] == pytest.approx(0.2)


def test_ece_uses_natural_decision_not_threshold():
    y, p = _scores(1000, 7)
    assert compute_metrics(y, p, threshold=0.2, n_boot=0)["ece"] == compute_metrics(y, p, n_boot=0)["ece"]


def test_reliability_bins_consistent_with_ece():
    y, p = _scores(1000, 8)
    bins = reliability_bins(y, p)
    assert bins["count"].sum() == 1000 and len(bins["count"]) == 15
    full = bins["count"] > 0
    ece = np.sum(bins["count"][full] * np.abs(bins["accuracy"][full] - bins["confidence"][full])) / 1000
    assert ece == pytest.approx(expected_calibration_error(y, p))


# --------------------------------------------------------------------------- bootstrap

def test_bootstrap_ci_contains_estimate_and_narrows_with_n():
    widths = []
    for n in (200, 5000):
        y, p = _scores(n, 9)
        m = compute_metrics(y, p, n_boot=500, seed=1)
        for key, ci in (("accuracy", m["accuracy_ci95"]), ("roc_auc", m["roc_auc_ci95"])):
            assert ci[0] <= m[key] <= ci[1], (n, key, ci)
        widths.append((m["accuracy_ci95"][1] - m["accuracy_ci95"][0], m["roc_auc_ci95"][1] - m["roc_auc_ci95"][0]))
    assert widths[1][0] < widths[0][0] / 2 and widths[1][1] < widths[0][1] / 2


def test_bootstrap_seeded_and_consistent():
    y, p = _scores(1000, 10)
    a = bootstrap_ci(y, p, threshold=0.4, n_boot=200, seed=3)
    assert a == bootstrap_ci(y, p, threshold=0.4, n_boot=200, seed=3)
    assert a != bootstrap_ci(y, p, threshold=0.4, n_boot=200, seed=4)
    m = compute_metrics(y, p, threshold=0.4, n_boot=200, seed=3)
    assert m["accuracy_ci95"] == a["accuracy"] and m["roc_auc_ci95"] == a["roc_auc"]


def test_bootstrap_fast_on_20k():
    y, p = _scores(20_000, 11)  # continuous scores: the worst case (20k distinct values)
    start = time.perf_counter()
    compute_metrics(y, p, n_boot=1000)
    assert time.perf_counter() - start < 5  # ~0.5 s here; generous for a busy CI machine


# --------------------------------------------------------------------------- degenerate inputs

def test_single_class_gives_none_not_crash():
    m = compute_metrics(np.ones(50, int), np.linspace(0, 1, 50), n_boot=100)
    assert m["roc_auc"] is None and m["roc_auc_ci95"] is None
    assert m["average_precision"] == pytest.approx(1.0)
    assert m["n_real"] == 0 and m["accuracy_ci95"] is not None
    m = compute_metrics(np.zeros(50, int), np.linspace(0, 1, 50), n_boot=100)
    assert m["roc_auc"] is None and m["average_precision"] is None
    json.dumps(m)


@pytest.mark.parametrize(
    "labels,p,match",
    [
        ([], [], "empty"),
        ([0, 1], [0.2, np.nan], "NaN"),
        ([0, 1], [0.2, 1.5], r"\[0, 1\]"),
        ([0, 1], [-0.1, 0.5], r"\[0, 1\]"),
        ([0, 1], [0.2, np.inf], r"\[0, 1\]"),
        ([0, 2], [0.2, 0.5], "labels"),
        ([0, 1, 1], [0.2, 0.5], "3 items"),
        (["REAL", "FAKE"], [0.2, 0.5], "labels"),
    ],
)
def test_bad_inputs_raise(labels, p, match):
    with pytest.raises(ValueError, match=match):
        compute_metrics(labels, p)
    with pytest.raises(ValueError, match=match):
        choose_threshold(labels, p)


def test_bad_classes_raise():
    with pytest.raises(ValueError, match="classes"):
        compute_metrics([0, 1], [0.1, 0.9], classes=[0, 10])
    with pytest.raises(ValueError, match="classes"):
        compute_metrics([0, 1], [0.1, 0.9], classes=[0])


# --------------------------------------------------------------------------- threshold

def _best_accuracy_brute_force(y, p):
    cands = np.r_[np.unique(p), 1.0 + 1e-9]
    return max(((p >= t) == y).mean() for t in cands)


@pytest.mark.parametrize("seed,decimals", [(0, None), (1, 2), (2, 1), (3, 3)])
def test_choose_threshold_maximises_accuracy(seed, decimals):
    y, p = _scores(800, seed, decimals=decimals, sep=0.2)
    t = choose_threshold(y, p)
    assert ((p >= t) == y).mean() == pytest.approx(_best_accuracy_brute_force(y, p))
    assert t not in set(p.tolist()) or decimals is not None  # a midpoint, not a score


def test_choose_threshold_midpoint_and_tie_break():
    # Separable with a gap: every cut inside (0.3, 0.7) is perfect; the midpoint is 0.5.
    assert choose_threshold([0, 0, 1, 1], [0.1, 0.3, 0.7, 0.9]) == pytest.approx(0.5)
    # Gap (0.6, 0.8): midpoint 0.7.
    assert choose_threshold([0, 0, 1, 1], [0.2, 0.6, 0.8, 0.9]) == pytest.approx(0.7)
    # Two equally good cuts, 0.25 and 0.65: the one nearer 0.5 wins.
    assert choose_threshold([0, 1, 0, 1], [0.2, 0.3, 0.6, 0.7]) == pytest.approx(0.65)
    # Shifted scores (all above 0.5): the threshold follows the data.
    assert choose_threshold([0, 0, 1, 1], [0.90, 0.91, 0.95, 0.96]) == pytest.approx(0.93)


def test_choose_threshold_extremes():
    t = choose_threshold([1, 1, 1], [0.0, 0.2, 0.4])  # all FAKE is best
    assert all(np.array([0.0, 0.2, 0.4]) >= t)
    t = choose_threshold([0, 0, 0], [0.2, 0.6, 1.0])  # all REAL is best: above every score
    assert t > 1.0 and not np.any(np.array([0.2, 0.6, 1.0]) >= t)
    a = 0.3
    b = float(np.nextafter(a, 1))  # adjacent floats: the midpoint must not land on the lower one
    t = choose_threshold([0, 1], [a, b])
    assert a < t <= b


# --------------------------------------------------------------------------- record

def test_metrics_record_fields():
    y, p = _scores(300, 12)
    r = metrics_record(y, p, threshold=0.45, classes=None, detector="probe", model="tiny", data="hf",
                       split="test", seed=7, n_boot=20, threshold_source="val")
    for field in RECORD_FIELDS:
        assert field in r, field
    assert r["split"] == "test" and r["seed"] == 7 and r["threshold_source"] == "val"
    assert r["created"].endswith("+00:00") and "T" in r["created"]
    with pytest.raises(ValueError, match="accuracy"):
        metrics_record(y, p, threshold=0.5, classes=None, detector="probe", model="m", data="d",
                       split="test", seed=0, n_boot=0, accuracy=1.0)


# --------------------------------------------------------------------------- temperature

def test_temperature_recovers_known_scale():
    rng = np.random.default_rng(13)
    z = rng.normal(0, 2, 20_000)
    y = (rng.random(len(z)) < 1 / (1 + np.exp(-z))).astype(int)  # calibrated at logit z
    p_over = 1 / (1 + np.exp(-3 * z))  # overconfident by a factor 3
    t = fit_temperature(y, p_over)
    assert t == pytest.approx(3.0, rel=0.08)
    p_fixed = apply_temperature(p_over, t)
    assert expected_calibration_error(y, p_fixed) < expected_calibration_error(y, p_over) / 3
    assert skm.log_loss(y, p_fixed) < skm.log_loss(y, p_over)


def test_apply_temperature_properties():
    p = np.array([0.0, 0.2, 0.5, 0.9, 1.0])
    np.testing.assert_allclose(apply_temperature(p, 1.0), p, atol=1e-12)
    soft = apply_temperature(p, 2.0)
    assert soft[0] == 0.0 and soft[2] == 0.5 and soft[4] == 1.0 and 0.2 < soft[1] < 0.5
    with pytest.raises(ValueError, match="temperature"):
        apply_temperature(p, 0)
    assert fit_temperature([0, 1], [0.5, 0.5]) == 1.0


# --------------------------------------------------------------------------- predictions.csv

AWKWARD_IDS = ["train/FAKE/1969 (7).jpg", "test/REAL/0010 (10).jpg", 'odd, "quoted" name.jpg', "12", "ünï cödé.png"]


def test_predictions_round_trip(tmp_path):
    rng = np.random.default_rng(14)
    p = rng.random(5)
    p[0] = 1 / 3  # needs all 17 significant digits
    labels, classes = np.array([1, 0, 1, 0, 1]), np.array([6, 9, -1, 0, 3])
    path = write_predictions(tmp_path / "predictions.csv", AWKWARD_IDS, labels, classes, p)
    assert path.read_text(encoding="utf-8").splitlines()[0] == "id,label,cifar_class,p_fake"
    got = read_predictions(path)
    assert got["id"].tolist() == AWKWARD_IDS
    np.testing.assert_array_equal(got["label"], labels)
    np.testing.assert_array_equal(got["cifar_class"], classes)
    np.testing.assert_array_equal(got["p_fake"], p)  # exact, not approximate
    assert not list(tmp_path.glob(".*tmp"))  # atomic write left nothing behind
    write_predictions(tmp_path / "noclass.csv", AWKWARD_IDS, labels, None, p)
    assert read_predictions(tmp_path / "noclass.csv")["cifar_class"].tolist() == [-1] * 5


def test_read_predictions_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("id,label,p_fake\na,1,0.5\n")
    with pytest.raises(ValueError, match=r"bad\.csv.*cifar_class"):
        read_predictions(bad)
    bad.write_text("id,label,cifar_class,p_fake\na,1,0,high\n")
    with pytest.raises(ValueError, match=r"bad\.csv.*p_fake"):
        read_predictions(bad)
    bad.write_text("id,label,cifar_class,p_fake\na,3,0,0.5\n")
    with pytest.raises(ValueError, match=r"bad\.csv.*labels"):
        read_predictions(bad)
    bad.write_text("")
    with pytest.raises(ValueError, match=r"bad\.csv.*empty"):
        read_predictions(bad)
    bad.write_text("\ufeffid,label,cifar_class,p_fake\na,1,0,0.5\n", encoding="utf-8")  # BOM is fine
    assert read_predictions(bad)["id"].tolist() == ["a"]
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        read_predictions(tmp_path / "missing.csv")
    with pytest.raises(ValueError, match="ids"):
        write_predictions(tmp_path / "x.csv", ["a"], [0, 1], None, [0.1, 0.2])
