"""Chance level (bench/evaluation/chance.py): the closed form against a literal enumeration of rankings
and against seeded random ±1 codes scored by the real evaluator."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from bench.evaluation.chance import chance_from_record, chance_precision_within_radius, expected_ap
from bench.evaluation.retrieval import evaluate_retrieval


def literal_ap(relevant: list[int], k: int) -> float:
    """AP@k, hashing convention: divide by the relevant items in the top k; 0 when none."""
    hits, total = 0, 0.0
    for rank, rel in enumerate(relevant[:k], start=1):
        if rel:
            hits += 1
            total += hits / rank
    return total / hits if hits else 0.0


@pytest.mark.parametrize("n, k", [(6, 6), (6, 3), (5, 1), (7, 4)])
def test_closed_form_equals_the_mean_over_every_ranking(n, k):
    for r in range(0, n + 1):
        items = [1] * r + [0] * (n - r)
        values = [literal_ap([items[i] for i in order], k) for order in itertools.permutations(range(n))]
        assert expected_ap([r], n, None if k == n else k)[0] == pytest.approx(np.mean(values)), (n, k, r)


def test_closed_form_hand_worked():
    # R = 1: E[1/rank] = H_N / N; N = 4 -> (1 + 1/2 + 1/3 + 1/4) / 4
    assert expected_ap([1], 4)[0] == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)
    assert expected_ap([4], 4)[0] == pytest.approx(1.0)
    assert expected_ap([0], 4)[0] == 0.0


def _simulate(q_labels, db_labels, bits, draws, topk=None):
    rng = np.random.default_rng(11)
    stable, tie_aware, p_r2 = [], [], []
    for _ in range(draws):
        q = np.where(rng.random((len(q_labels), bits)) < 0.5, 1, -1)
        d = np.where(rng.random((len(db_labels), bits)) < 0.5, 1, -1)
        m = evaluate_retrieval(q, d, q_labels, db_labels, topk=topk, backend="numpy")
        stable.append(m["mAP"])
        tie_aware.append(m["mAP_tie_aware"])
        p_r2.append(m["p_at_r2"])
    return np.array(stable), np.array(tie_aware), np.array(p_r2), m


def test_random_codes_score_the_closed_form_on_average():
    """Unbalanced single-label data in shuffled database order, 8-bit codes (heavy ties)."""
    rng = np.random.default_rng(2)
    db_labels = rng.permutation(np.repeat(np.arange(4), [150, 80, 50, 20]))
    q_labels = np.repeat(np.arange(4), [10, 10, 10, 10])
    stable, tie_aware, p_r2, last = _simulate(q_labels, db_labels, bits=8, draws=150)
    counts = np.bincount(db_labels, minlength=4)
    expected = float(np.mean([expected_ap([counts[c]], len(db_labels))[0] for c in q_labels]))
    for values in (tie_aware, stable):
        assert values.mean() == pytest.approx(expected, abs=4 * values.std(ddof=1) / math.sqrt(len(values)))
    # The record-level form uses only what a record stores (precision at radius K, sizes).
    record = {"metrics": last}
    assert chance_from_record(record).mAP == pytest.approx(expected, rel=1e-9)
    assert chance_from_record(record).exact
    # P@r<=2: relevant share times P(something within radius 2)
    chance_p = chance_precision_within_radius(record, 2)
    assert p_r2.mean() == pytest.approx(chance_p, abs=4 * p_r2.std(ddof=1) / math.sqrt(len(p_r2)))


def test_multi_label_and_top_k():
    rng = np.random.default_rng(4)
    db_labels = (rng.random((250, 5)) < 0.25).astype(int)
    q_labels = (rng.random((30, 5)) < 0.25).astype(int)
    _, tie_aware, _, last = _simulate(q_labels, db_labels, bits=12, draws=120, topk=60)
    relevant = (q_labels @ db_labels.T > 0).sum(axis=1)
    expected = float(np.mean(expected_ap(relevant, 250, 60)))
    se = tie_aware.std(ddof=1) / math.sqrt(len(tie_aware))
    assert tie_aware.mean() == pytest.approx(expected, abs=4 * se)
    level = chance_from_record({"metrics": last})
    assert not level.exact and "approximate" in level.how
    assert level.mAP == pytest.approx(expected, rel=0.05)


def test_records_without_the_numbers_have_no_chance_level():
    assert chance_from_record({"metrics": {"mAP": 0.5}}) is None
    assert chance_from_record({}) is None
