"""bench.evaluation.retrieval against slow, obvious references written from the protocol text
(tests/retrieval_reference.py).

The references sort each query with np.argsort(kind="stable") and apply the AP@k formula
literally; the tie-aware figure is checked against exhaustive enumeration of tie orders.
"""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from retrieval_reference import (
    check_against_reference,
    random_problem,
    ref_ap,
    ref_distances,
    ref_relevance,
    ref_tie_aware,
)

from bench.evaluation import retrieval
from bench.evaluation.retrieval import (
    as_sign_codes,
    binarize,
    evaluate_retrieval,
    hamming_distance_matrix,
    label_matrix,
    pack_codes,
)

BACKENDS = ["numpy"] + (["numba"] if retrieval.HAVE_NUMBA else [])
REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# Codes, packing, labels
# ---------------------------------------------------------------------------------------------


def test_binarize_maps_zero_to_plus_one():
    out = binarize(np.array([[0.0, -0.0, -1e-9, 3.0, -2.0]]))
    assert out.dtype == np.int8
    assert out.tolist() == [[1, 1, -1, 1, -1]]
    assert binarize(np.array([[0, 0]])).tolist() == [[1, 1]]


def test_binarize_rejects_nan():
    with pytest.raises(ValueError, match="NaN"):
        binarize(np.array([[0.5, np.nan]]))


def test_as_sign_codes_formats():
    assert as_sign_codes(np.array([[0, 1, 1]])).tolist() == [[-1, 1, 1]]
    assert as_sign_codes(np.array([[True, False]])).tolist() == [[1, -1]]
    assert as_sign_codes(np.array([[-1, 1, 1]])).tolist() == [[-1, 1, 1]]
    assert as_sign_codes(np.array([[0.0, -0.2, 0.7]])).tolist() == [[1, -1, 1]]
    assert as_sign_codes(np.array([[0.0, 0.0]])).tolist() == [[-1, -1]]  # all-{0,1}


def test_torch_inputs_match_numpy():
    torch = pytest.importorskip("torch")
    q, d, ql, dl = random_problem(3, 9, 40, 6, 3, multi=False)
    qf = q.astype(np.float32) * 0.3
    expected = evaluate_retrieval(qf, d, ql, dl, topk=10)
    got = evaluate_retrieval(
        torch.from_numpy(qf), torch.from_numpy(d), torch.from_numpy(ql), torch.from_numpy(dl),
        topk=10,
    )
    assert got == expected
    assert binarize(torch.tensor([[0.0, -1.0]], dtype=torch.bfloat16)).tolist() == [[1, -1]]
    if torch.cuda.is_available():
        on_gpu = evaluate_retrieval(torch.from_numpy(qf).cuda(), torch.from_numpy(d).cuda(),
                                    torch.from_numpy(ql).cuda(), torch.from_numpy(dl).cuda(),
                                    topk=10)
        assert on_gpu == expected


@pytest.mark.parametrize("bits", [1, 7, 8, 63, 64, 65, 130])
def test_pack_codes_and_hamming(bits):
    rng = np.random.default_rng(bits)
    q = np.where(rng.random((5, bits)) < 0.5, 1, -1).astype(np.int8)
    d = np.where(rng.random((11, bits)) < 0.5, 1, -1).astype(np.int8)
    packed = pack_codes(q)
    assert packed.dtype == np.uint64 and packed.shape == (5, -(-bits // 64))
    # bit j of the code is bit j % 64 of word j // 64
    j = bits - 1
    assert ((packed[:, j // 64] >> np.uint64(j % 64)) & np.uint64(1)).tolist() == (
        (q[:, j] > 0).astype(int).tolist()
    )
    dist = hamming_distance_matrix(packed, pack_codes(d))
    assert dist.dtype == np.uint16
    np.testing.assert_array_equal(dist, ref_distances(q, d))


def test_label_matrix():
    assert label_matrix(np.array([2, 0])).tolist() == [[False, False, True], [True, False, False]]
    assert label_matrix(np.array([1]), num_classes=3).tolist() == [[False, True, False]]
    multi = np.array([[1, 0, 1], [0, 0, 0]])
    assert label_matrix(multi).tolist() == [[True, False, True], [False, False, False]]
    with pytest.raises(ValueError):
        label_matrix(np.array([[0, 2]]))
    with pytest.raises(ValueError):
        label_matrix(np.array([3]), num_classes=2)
    with pytest.raises(ValueError):
        label_matrix(np.array([-1]))


# ---------------------------------------------------------------------------------------------
# Hand-worked cases
# ---------------------------------------------------------------------------------------------


def _ranked_problem(relevant: list[bool]):
    """Database with distances 0, 1, 2, ... to a single query, in that order."""
    n = len(relevant)
    bits = n
    q = np.ones((1, bits), dtype=np.int8)
    d = np.ones((n, bits), dtype=np.int8)
    for i in range(n):
        d[i, :i] = -1
    return q, d, np.array([0]), np.array([0 if r else 1 for r in relevant])


@pytest.mark.parametrize("backend", BACKENDS)
def test_hand_worked_k3(backend):
    out = evaluate_retrieval(*_ranked_problem([True, False, True, True]), topk=3, backend=backend)
    assert out["mAP"] == pytest.approx(5 / 6, abs=1e-15)
    assert out["mAP_tie_aware"] == pytest.approx(5 / 6, abs=1e-15)  # no ties
    out = evaluate_retrieval(*_ranked_problem([True, False, False, True]), topk=3, backend=backend)
    assert out["mAP"] == pytest.approx(1.0, abs=1e-15)
    out = evaluate_retrieval(*_ranked_problem([True, False, True]), backend=backend)
    assert out["topk"] == "all" and out["mAP"] == pytest.approx(5 / 6, abs=1e-15)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_broken_by_database_index(backend):
    # Three items all at distance 0: stable order is [not, rel, rel].
    q = np.ones((1, 4), dtype=np.int8)
    d = np.ones((3, 4), dtype=np.int8)
    out = evaluate_retrieval(q, d, np.array([0]), np.array([1, 0, 0]), backend=backend)
    assert out["mAP"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    # Tie-aware: every order of {not, rel, rel} equally likely.
    assert out["mAP_tie_aware"] == pytest.approx(
        ref_tie_aware(np.zeros(3), np.array([False, True, True]), 3, "zero")
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_and_drop_conventions(backend):
    # query 0: AP 1; query 1: nothing relevant anywhere.
    q = np.ones((2, 4), dtype=np.int8)
    d = np.ones((3, 4), dtype=np.int8)
    d[1:, :2] = -1
    ql, dl = np.array([0, 5]), np.array([0, 1, 1])
    zero = evaluate_retrieval(q, d, ql, dl, topk=2, backend=backend)
    drop = evaluate_retrieval(q, d, ql, dl, topk=2, zero_relevant="drop", backend=backend)
    assert zero["mAP"] == pytest.approx(0.5) and drop["mAP"] == pytest.approx(1.0)
    assert zero["mAP_tie_aware"] == pytest.approx(0.5)
    assert drop["mAP_tie_aware"] == pytest.approx(1.0)
    assert zero["zero_relevant"] == "zero" and drop["zero_relevant"] == "drop"
    assert zero["num_zero_relevant"] == drop["num_zero_relevant"] == 1
    assert (zero["num_queries_in_mAP"], drop["num_queries_in_mAP"]) == (2, 1)
    assert drop["num_zero_relevant_tie_aware"] == 1
    assert zero["num_queries_without_relevant"] == 1
    assert zero["recall_at_radius"][-1] == pytest.approx(1.0)  # the empty query is excluded
    assert zero["empty_radius_precision"] == "zero"
    all_dropped = evaluate_retrieval(q[1:], d, ql[1:], dl, zero_relevant="drop", backend=backend)
    assert all_dropped["mAP"] == 0.0 and all_dropped["num_queries_in_mAP"] == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_radius_contributes_zero_precision(backend):
    q = np.ones((1, 4), dtype=np.int8)
    d = -np.ones((2, 4), dtype=np.int8)  # both at distance 4
    out = evaluate_retrieval(q, d, np.array([0]), np.array([0, 0]), backend=backend)
    assert out["precision_at_radius"] == [0.0, 0.0, 0.0, 0.0, 1.0]
    assert out["recall_at_radius"] == [0.0, 0.0, 0.0, 0.0, 1.0]


# ---------------------------------------------------------------------------------------------
# Random data against the reference
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("multi", [False, True])
@pytest.mark.parametrize("bits", [4, 8, 70])
@pytest.mark.parametrize("topk", [1, 3, 17, None, 10_000])
def test_matches_reference(backend, multi, bits, topk):
    q, d, ql, dl = random_problem(bits * 7 + (topk or 0), 23, 61, bits, 4, multi)
    for zero_relevant in ("zero", "drop"):
        check_against_reference(q, d, ql, dl, topk, zero_relevant, backend, ns=[1, 5, 61, 100])


@pytest.mark.parametrize("backend", BACKENDS)
def test_multi_label_wide_label_sets(backend):
    # 130 classes -> three 64-bit label words.
    q, d, ql, dl = random_problem(11, 15, 50, 6, 130, multi=True)
    ql[:, 129] = 1
    dl[::7, 129] = 1
    check_against_reference(q, d, ql, dl, 9, "zero", backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_label_formats_agree(backend):
    q, d, ql, dl = random_problem(5, 12, 40, 5, 4, multi=False)
    ql[0] = 1
    ids = evaluate_retrieval(q, d, ql, dl, topk=7, backend=backend)
    onehot = evaluate_retrieval(q, d, label_matrix(ql, 4), label_matrix(dl, 4), topk=7,
                                backend=backend)
    mixed = evaluate_retrieval(q, d, ql, label_matrix(dl, 4).astype(np.uint8), topk=7,
                               backend=backend)
    assert ids == onehot == mixed


def test_backends_and_chunks_agree():
    if not retrieval.HAVE_NUMBA:
        pytest.skip("numba not installed")
    for multi in (False, True):
        q, d, ql, dl = random_problem(21, 40, 300, 10, 6, multi)
        for topk in (5, 250, None):
            a = evaluate_retrieval(q, d, ql, dl, topk=topk, pr_at_n=[3, 300], backend="numba")
            b = evaluate_retrieval(q, d, ql, dl, topk=topk, pr_at_n=[3, 300], backend="numpy",
                                   chunk_size=6)
            c = evaluate_retrieval(q, d, ql, dl, topk=topk, pr_at_n=[3, 300], backend="numba",
                                   chunk_size=1)
            assert a["backend"] == "numba" and b["backend"] == "numpy"
            for key, value in a.items():
                if key == "backend":
                    continue
                if isinstance(value, float):
                    assert b[key] == pytest.approx(value, abs=1e-12), key
                    assert c[key] == pytest.approx(value, abs=1e-12), key
                elif isinstance(value, list) and value and isinstance(value[0], float):
                    np.testing.assert_allclose(b[key], value, atol=1e-12)
                    np.testing.assert_allclose(c[key], value, atol=1e-12)
                else:
                    assert b[key] == value == c[key], key


def test_works_without_numba():
    """The fallback path in a fresh interpreter where importing numba fails."""
    script = (
        "import sys, json; sys.modules['numba'] = None\n"
        "import numpy as np\n"
        "from bench.evaluation import retrieval\n"
        "assert not retrieval.HAVE_NUMBA\n"
        "rng = np.random.default_rng(0)\n"
        "q = rng.standard_normal((9, 6)); d = rng.standard_normal((30, 6))\n"
        "out = retrieval.evaluate_retrieval(q, d, rng.integers(0, 3, 9), rng.integers(0, 3, 30),"
        " topk=8, pr_at_n=[4])\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=REPO, check=True)
    fallback = json.loads(done.stdout)
    rng = np.random.default_rng(0)
    q = rng.standard_normal((9, 6))
    d = rng.standard_normal((30, 6))
    here = evaluate_retrieval(q, d, rng.integers(0, 3, 9), rng.integers(0, 3, 30), topk=8,
                              pr_at_n=[4])
    assert fallback["backend"] == "numpy"
    for key in ("mAP", "mAP_tie_aware", "p_at_r2"):
        assert fallback[key] == pytest.approx(here[key], abs=1e-12)
    np.testing.assert_allclose(fallback["precision_at_radius"], here["precision_at_radius"])


# ---------------------------------------------------------------------------------------------
# Tie-aware mAP against exhaustive enumeration
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed", range(12))
def test_tie_aware_matches_enumeration(backend, seed):
    rng = np.random.default_rng(seed)
    n_db = int(rng.integers(3, 8))
    bits = int(rng.integers(1, 4))
    q = np.where(rng.random((1, bits)) < 0.5, 1, -1).astype(np.int8)
    d = np.where(rng.random((n_db, bits)) < 0.5, 1, -1).astype(np.int8)
    ql = np.array([0])
    dl = (rng.random(n_db) < 0.45).astype(np.int64)  # 0 = relevant
    dist = ref_distances(q, d)[0]
    rel = ref_relevance(ql, dl)[0]
    for k in [*range(1, n_db + 1), None]:
        kk = n_db if k is None else k
        for zero_relevant in ("zero", "drop"):
            out = evaluate_retrieval(q, d, ql, dl, topk=k, zero_relevant=zero_relevant,
                                     backend=backend)
            expected = ref_tie_aware(dist, rel, kk, zero_relevant)
            if expected is None:
                assert out["num_queries_in_mAP_tie_aware"] == 0
                assert out["mAP_tie_aware"] == 0.0
            else:
                assert out["mAP_tie_aware"] == pytest.approx(expected, abs=1e-12), (k, dist, rel)


def _ap_over_patterns(prefix: list[bool], n: int, r: int, k: int, zero_relevant: str) -> float:
    """Exact expected AP@k when a group of n items (r relevant) follows a fixed prefix:
    enumerate every placement of the relevant items in the group (all equally likely)."""
    total = Fraction(0)
    count = 0
    for chosen in itertools.combinations(range(n), r):
        group = [False] * n
        for i in chosen:
            group[i] = True
        ranked = (prefix + group)[:k]
        hits = 0
        acc = Fraction(0)
        for i, flag in enumerate(ranked, start=1):
            if flag:
                hits += 1
                acc += Fraction(hits, i)
        if hits:
            total += acc / hits
            count += 1
        elif zero_relevant == "zero":
            count += 1
    return float(total / count)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "prefix_rel, n, r, k",
    [
        ([True] * 40 + [False] * 30, 12, 5, 75),  # s = 70 > 64: asymptotic harmonic branch
        ([False] * 70, 12, 5, 78),
        ([False] * 70, 12, 3, 71),
        ([True] * 3 + [False] * 80, 14, 7, 100),  # group fully inside, k beyond it
        ([False] * 66, 14, 14, 70),
        ([], 16, 6, 9),
    ],
)
def test_tie_aware_cut_groups_by_pattern_enumeration(backend, prefix_rel, n, r, k):
    # Prefix items get distinct distances 0..len-1 (bits = len + 1), the group shares the
    # largest distance; relevance is label 0.
    s = len(prefix_rel)
    bits = s + 1
    q = np.ones((1, bits), dtype=np.int8)
    d = np.ones((s + n, bits), dtype=np.int8)
    for i in range(s):
        d[i, :i] = -1
    d[s:, :s] = -1
    dl = np.array([0 if f else 1 for f in prefix_rel] + [0] * r + [1] * (n - r))
    for zero_relevant in ("zero", "drop"):
        out = evaluate_retrieval(q, d, np.array([0]), dl, topk=k, zero_relevant=zero_relevant,
                                 backend=backend)
        expected = _ap_over_patterns(prefix_rel, n, r, k, zero_relevant)
        assert out["mAP_tie_aware"] == pytest.approx(expected, abs=1e-12)


def test_closed_form_pieces_with_large_groups():
    table = retrieval._HARMONIC_TABLE
    for s, e in [(0, 1), (0, 64), (3, 200), (64, 65), (70, 71), (1000, 1500), (5, 100_000)]:
        exact = float(sum(Fraction(1, i) for i in range(s + 1, e + 1))) if e < 3000 else None
        if exact is not None:
            assert retrieval._harmonic_diff(s, e, table) == pytest.approx(exact, rel=1e-13)
    assert retrieval._harmonic_diff(5, 100_000, table) == pytest.approx(
        math.fsum(1.0 / i for i in range(6, 100_001)), rel=1e-13
    )
    # group expectation: literal sum of the per-position formula
    for n, r, s, big_r in [(200, 70, 1000, 30), (90, 1, 0, 0), (300, 300, 5, 2)]:
        literal = sum(
            Fraction(r, n) * (big_r + 1 + Fraction((i - 1) * (r - 1), n - 1)) / (s + i)
            for i in range(1, n + 1)
        )
        assert retrieval._group_sum(n, r, s, big_r, table) == pytest.approx(float(literal),
                                                                           rel=1e-12)
    # cut group: hypergeometric sum with exact binomials
    n, r, m, s, big_r, full = 500, 200, 300, 80, 10, 7.25
    expected = 0.0
    for x in range(max(0, m - (n - r)), min(r, m) + 1):
        p = math.comb(r, x) * math.comb(n - r, m - x) / math.comb(n, m)
        expected += p * (full + retrieval._group_sum(m, x, s, big_r, table)) / (big_r + x)
    got, p_hit = retrieval._cut_group(n, r, m, s, big_r, full, table)
    assert got == pytest.approx(expected, rel=1e-11) and p_hit == 1.0
    got, p_hit = retrieval._cut_group(50, 2, 3, 0, 0, 0.0, table)
    assert p_hit == pytest.approx(1 - math.comb(48, 3) / math.comb(50, 3), rel=1e-12)


# ---------------------------------------------------------------------------------------------
# Property-based
# ---------------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n_q=st.integers(1, 6),
    n_db=st.integers(1, 30),
    bits=st.integers(1, 9),
    multi=st.booleans(),
    topk=st.one_of(st.none(), st.integers(1, 40)),
    zero_relevant=st.sampled_from(["zero", "drop"]),
)
def test_property_matches_reference(seed, n_q, n_db, bits, multi, topk, zero_relevant):
    q, d, ql, dl = random_problem(seed, n_q, n_db, bits, 3, multi)
    out = check_against_reference(q, d, ql, dl, topk, zero_relevant, BACKENDS[-1], ns=[1, 7])
    assert 0.0 <= out["mAP_tie_aware"] <= 1.0 + 1e-12
    assert all(0.0 <= p <= 1.0 + 1e-12 for p in out["precision_at_radius"])
    assert out["recall_at_radius"] == sorted(out["recall_at_radius"])


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n_db=st.integers(1, 6), bits=st.integers(1, 3))
def test_property_tie_aware_is_mean_over_orders(seed, n_db, bits):
    q, d, ql, dl = random_problem(seed, 1, n_db, bits, 2, multi=False)
    ql[0] = 0
    dist, rel = ref_distances(q, d)[0], ref_relevance(ql, dl)[0]
    for k in (1, max(1, n_db // 2), n_db):
        out = evaluate_retrieval(q, d, ql, dl, topk=k, backend=BACKENDS[-1])
        assert out["mAP_tie_aware"] == pytest.approx(ref_tie_aware(dist, rel, k, "zero"),
                                                     abs=1e-12)


# ---------------------------------------------------------------------------------------------
# Input validation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: a.update(db_codes=a["db_codes"][:, :3]), "bit counts differ"),
        (lambda a: a.update(query_labels=a["query_labels"][:2]), "query labels have 2 rows"),
        (lambda a: a.update(db_labels=a["db_labels"][:2]), "database labels have 2 rows"),
        (lambda a: a.update(topk=0), "topk=0"),
        (lambda a: a.update(topk=2.5), "topk=2.5"),
        (lambda a: a.update(zero_relevant="skip"), "zero_relevant"),
        (lambda a: a.update(query_codes=np.zeros((0, 4))), "empty"),
        (lambda a: a.update(query_codes=np.full((3, 4), np.nan)), "NaN"),
        (lambda a: a.update(query_labels=np.zeros((3, 2)), db_labels=np.zeros((5, 3))),
         "label widths differ"),
        (lambda a: a.update(pr_at_n=[0]), "pr_at_n"),
        (lambda a: a.update(query_codes=np.zeros(4)), "2-D"),
    ],
)
def test_invalid_inputs_raise_value_error(change, message):
    args = {
        "query_codes": np.ones((3, 4)),
        "db_codes": np.ones((5, 4)),
        "query_labels": np.array([0, 1, 0]),
        "db_labels": np.array([0, 1, 0, 1, 1]),
    }
    change(args)
    with pytest.raises(ValueError, match=message):
        evaluate_retrieval(**args)


def test_per_query_lists_and_threads():
    from concurrent.futures import ThreadPoolExecutor

    q, d, ql, dl = random_problem(4, 10, 50, 6, 3, multi=False)
    out = evaluate_retrieval(q, d, ql, dl, topk=5, zero_relevant="drop", per_query=True)
    dist, rel = ref_distances(q, d), ref_relevance(ql, dl)
    assert out["ap_per_query"] == pytest.approx(
        [ref_ap(dist[i], rel[i], 5) for i in range(10)], abs=1e-12
    )
    assert out["ap_per_query"][0] is None  # query 0's class is absent: dropped
    with ThreadPoolExecutor(4) as pool:  # concurrent callers must not crash numba
        results = list(pool.map(lambda _: evaluate_retrieval(q, d, ql, dl, topk=5), range(8)))
    assert all(r == results[0] for r in results)
