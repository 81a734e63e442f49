"""Graded verdicts (verdicts v3) on fabricated records: every grade is reached, Holm runs over a
card's family (against the claim), and each comparison carries its difference, 95 % interval,
one-sided and adjusted p, n and the paper's figure."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import ttest_rel

from bench.report import (
    CONSISTENT,
    CONTRADICTED,
    MIXED,
    NOT_MEASURABLE,
    SUPPORTED,
    evaluate,
)

FIVE = (0, 1, 2, 3, 4)


def runs(make_record, method, bits, values, **options):
    """One record per seed 0, 1, ... with the given mAP values (fractions)."""
    return [make_record(method, bits, seed, value, **options) for seed, value in enumerate(values)]


def verdict(records, claims, claim_id):
    return {v.id: v for v in evaluate(records, claims)}[claim_id]


# Per-seed mAP values: CRH clearly ahead (differences vary, so t is defined).
AHEAD = ([0.70, 0.71, 0.69, 0.72, 0.70], [0.60, 0.62, 0.61, 0.60, 0.61])
# CRH slightly behind with large spread: differences -0.01, +0.03, -0.04, +0.01, -0.03.
NOISY_BEHIND = ([0.70, 0.74, 0.66, 0.71, 0.67], [0.71, 0.71, 0.70, 0.70, 0.70])
# CRH clearly behind.
BEHIND = ([0.60, 0.62, 0.61, 0.60, 0.61], [0.70, 0.71, 0.69, 0.72, 0.70])


def _beats(make_record, grade):
    if grade == NOT_MEASURABLE:
        return runs(make_record, "crh", 16, AHEAD[0]) + runs(make_record, "csq", 32, AHEAD[1])
    seeds = 3 if grade == CONSISTENT else 5
    records = runs(make_record, "crh", 16, AHEAD[0][:seeds]) + runs(make_record, "csq", 16, AHEAD[1][:seeds])
    second = {SUPPORTED: AHEAD, CONSISTENT: AHEAD, MIXED: NOISY_BEHIND, CONTRADICTED: BEHIND}[grade]
    records += runs(make_record, "crh", 32, second[0][:seeds])
    return records + runs(make_record, "csq", 32, second[1][:seeds])


def test_beats_baselines_reaches_every_grade(make_record, claims):
    for grade in (SUPPORTED, CONSISTENT, MIXED, CONTRADICTED, NOT_MEASURABLE):
        result = verdict(_beats(make_record, grade), claims, "crh-beats-baselines")
        assert result.verdict == grade, (grade, result.summary)
        assert result.summary
        if grade != NOT_MEASURABLE:
            assert len(result.comparisons) == 2 and all(c.counted for c in result.comparisons)


def test_consistent_names_the_seed_requirement(make_record, claims):
    """Three seeds with a large, significant gain: not 'supported', which needs five; the
    grade says provisional."""
    result = verdict(_beats(make_record, CONSISTENT), claims, "crh-beats-baselines")
    assert all(c.significant for c in result.comparisons)
    assert result.provisional and result.label.endswith("(provisional)")
    assert "n < 5" in result.by_card[0].reason


def test_mixed_and_contradicted_differ_by_significance(make_record, claims):
    mixed = verdict(_beats(make_record, MIXED), claims, "crh-beats-baselines")
    against = next(c for c in mixed.comparisons if c.bits == 32)
    assert against.difference < 0 and not against.significant_against
    contradicted = verdict(_beats(make_record, CONTRADICTED), claims, "crh-beats-baselines")
    against = next(c for c in contradicted.comparisons if c.bits == 32)
    assert against.difference < 0 and against.significant_against
    assert "significantly against" in contradicted.by_card[0].reason


def test_comparison_numbers_are_the_paired_statistics(make_record, claims):
    result = verdict(_beats(make_record, MIXED), claims, "crh-beats-baselines")
    c16, c32 = sorted(result.comparisons, key=lambda c: c.bits)
    a, b = np.array(NOISY_BEHIND[0]) * 100, np.array(NOISY_BEHIND[1]) * 100
    diffs = a - b
    assert c32.n == 5 and c32.seeds == FIVE
    assert c32.difference == pytest.approx(diffs.mean())
    half = 2.7764451051977987 * diffs.std(ddof=1) / math.sqrt(5)  # t(0.975, 4)
    assert (c32.low, c32.high) == pytest.approx((diffs.mean() - half, diffs.mean() + half))
    assert c32.p == pytest.approx(ttest_rel(a, b).pvalue)
    assert c32.p_for == pytest.approx(ttest_rel(a, b, alternative="greater").pvalue)
    assert c32.p_against == pytest.approx(ttest_rel(a, b, alternative="less").pvalue)
    # Holm over the family's p against the claim: the smaller doubled, the larger kept (monotone)
    small, large = sorted([c16.p_against, c32.p_against])
    adjusted = {small: min(1.0, 2 * small)}
    adjusted[large] = max(adjusted[small], large)
    assert c16.p_holm == pytest.approx(adjusted[c16.p_against])
    assert c32.p_holm == pytest.approx(adjusted[c32.p_against])
    assert math.isnan(c16.relative)  # no classify-then-hash floor in the table: no relative gain
    assert "6.6 %" in c16.paper


def test_a_conjunction_is_an_intersection_union_test(make_record, claims):
    """Four cells, each one-sided p < .05 at five seeds: the IUT rejects without adjustment
    (IUT p = the largest one-sided p). The old rule (Holm over all four) would not reject."""
    values = ([0.700, 0.705, 0.724, 0.697, 0.713], [0.690, 0.700, 0.704, 0.696, 0.705])
    records = []
    for bits in (16, 32):
        records += runs(make_record, "crh", bits, values[0])
        for baseline in ("csq", "dpn"):
            records += runs(make_record, baseline, bits, values[1])
    result = verdict(records, claims, "crh-beats-baselines")
    a, b = np.array(values[0]) * 100, np.array(values[1]) * 100
    one_sided = ttest_rel(a, b, alternative="greater").pvalue
    assert 0.0125 < one_sided < 0.05  # significant alone, not after Holm x4
    (card,) = result.by_card
    assert card.iut_p == pytest.approx(one_sided) and len(card.family) == 4
    assert result.verdict == SUPPORTED, card.reason


def test_one_seed_and_failed_seeds_are_listed_not_counted(make_record, claims):
    records = _beats(make_record, SUPPORTED)
    records += runs(make_record, "crh", 64, [0.5]) + runs(make_record, "csq", 64, [0.9])  # one seed only
    records += runs(make_record, "dpn", 16, AHEAD[1][:4])
    records.append(make_record("dpn", 16, 4, status="failed"))
    result = verdict(records, claims, "crh-beats-baselines")
    # a family cell that cannot be tested cannot reject: the conjunction is not supported
    assert result.verdict == CONSISTENT and "not counted" in result.by_card[0].reason, result.summary
    single = next(c for c in result.comparisons if c.bits == 64)
    assert not single.counted and "1 common seed" in single.note and math.isnan(single.p_holm)
    assert "no per-query data" in single.interval
    failed = next(c for c in result.comparisons if "DPN" in c.what)
    assert not failed.counted and "failed" in failed.note


def test_one_seed_comparison_gets_a_query_bootstrap_interval(make_record, claims):
    rng = np.random.default_rng(5)
    crh, csq = make_record("crh", 16, 0, 0.7), make_record("csq", 16, 0, 0.6)
    per_query = rng.uniform(0.4, 1.0, 400)
    crh["metrics"]["per_query_ap"] = per_query.tolist()
    csq["metrics"]["per_query_ap"] = (per_query - 0.1 + rng.normal(0, 0.05, 400)).tolist()
    comparison = verdict([crh, csq], claims, "crh-beats-baselines").comparisons[0]
    assert comparison.interval.startswith("bootstrap over queries") and not comparison.counted
    diffs = (np.asarray(crh["metrics"]["per_query_ap"]) - np.asarray(csq["metrics"]["per_query_ap"])) * 100
    se = diffs.std(ddof=1) / math.sqrt(len(diffs))
    assert comparison.low < diffs.mean() < comparison.high
    assert comparison.high - comparison.low == pytest.approx(2 * 1.96 * se, rel=0.15)


# ------------------------------------------------------------------------------------------
# The other claims
# ------------------------------------------------------------------------------------------


def _reassignment(make_record, grade):
    seeds = 3 if grade == CONSISTENT else 5
    on, off = {SUPPORTED: AHEAD, CONSISTENT: AHEAD, CONTRADICTED: BEHIND, NOT_MEASURABLE: AHEAD}[grade]
    records = runs(make_record, "crh", 32, on[:seeds])
    other = {"reassign": "never"} if grade != NOT_MEASURABLE else {"solver": "greedy"}
    return records + runs(make_record, "crh", 32, off[:seeds], settings=other)


def _heads(make_record, grade):
    multi, single = {SUPPORTED: AHEAD, CONTRADICTED: BEHIND, NOT_MEASURABLE: AHEAD}[grade]
    records = runs(make_record, "crh", 32, multi)
    if grade != NOT_MEASURABLE:
        records += runs(make_record, "crh", 32, single, settings={"heads": 1})
    return records


def _with_work(record, total):
    from bench.training.work import WORK_VERSION

    record["work"] = {"version": WORK_VERSION, "stages": {}, "total_flops": float(total)}
    return record


def _cost(make_record, grade):
    """Counted work: SHC 1.10 x CRH (supported), 0.90 x (contradicted), 1.02 x (mixed). The
    wall times point the other way, so a grade on wall time would differ."""
    crh = [_with_work(make_record("crh", 16, s, 0.7, train_seconds=20.0 + s), 1e12) for s in FIVE]
    if grade == NOT_MEASURABLE:
        return crh + runs(make_record, "csq", 16, AHEAD[1])
    ratio = {SUPPORTED: 1.10, CONTRADICTED: 0.90, MIXED: 1.02}[grade]
    train = [10.0, 11.5, 9.0, 10.5, 12.0] if grade == SUPPORTED else [30.0, 31.5, 33.0, 30.5, 32.0]
    shc = [make_record("shc", 16, s, 0.6, train_seconds=train[s], stages={"classifier": 2.0}) for s in FIVE]
    return crh + [_with_work(r, ratio * 1e12) for r in shc]


@pytest.mark.parametrize("claim_id, scenario, grades", [
    ("reassignment-gain", _reassignment, (SUPPORTED, CONSISTENT, CONTRADICTED, NOT_MEASURABLE)),
    ("multi-head-helps", _heads, (SUPPORTED, CONTRADICTED, NOT_MEASURABLE)),
    ("two-stage-costs-more", _cost, (SUPPORTED, CONTRADICTED, MIXED, NOT_MEASURABLE)),
])
def test_ablation_and_cost_claims_reach_their_grades(make_record, claims, claim_id, scenario, grades):
    for grade in grades:
        result = verdict(scenario(make_record, grade), claims, claim_id)
        assert result.verdict == grade, (claim_id, grade, result.summary)


def test_reassignment_gain_is_set_beside_the_papers_range(make_record, claims):
    result = verdict(_reassignment(make_record, SUPPORTED), claims, "reassignment-gain")
    (comparison,) = result.comparisons
    assert comparison.difference == pytest.approx((np.mean(AHEAD[0]) - np.mean(AHEAD[1])) * 100)
    assert comparison.paper == "+1.76 to +3.08 points"
    assert "paper +1.76 to +3.08" in result.summary


def test_verdict_json_holds_every_comparison_field(make_record, claims):
    result = verdict(_beats(make_record, MIXED), claims, "crh-beats-baselines")
    data = result.to_dict()
    assert data["verdict"] == MIXED and data["alpha"] == 0.05
    first = data["comparisons"][0]
    for key in ("difference", "ci95", "p_raw", "p_holm", "n", "paper", "headline", "counted", "seeds"):
        assert key in first
    assert data["regime"]["ours"] == ["fashion-mnist: 10 classes, single-label; small_cnn from scratch; "
                                      "10 epochs; native protocol"]
    assert "ResNet-34" in data["regime"]["paper"] and "196" in data["regime"]["paper"]


def test_headline_comparisons_are_the_primary_tables(make_record, claims):
    """A longer-schedule table run on fewer cells is counted but is not headline."""
    records = _beats(make_record, SUPPORTED)
    records += runs(make_record, "crh", 16, AHEAD[0], epochs=20)
    records += runs(make_record, "csq", 16, AHEAD[1], epochs=20)
    result = verdict(records, claims, "crh-beats-baselines")
    assert [c.headline for c in result.comparisons] == [True, True, False]
    assert [c.in_family for c in result.comparisons] == [True, True, False]  # also measured only
    assert "epochs=20" in result.comparisons[2].where


def test_each_card_gets_its_own_grade_under_the_same_rule(make_record, claims):
    """Card A: CRH ahead at both lengths (five seeds); card B: clearly behind at 32 bits. The
    claim as a whole is contradicted; A alone is supported, B alone contradicted; a card with
    runs but no CRH comparison is not measurable."""
    records = (runs(make_record, "crh", 16, AHEAD[0]) + runs(make_record, "csq", 16, AHEAD[1])
               + runs(make_record, "crh", 32, AHEAD[0]) + runs(make_record, "csq", 32, AHEAD[1]))
    records += [r for r in _beats(make_record, CONTRADICTED)
                for r in [make_record(r["spec"]["method"], r["spec"]["bits"], r["spec"]["seed"],
                                      r["metrics"]["mAP"], dataset="synthetic")]]
    records += runs(make_record, "csq", 16, AHEAD[1], dataset="synthetic-196")
    result = verdict(records, claims, "crh-beats-baselines")
    grades = {g.card: g.grade for g in result.by_card}
    assert result.verdict == CONTRADICTED
    assert grades == {"fashion-mnist": SUPPORTED, "synthetic": CONTRADICTED, "synthetic-196": NOT_MEASURABLE}
    assert result.to_dict()["by_card"]["synthetic"]["verdict"] == CONTRADICTED
