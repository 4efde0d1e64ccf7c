"""Paired tests (evaluation/stats.py) against independent computations: scipy, sklearn, definitions."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest, norm
from sklearn.metrics import roc_auc_score

from cifake_lib.evaluation.stats import (
    compare_pair,
    delong_test,
    mcnemar_exact,
    paired_bootstrap,
    wilson_interval,
)


def correlated_scores(n: int = 300, seed: int = 0, ties: bool = False):
    """Labels and two detectors' p_fake sharing a per-image component (a paired design)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    shared = rng.normal(0, 1, n)
    za = 1.2 * (2 * y - 1) + shared + rng.normal(0, 0.8, n)
    zb = 0.7 * (2 * y - 1) + shared + rng.normal(0, 0.8, n)
    pa, pb = 1 / (1 + np.exp(-za)), 1 / (1 + np.exp(-zb))
    if ties:  # coarse scores: many ties, as a small CNN or a zero-shot head can give
        pa, pb = np.round(pa, 1), np.round(pb, 1)
    return y, pa, pb


@pytest.mark.parametrize("metric", ["roc_auc", "accuracy"])
def test_paired_bootstrap_matches_a_loop_over_the_same_indices(metric):
    y, pa, pb = correlated_scores(ties=True)
    ta, tb = 0.45, 0.6
    n_boot, seed = 300, 7
    got = paired_bootstrap(y, pa, pb, metric=metric, threshold_a=ta, threshold_b=tb, n_boot=n_boot, seed=seed)

    # Independent: one index matrix, sklearn per resample, both detectors on the same rows.
    idx = np.random.default_rng(seed).integers(0, len(y), size=(n_boot, len(y)))
    diffs = []
    for row in idx:
        yy = y[row]
        if metric == "roc_auc":
            diffs.append(roc_auc_score(yy, pa[row]) - roc_auc_score(yy, pb[row]))
        else:
            diffs.append(np.mean((pa[row] >= ta) == yy) - np.mean((pb[row] >= tb) == yy))
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    full = (roc_auc_score(y, pa) - roc_auc_score(y, pb) if metric == "roc_auc"
            else np.mean((pa >= ta) == y) - np.mean((pb >= tb) == y))
    assert got["difference"] == pytest.approx(full, abs=1e-12)
    assert got["ci_low"] == pytest.approx(lo, abs=1e-12)
    assert got["ci_high"] == pytest.approx(hi, abs=1e-12)
    assert got["se"] == pytest.approx(np.std(diffs, ddof=1), abs=1e-12)


def test_paired_interval_is_narrower_than_unpaired_when_scores_are_correlated():
    """The point of pairing: a shared per-image component cancels in the difference."""
    y, pa, pb = correlated_scores(n=400, seed=3)
    paired = paired_bootstrap(y, pa, pb, metric="roc_auc", n_boot=500, seed=0)
    rng = np.random.default_rng(1)
    unpaired = []
    for _ in range(500):  # each detector on its own resample: ignores the pairing
        i, j = rng.integers(0, len(y), len(y)), rng.integers(0, len(y), len(y))
        unpaired.append(roc_auc_score(y[i], pa[i]) - roc_auc_score(y[j], pb[j]))
    assert paired["se"] < 0.8 * np.std(unpaired, ddof=1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mcnemar_equals_exact_binomial(seed):
    y, pa, pb = correlated_scores(n=120, seed=seed)
    got = mcnemar_exact(y, pa, pb, threshold_a=0.5, threshold_b=0.55)
    ra, rb = (pa >= 0.5) == y, (pb >= 0.55) == y
    b, c = int(np.sum(ra & ~rb)), int(np.sum(~ra & rb))
    assert (got["b"], got["c"]) == (b, c)
    assert got["p_value"] == pytest.approx(binomtest(b, b + c, 0.5).pvalue, rel=1e-12)


def test_mcnemar_without_discordant_pairs_is_one():
    y, pa, _ = correlated_scores(n=50)
    assert mcnemar_exact(y, pa, pa)["p_value"] == 1.0


def _delong_by_definition(y, pa, pb):
    """DeLong et al. (1988) from the pairwise kernel psi, O(m n): an independent reference."""
    out = []
    for p in (pa, pb):
        x, z = p[y == 1][:, None], p[y == 0][None, :]
        psi = (x > z) + 0.5 * (x == z)
        out.append((psi.mean(), psi.mean(axis=1), psi.mean(axis=0)))
    (auc_a, v10a, v01a), (auc_b, v10b, v01b) = out
    m, n = len(v10a), len(v01a)
    s10, s01 = np.cov(np.stack([v10a, v10b])), np.cov(np.stack([v01a, v01b]))
    s = s10 / m + s01 / n
    se = np.sqrt(s[0, 0] + s[1, 1] - 2 * s[0, 1])
    z = (auc_a - auc_b) / se
    return auc_a, auc_b, se, 2 * norm.sf(abs(z))


@pytest.mark.parametrize("ties", [False, True])
def test_delong_matches_its_definition_and_sklearn(ties):
    y, pa, pb = correlated_scores(n=250, seed=5, ties=ties)
    got = delong_test(y, pa, pb)
    auc_a, auc_b, se, p = _delong_by_definition(y, pa, pb)
    assert got["auc_a"] == pytest.approx(roc_auc_score(y, pa), abs=1e-12)
    assert got["auc_b"] == pytest.approx(roc_auc_score(y, pb), abs=1e-12)
    assert (got["auc_a"], got["auc_b"]) == pytest.approx((auc_a, auc_b), abs=1e-12)
    assert got["se"] == pytest.approx(se, rel=1e-9)
    assert got["p_value"] == pytest.approx(p, rel=1e-9)


def test_delong_standard_error_agrees_with_the_paired_bootstrap():
    y, pa, pb = correlated_scores(n=600, seed=11)
    d = delong_test(y, pa, pb)
    boot = paired_bootstrap(y, pa, pb, metric="roc_auc", n_boot=2000, seed=0)
    assert d["se"] == pytest.approx(boot["se"], rel=0.15)


def test_delong_identical_detectors():
    y, pa, _ = correlated_scores(n=80)
    d = delong_test(y, pa, pa)
    assert d["difference"] == 0.0 and d["p_value"] == 1.0


def test_wilson_interval_against_scipy():
    got = wilson_interval(7, 20)
    ref = binomtest(7, 20).proportion_ci(confidence_level=0.95, method="wilson")
    assert got == pytest.approx((ref.low, ref.high), abs=1e-12)
    assert wilson_interval(0, 0) is None


def test_compare_pair_rows():
    y, pa, pb = correlated_scores(n=200, seed=2)
    rows = compare_pair(y, pa, pb, threshold_a=0.5, threshold_b=0.5, n_boot=200)
    by = {r["metric"]: r for r in rows}
    assert by["accuracy"]["test"] == "McNemar exact" and by["roc_auc"]["test"] == "DeLong"
    assert by["roc_auc"]["p_value"] == pytest.approx(delong_test(y, pa, pb)["p_value"])
    for r in rows:
        assert r["ci_low"] <= r["difference"] <= r["ci_high"]
        assert r["difference"] == pytest.approx(r["value_a"] - r["value_b"])


def test_unequal_lengths_are_refused():
    y, pa, pb = correlated_scores(n=50)
    with pytest.raises(ValueError, match="same images"):
        paired_bootstrap(y, pa, pb[:-1])
