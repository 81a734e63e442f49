"""Slow, obvious references for bench.evaluation.retrieval, written from the protocol text
(tests/test_retrieval*.py compare the fast paths against them): each query sorted with
np.argsort(kind="stable"), the AP@k formula applied literally, the tie-aware figure by
exhaustive enumeration of tie orders."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from bench.evaluation.retrieval import evaluate_retrieval

# ---------------------------------------------------------------------------------------------
# Reference implementation (deliberately naive)
# ---------------------------------------------------------------------------------------------


def ref_distances(q_signs: np.ndarray, d_signs: np.ndarray) -> np.ndarray:
    bits = q_signs.shape[1]
    return (bits - q_signs.astype(np.int64) @ d_signs.astype(np.int64).T) // 2


def ref_relevance(q_labels: np.ndarray, d_labels: np.ndarray) -> np.ndarray:
    width = None
    if q_labels.ndim == 2:
        width = q_labels.shape[1]
    elif d_labels.ndim == 2:
        width = d_labels.shape[1]
    else:
        width = int(max(q_labels.max(), d_labels.max())) + 1

    def mat(labels: np.ndarray) -> np.ndarray:
        if labels.ndim == 1:
            out = np.zeros((labels.shape[0], width), dtype=np.int64)
            out[np.arange(labels.shape[0]), labels] = 1
            return out
        return labels.astype(np.int64)

    return (mat(q_labels) @ mat(d_labels).T) > 0


def ap_of_ranking(rel_ranked: np.ndarray) -> float | None:
    """AP@k of a ranked 0/1 list (already cut to k); None when nothing relevant."""
    total = 0.0
    hits = 0
    for i, r in enumerate(rel_ranked, start=1):
        if r:
            hits += 1
            total += hits / i
    return total / hits if hits else None


def ref_ap(dist_row: np.ndarray, rel_row: np.ndarray, k: int) -> float | None:
    order = np.argsort(dist_row, kind="stable")[:k]
    return ap_of_ranking(rel_row[order])


def ref_map(dist: np.ndarray, rel: np.ndarray, k: int, zero_relevant: str) -> float:
    aps = [ref_ap(dist[q], rel[q], k) for q in range(dist.shape[0])]
    if zero_relevant == "zero":
        values = [0.0 if a is None else a for a in aps]
    else:
        values = [a for a in aps if a is not None]
    return float(np.mean(values)) if values else 0.0


def ref_radius(dist: np.ndarray, rel: np.ndarray, bits: int) -> tuple[list, list]:
    precision, recall = [], []
    for r in range(bits + 1):
        ps, rs = [], []
        for q in range(dist.shape[0]):
            retrieved = dist[q] <= r
            hit = int(np.sum(retrieved & rel[q]))
            ps.append(hit / retrieved.sum() if retrieved.sum() else 0.0)
            if rel[q].sum():
                rs.append(hit / rel[q].sum())
        precision.append(float(np.mean(ps)))
        recall.append(float(np.mean(rs)) if rs else 0.0)
    return precision, recall


def ref_pr_at_n(dist: np.ndarray, rel: np.ndarray, ns: list[int]) -> tuple[list, list]:
    n_db = dist.shape[1]
    precision, recall = [], []
    for n in ns:
        cut = min(n, n_db)
        ps, rs = [], []
        for q in range(dist.shape[0]):
            order = np.argsort(dist[q], kind="stable")[:cut]
            hit = int(rel[q][order].sum())
            ps.append(hit / cut)
            if rel[q].sum():
                rs.append(hit / rel[q].sum())
        precision.append(float(np.mean(ps)))
        recall.append(float(np.mean(rs)) if rs else 0.0)
    return precision, recall


def enumerate_tie_orders(dist_row: np.ndarray, rel_row: np.ndarray):
    """Every ranking consistent with the distances (all orders inside each tied group)."""
    groups = [np.flatnonzero(dist_row == d) for d in np.unique(dist_row)]
    for parts in itertools.product(*(itertools.permutations(g) for g in groups)):
        yield rel_row[np.concatenate(parts)]


def ref_tie_aware(dist_row, rel_row, k, zero_relevant) -> float | None:
    aps = [ap_of_ranking(ranked[:k]) for ranked in enumerate_tie_orders(dist_row, rel_row)]
    if zero_relevant == "zero":
        return float(np.mean([0.0 if a is None else a for a in aps]))
    kept = [a for a in aps if a is not None]
    return float(np.mean(kept)) if kept else None


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def random_problem(seed: int, n_q: int, n_db: int, bits: int, classes: int, multi: bool):
    rng = np.random.default_rng(seed)
    q = np.where(rng.random((n_q, bits)) < 0.5, 1, -1).astype(np.int8)
    d = np.where(rng.random((n_db, bits)) < 0.5, 1, -1).astype(np.int8)
    if multi:
        ql = (rng.random((n_q, classes)) < 0.25).astype(np.int64)
        dl = (rng.random((n_db, classes)) < 0.25).astype(np.int64)
        ql[0] = 0  # a query that is relevant to nothing
    else:
        ql = rng.integers(0, classes, n_q)
        dl = rng.integers(0, classes, n_db)
        ql[0] = classes  # a class absent from the database
    return q, d, ql, dl


def check_against_reference(q, d, ql, dl, topk, zero_relevant, backend, ns=None):
    bits = q.shape[1]
    dist = ref_distances(q, d)
    rel = ref_relevance(ql, dl)
    k = d.shape[0] if topk is None else min(topk, d.shape[0])
    out = evaluate_retrieval(
        q, d, ql, dl, topk=topk, zero_relevant=zero_relevant, pr_at_n=ns, backend=backend,
        chunk_size=7,
    )
    assert out["mAP"] == pytest.approx(ref_map(dist, rel, k, zero_relevant), abs=1e-12)
    precision, recall = ref_radius(dist, rel, bits)
    np.testing.assert_allclose(out["precision_at_radius"], precision, atol=1e-12)
    np.testing.assert_allclose(out["recall_at_radius"], recall, atol=1e-12)
    assert out["p_at_r2"] == pytest.approx(precision[min(2, bits)], abs=1e-12)
    if ns is not None:
        p_n, r_n = ref_pr_at_n(dist, rel, ns)
        np.testing.assert_allclose(out["precision_at_n"], p_n, atol=1e-12)
        np.testing.assert_allclose(out["recall_at_n"], r_n, atol=1e-12)
        assert out["pr_at_n"] == list(ns)
    zero_count = sum(ref_ap(dist[i], rel[i], k) is None for i in range(q.shape[0]))
    assert out["num_zero_relevant"] == zero_count
    expected_kept = q.shape[0] if zero_relevant == "zero" else q.shape[0] - zero_count
    assert out["num_queries_in_mAP"] == expected_kept
    assert out["topk"] == ("all" if topk is None else topk)
    assert (out["num_queries"], out["num_db"], out["bits"]) == (q.shape[0], d.shape[0], bits)
    json.dumps(out)  # JSON-serialisable
    return out
