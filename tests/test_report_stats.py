"""The report's statistics against hand-worked values and literal slow loops."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
from scipy.stats import spearmanr, ttest_rel

from bench.report.stats import (
    Stat,
    center_similarity,
    centers_test,
    equivalence_test,
    holm_adjusted,
    mantel_run,
    paired_test,
    power_at,
    query_bootstrap_ci,
    seeds_for_power,
    shifted_test,
)


def test_holm_hand_worked():
    # sorted: 0.005 x4 = 0.02; 0.01 x3 = 0.03; 0.03 x2 = 0.06; 0.04 x1 = 0.04 -> monotone 0.06
    assert holm_adjusted([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm_adjusted([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    out = holm_adjusted([0.02, math.nan, 0.01])  # NaN is not part of the family
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.02)


def test_holm_is_holm_not_holm_sidak():
    """statsmodels' default is Holm-Sidak: 1 - (1 - 0.01)^3 = 0.029701, Holm gives 0.03."""
    assert holm_adjusted([0.01, 0.5, 0.6])[0] == pytest.approx(0.03, abs=1e-12)


def test_one_sided_and_shifted_tests_hand_worked():
    """Differences 1, 2, 3: mean 2, sd 1, se 1/sqrt(3); t against 0 is 2 sqrt(3); against the
    shifted null 1.5 it is 0.5 sqrt(3)."""
    test = paired_test({0: 3.0, 1: 5.0, 2: 7.0}, {0: 2.0, 1: 3.0, 2: 4.0})
    t = 2 * math.sqrt(3)
    from scipy.stats import t as t_dist

    assert test.p_greater == pytest.approx(t_dist.sf(t, 2)) and test.p_less == pytest.approx(t_dist.cdf(t, 2))
    assert test.lcb == pytest.approx(2 - 2.919985580355516 / math.sqrt(3))  # t(0.95, 2)
    shifted = shifted_test([1.0, 2.0, 3.0], 1.5)
    assert shifted.p_greater == pytest.approx(t_dist.sf(0.5 * math.sqrt(3), 2))
    assert shifted.p_less == pytest.approx(t_dist.cdf(0.5 * math.sqrt(3), 2))


def test_seeds_for_power_matches_the_noncentral_t():
    """Effect 0.3017/0.4101 (spec section 2): the smallest n whose one-sided power at alpha .05
    reaches 0.8, by the noncentral t with a literal loop."""
    from scipy.stats import nct
    from scipy.stats import t as t_dist

    effect = 0.3017 / 0.4101
    n = next(k for k in range(2, 200)
             if nct.sf(t_dist.ppf(0.95, k - 1), k - 1, effect * math.sqrt(k)) >= 0.8)
    assert seeds_for_power(0.3017, 0.4101) == n
    assert power_at(0.3017, 0.4101, n) >= 0.8 > power_at(0.3017, 0.4101, n - 1)
    assert math.isinf(seeds_for_power(-0.5, 1.0))
    assert seeds_for_power(20.0, 0.1) == 2  # off the solver's bracket: two seeds suffice


def test_equivalence_needs_both_one_sided_tests():
    """TOST at +-0.5: differences near 0 with small spread pass; a mean of 0.4 with spread does not."""
    a = [1.0, 2.0, 3.0, 4.0, 5.0]
    near = [0.05, -0.05, 0.0, 0.02, -0.02]
    inside = equivalence_test(a, [x - d for x, d in zip(a, near, strict=True)], 0.5)
    outside = equivalence_test(a, [x - d for x, d in zip(a, [0.1, 0.7, 0.4, 0.2, 0.6], strict=True)], 0.5)
    assert inside.shown and not outside.shown
    from scipy.stats import ttest_1samp

    d = np.array([0.1, 0.7, 0.4, 0.2, 0.6])
    expected = max(ttest_1samp(d, -0.5, alternative="greater").pvalue,
                   ttest_1samp(d, 0.5, alternative="less").pvalue)
    assert outside.p == pytest.approx(expected)


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
    first, again = query_bootstrap_ci(values, "x"), query_bootstrap_ci(values, "x")
    assert first == again  # the same label draws the same resamples
    se = values.std(ddof=1) / math.sqrt(len(values))
    assert first[0] < values.mean() < first[1]
    assert first[1] - first[0] == pytest.approx(2 * 1.96 * se, rel=0.1)
    with_gaps = np.concatenate([values, [math.nan] * 10])  # queries left out under "drop"
    assert query_bootstrap_ci(with_gaps, "x") == first


def test_mantel_rho_over_class_pairs_matches_scipy():
    rng = np.random.default_rng(0)
    centers = np.where(rng.random((6, 16)) < 0.5, 1, -1)
    sim = rng.random((6, 6))
    sim = (sim + sim.T) / 2
    i, j = np.triu_indices(6, 1)
    hamming = np.array([[np.sum(centers[p] != centers[q]) for q in range(6)] for p in range(6)])
    expected = spearmanr(1 - hamming[i, j] / 16, sim[i, j]).statistic
    assert mantel_run(centers, sim, "rho", permutations=99).rho == pytest.approx(expected, abs=1e-12)


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
    # five classes have 120 assignments: scipy enumerates them all (an exact test)
    result = mantel_run(centers, similarity, "five", permutations=4000)
    assert result.rho == pytest.approx(observed)
    assert result.p == pytest.approx(exact_upper, abs=1e-9)
    assert result.null_mean == pytest.approx(null.mean(), abs=1e-9)


def _rational_ranks(values: list[float]) -> list[Fraction]:
    """Average ranks (1-based), ties sharing the mean of their positions, in exact arithmetic."""
    ordered = sorted(values)
    return [Fraction(2 * ordered.index(v) + 1 + ordered.count(v), 2) for v in values]


@pytest.mark.parametrize("centers, similarity", [
    # four classes whose every assignment ties with the observed one: the exact p is 1
    ([[-1, 1], [1, -1], [-1, -1], [1, 1]],
     [[2, 2, 3, 3], [2, 0, 0, 0], [3, 0, 2, 1], [3, 0, 1, 0]]),
    # five classes, rho near 0 with many tied assignments (found where the float statistic failed)
    ([[-1, 1], [1, -1], [-1, 1], [-1, -1], [-1, 1]],
     [[0, 0, 1, 3, 2], [0, 0, 3, 1, 1], [1, 3, 2, 3, 1], [3, 1, 3, 4, 3], [2, 1, 1, 3, 4]]),
])
def test_permutation_p_counts_exact_ties_near_zero(centers, similarity):
    """Every assignment enumerated in rational arithmetic: an assignment as extreme as the
    observed one (ties included) counts. The centred rank cross product decides, since every
    assignment shares the ranks' sums and norms. A float statistic near rho = 0 miscounted the
    ties (p 0.33 instead of 1 on the first case), differently on AVX2 and AVX-512 CPUs."""
    centers, similarity = np.array(centers), np.array(similarity, dtype=float)
    size = len(centers)
    pairs = list(itertools.combinations(range(size), 2))
    hamming = [[int(np.sum(centers[p] != centers[q])) for q in range(size)] for p in range(size)]
    rank_y = _rational_ranks([similarity[p, q] for p, q in pairs])
    mean_y = sum(rank_y) / len(rank_y)

    def cross(order: tuple[int, ...]) -> Fraction:
        rank_x = _rational_ranks([-hamming[order[p]][order[q]] for p, q in pairs])
        mean_x = sum(rank_x) / len(rank_x)
        return sum((a - mean_x) * (b - mean_y) for a, b in zip(rank_x, rank_y, strict=True))

    observed = cross(tuple(range(size)))
    null = [cross(order) for order in itertools.permutations(range(size))]
    exact_p = Fraction(sum(value >= observed for value in null), len(null))
    result = mantel_run(centers, similarity, "ties", permutations=10_000)
    assert result.p == float(exact_p)
    i, j = np.triu_indices(size, 1)
    expected_rho = spearmanr(center_similarity(centers)[i, j], similarity[i, j]).statistic
    assert result.rho == pytest.approx(expected_rho, abs=1e-12)


def test_centers_are_graded_over_seeds_not_over_permutations():
    """Three runs with strongly planted similarity: the graded p is the one-sample t of
    rho - null mean over the runs, not a permutation p floored at 1/(B+1)."""
    rng = np.random.default_rng(7)
    runs = []
    for _ in range(3):
        centers = np.where(rng.random((8, 16)) < 0.5, 1, -1)
        similarity = center_similarity(centers) + rng.normal(0, 0.02, (8, 8))
        runs.append((centers, (similarity + similarity.T) / 2))
    result = centers_test(runs, "planted", permutations=999)
    from scipy.stats import ttest_1samp

    shifts = [r.rho - r.null_mean for r in result.runs]
    assert result.test.p_greater == pytest.approx(ttest_1samp(shifts, 0, alternative="greater").pvalue)
    assert result.n == 3 and all(p <= 2 / 1000 for p in result.run_p)


def test_permutation_test_is_undefined_for_equidistant_centers():
    from scipy.linalg import hadamard

    centers = hadamard(16)[:10]
    similarity = np.random.default_rng(0).random((10, 10))
    assert mantel_run(centers, similarity, "csq") is None
    assert centers_test([(centers, similarity)], "csq") is None
