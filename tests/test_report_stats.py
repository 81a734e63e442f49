"""The report's statistics against hand-worked values and literal slow loops."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy.stats import spearmanr, ttest_rel

from bench.report.stats import (
    Stat,
    bootstrap_mean_ci,
    center_similarity,
    holm,
    paired_test,
    permutation_spearman,
    spearman_pairs,
)


def test_holm_hand_worked():
    # sorted: 0.005 x4 = 0.02; 0.01 x3 = 0.03; 0.03 x2 = 0.06; 0.04 x1 = 0.04 -> monotone 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    out = holm([0.02, math.nan, 0.01])  # NaN is not part of the family
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.02)


def test_paired_interval_hand_worked_and_test_matches_scipy():
    a, b = {0: 3.0, 1: 5.0, 2: 7.0}, {0: 2.0, 1: 3.0, 2: 4.0}  # differences 1, 2, 3
    test = paired_test(a, b)
    half = 4.302652729911275 / math.sqrt(3)  # t(0.975, 2) * sd 1 / sqrt(3)
    assert (test.mean_diff, test.low, test.high) == pytest.approx((2.0, 2.0 - half, 2.0 + half))
    expected = ttest_rel([3, 5, 7], [2, 3, 4])
    assert test.p == pytest.approx(expected.pvalue) and test.t == pytest.approx(expected.statistic)
    assert paired_test({0: 1.0}, {0: 0.5}).note.startswith("n<2")
    assert "identical differences" in paired_test({0: 2.0, 1: 3.0}, {0: 1.0, 1: 2.0}).note


def test_stat_interval_and_text():
    stat = Stat.of([1.0, 2.0, 3.0])
    assert stat.half_width == pytest.approx(4.302652729911275 / math.sqrt(3))
    assert stat.ci_text() == f"2.00 [{2 - stat.half_width:.2f}, {2 + stat.half_width:.2f}]"
    assert math.isnan(Stat.of([1.0]).half_width) and Stat.of([]).text() == "n/a"


def test_bootstrap_interval_is_seeded_and_about_the_normal_one():
    values = np.random.default_rng(1).normal(0.6, 0.2, 500)
    first, again = bootstrap_mean_ci(values, "x"), bootstrap_mean_ci(values, "x")
    assert first == again  # the same label draws the same resamples
    se = values.std(ddof=1) / math.sqrt(len(values))
    assert first[0] < values.mean() < first[1]
    assert first[1] - first[0] == pytest.approx(2 * 1.96 * se, rel=0.1)
    with_gaps = np.concatenate([values, [math.nan] * 10])  # queries left out under "drop"
    assert bootstrap_mean_ci(with_gaps, "x") == first


def test_spearman_over_class_pairs_matches_scipy():
    rng = np.random.default_rng(0)
    centers = np.where(rng.random((6, 16)) < 0.5, 1, -1)
    sim = rng.random((6, 6))
    sim = (sim + sim.T) / 2
    i, j = np.triu_indices(6, 1)
    hamming = np.array([[np.sum(centers[p] != centers[q]) for q in range(6)] for p in range(6)])
    expected = spearmanr(1 - hamming[i, j] / 16, sim[i, j]).statistic
    assert spearman_pairs(center_similarity(centers), sim) == pytest.approx(expected)


def test_permutation_test_against_exhaustive_enumeration():
    """Five classes: all 120 assignments enumerated with a literal loop give the exact p; the
    seeded Monte Carlo p must be close to it."""
    rng = np.random.default_rng(3)
    centers = np.where(rng.random((5, 12)) < 0.5, 1, -1)
    sim_c = center_similarity(centers)
    similarity = sim_c + rng.normal(0, 0.05, (5, 5))
    similarity = (similarity + similarity.T) / 2
    i, j = np.triu_indices(5, 1)
    observed = spearmanr(sim_c[i, j], similarity[i, j]).statistic
    null = []
    for perm in itertools.permutations(range(5)):
        permuted = sim_c[np.ix_(perm, perm)]
        null.append(spearmanr(permuted[i, j], similarity[i, j]).statistic)
    null = np.array(null)
    exact_upper = np.mean(null >= observed - 1e-12)
    result = permutation_spearman([(centers, similarity)], "five", permutations=4000)
    assert result.observed == pytest.approx(observed)
    assert result.p_upper == pytest.approx(exact_upper, abs=0.015)
    assert result.null_mean == pytest.approx(null.mean(), abs=0.03)


def test_permutation_test_is_undefined_for_equidistant_centers():
    from scipy.linalg import hadamard

    centers = hadamard(16)[:10]
    similarity = np.random.default_rng(0).random((10, 10))
    assert permutation_spearman([(centers, similarity)], "csq") is None
