"""Chance level: the expected mAP of random hash codes, in closed form, from a run record.

Why a closed form. Random codes are independent of the labels, so (with ties ordered at random,
which is what the tie-aware mAP averages over) the Hamming ranking of the database is a
uniformly random permutation. For one query with R relevant items among N, the expected
average precision of a uniformly random ranking is

    E[AP] = (1/R) sum_k (1/k) E[rel_k * sum_{j<=k} rel_j]
          = (1/N) * (H_N + (N - H_N) * (R - 1) / (N - 1))
          = a_N + b_N * R,   a_N = (H_N - 1) / (N - 1),   b_N = (N - H_N) / (N (N - 1)),

with H_N the N-th harmonic number (for R = 1 this is E[1 / rank] = H_N / N; for R = N it is 1).
It is affine in R, so the mean over queries needs only the mean relevant count. For mAP@k
(the hashing convention: divide by the relevant items retrieved in the top k, AP 0 when none
is), condition on m relevant items in the top k (hypergeometric): given m, their positions in
the top k are uniform, so E[AP@k] = sum_{m>=1} P(m) (a_k + b_k m) = a_k (1 - P(0)) + b_k k R / N.

What a record gives. `metrics.precision_at_radius[K]` (radius K retrieves the whole database)
is the mean over queries of R_q / N, so mean R_q = N * that value; `num_queries_without_relevant`
counts queries with R_q = 0 (their AP is 0 under the "zero" convention, which the formula also
gives). So for mAP@all the chance level is exact from the record alone. For mAP@k < N the term
P(0) is not affine in R_q; it is evaluated at the mean relevant count (said so in `how`).

The stable-order mAP breaks ties by database index instead of at random; with labels in no
particular database order (true of the shuffled Fashion-MNIST files) its expectation is the
same, which tests/test_chance.py checks against seeded random codes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import digamma
from scipy.stats import hypergeom

EULER_GAMMA = 0.5772156649015329


def harmonic(n: int) -> float:
    """H_n = sum_{i<=n} 1/i (digamma form: exact to float precision for any n)."""
    return 0.0 if n <= 0 else float(digamma(n + 1) + EULER_GAMMA)


def _affine(k: int) -> tuple[float, float]:
    """(a_k, b_k): E[AP of a random ranking of k items with m relevant] = a_k + b_k m."""
    if k <= 1:
        return 0.0, 1.0  # one item: AP = 1 when it is relevant
    h = harmonic(k)
    return (h - 1.0) / (k - 1), (k - h) / (k * (k - 1))


def expected_ap(relevant: Any, num_db: int, topk: int | None = None) -> np.ndarray:
    """Expected AP@k (hashing convention, AP 0 without a relevant item in the top k) of a
    uniformly random ranking, per query, for the given relevant counts R_q."""
    relevant = np.asarray(relevant, dtype=np.float64)
    if np.any(relevant < 0) or np.any(relevant > num_db):
        raise ValueError(f"relevant counts must lie in 0..{num_db}")
    k = num_db if topk is None else min(int(topk), num_db)
    a, b = _affine(k)
    if k == num_db:
        p_none = (relevant == 0).astype(np.float64)
    else:  # P(no relevant item among the top k): hypergeometric at 0, non-integer R rounded
        p_none = hypergeom.pmf(0, num_db, np.rint(relevant).astype(np.int64), k)
    return a * (1.0 - p_none) + b * k * relevant / num_db


@dataclass(frozen=True)
class ChanceLevel:
    """The expected mAP of random codes for one record's query set and database."""

    mAP: float        # fraction, like metrics.mAP
    mean_relevant: float
    num_db: int
    topk: int
    exact: bool
    how: str


def chance_from_record(record: dict) -> ChanceLevel | None:
    """Chance mAP from what a record stores (None when it lacks the numbers needed)."""
    metrics = record.get("metrics") if isinstance(record.get("metrics"), dict) else {}
    radius = metrics.get("precision_at_radius")
    num_db, num_q = metrics.get("num_db"), metrics.get("num_queries")
    if not radius or not num_db or not num_q:
        return None
    num_db, num_q = int(num_db), int(num_q)
    fraction = float(radius[-1])
    if not math.isfinite(fraction):
        return None
    mean_r = fraction * num_db
    without = int(metrics.get("num_queries_without_relevant") or 0)
    with_rel = num_q - without
    if with_rel <= 0:
        return ChanceLevel(0.0, 0.0, num_db, num_db, True, "no query has a relevant item")
    k = int(metrics.get("topk_effective") or num_db)
    drop = metrics.get("zero_relevant") == "drop"
    # The relevant count of a query that has any: the mean over those queries.
    mean_r_nonzero = mean_r * num_q / with_rel
    value = float(expected_ap([mean_r_nonzero], num_db, k)[0])
    if k == num_db:
        exact, how = True, f"closed form, exact for mAP@all (mean relevant {mean_r:.1f} of {num_db})"
        if not drop:
            value *= with_rel / num_q  # queries without a relevant item count as AP 0
    else:
        exact = False
        p_none = float(hypergeom.pmf(0, num_db, int(round(mean_r_nonzero)), k))
        how = (f"closed form for mAP@{k}, P(no relevant in the top {k}) taken at the mean relevant "
               f"count {mean_r_nonzero:.1f} of {num_db} (approximate)")
        if drop:
            value /= max(1e-300, 1.0 - p_none)
        else:
            value *= with_rel / num_q
    return ChanceLevel(value, mean_r, num_db, k, exact, how)


def chance_precision_within_radius(record: dict, radius: int = 2) -> float | None:
    """Expected precision of the items within Hamming radius r for random codes (precision 0
    when nothing is within r, as the evaluator counts it): by exchangeability the relevant
    share of whatever is retrieved is R_q / N on average, and the set is empty with
    probability (1 - V / 2^K)^N, V = sum_{i<=r} C(K, i). Exact; affine in R_q."""
    metrics = record.get("metrics") if isinstance(record.get("metrics"), dict) else {}
    radius_curve = metrics.get("precision_at_radius")
    num_db, bits = metrics.get("num_db"), metrics.get("bits")
    if not radius_curve or not num_db or not bits:
        return None
    volume = sum(math.comb(int(bits), i) for i in range(min(radius, int(bits)) + 1))
    p_empty = math.exp(int(num_db) * math.log1p(-volume / 2 ** int(bits))) if volume < 2 ** int(bits) else 0.0
    return float(radius_curve[-1]) * (1.0 - p_empty)
