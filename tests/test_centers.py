"""Shared hash-center utilities: CRH's head widths, codebooks, assignment cost tensor, one-to-one
solvers and center composition; CSQ's Bernoulli resampling; MDS's Gilbert-Varshamov target and
l_p-box ADMM generator."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from bench.errors import UserError
from methods.centers import (
    assignment_cost,
    balanced_rows,
    bernoulli_centers,
    compose_centers,
    gilbert_varshamov_target,
    hamming_distances,
    head_width,
    mds_centers,
    mds_start,
    min_pairwise_distance,
    random_codebook,
    reassign_heads,
    solve_assignment,
    valid_heads,
)


# ----------------------------------------------------------------------------- head width
def _smallest_width(bits: int, size: int) -> int:
    return next(d for d in range(1, bits + 1) if bits % d == 0 and 2**d >= size)


@pytest.mark.parametrize(("bits", "size"), [(16, 12), (16, 20), (32, 20), (64, 20), (48, 200),
                                            (12, 2), (64, 1110), (16, 17)])
def test_head_width_default_is_smallest_divisor_that_fits(bits: int, size: int) -> None:
    heads, width = head_width(bits, size)
    assert width == _smallest_width(bits, size)
    assert heads * width == bits and 2**width >= size


def test_head_width_known_values() -> None:
    assert head_width(16, 20) == (2, 8)   # 2^4 = 16 < 20, so 8-bit heads
    assert head_width(32, 20) == (4, 8)
    assert head_width(64, 20) == (8, 8)
    assert head_width(16, 12) == (4, 4)
    assert head_width(32, 20, heads=2) == (2, 16)


@pytest.mark.parametrize(("bits", "size", "heads", "fragment"), [
    (16, 12, 3, "does not divide"),
    (16, 12, 8, "too few"),
    (32, 20, 8, "too few"),
    (16, 12, 0, "not a positive integer"),
    (16, 12, -2, "not a positive integer"),
])
def test_head_width_refuses_bad_heads(bits: int, size: int, heads: int, fragment: str) -> None:
    with pytest.raises(UserError) as caught:
        head_width(bits, size, heads)
    message = str(caught.value)
    assert fragment in message and "\n" not in message
    assert f"valid heads for K={bits}, M={size}: {valid_heads(bits, size)}" in message
    assert caught.value.exit_code == 2


def test_head_width_refuses_codebook_larger_than_code_space() -> None:
    with pytest.raises(UserError, match="cannot hold"):
        head_width(4, 20)


# ----------------------------------------------------------------------------- codebooks
@pytest.mark.parametrize(("heads", "width", "size"), [(4, 4, 12), (2, 8, 20), (1, 24, 50), (3, 2, 4)])
def test_random_codebook_shape_values_and_distinct_per_head(heads: int, width: int, size: int) -> None:
    book = random_codebook(heads, width, size, np.random.default_rng(0))
    assert book.shape == (heads, size, width)
    assert set(np.unique(book)) <= {-1, 1}
    for head in range(heads):
        assert len(np.unique(book[head], axis=0)) == size


def test_random_codebook_is_seeded() -> None:
    a = random_codebook(4, 8, 20, np.random.default_rng(5))
    b = random_codebook(4, 8, 20, np.random.default_rng(5))
    c = random_codebook(4, 8, 20, np.random.default_rng(6))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_random_codebook_is_uniform_over_codewords() -> None:
    # 3-bit heads, 2 entries each: every one of the 8 codewords should be drawn about equally.
    book = random_codebook(4000, 3, 2, np.random.default_rng(1))
    ints = ((book > 0) * (1 << np.arange(3))).sum(axis=2).ravel()
    counts = np.bincount(ints, minlength=8)
    assert counts.min() > 0.85 * counts.mean() and counts.max() < 1.15 * counts.mean()


def test_random_codebook_min_distance() -> None:
    book = random_codebook(3, 8, 10, np.random.default_rng(0), min_distance=3)
    for head in book:
        distances = (head[:, None, :] != head[None, :, :]).sum(axis=2)
        np.fill_diagonal(distances, 99)
        assert distances.min() >= 3
    with pytest.raises(UserError, match="codebook_min_distance"):
        random_codebook(1, 4, 16, np.random.default_rng(0), min_distance=3, max_tries=500)


def test_random_codebook_refuses_too_many_entries() -> None:
    with pytest.raises(UserError):
        random_codebook(2, 3, 9, np.random.default_rng(0))


# ----------------------------------------------------------------------------- composition
def test_compose_centers_concatenates_assigned_codewords() -> None:
    rng = np.random.default_rng(0)
    heads, width, size, classes = 3, 5, 14, 7
    book = random_codebook(heads, width, size, rng)
    assignment = np.stack([rng.permutation(size)[:classes] for _ in range(heads)])
    centers = compose_centers(book, assignment)
    assert centers.shape == (classes, heads * width)
    for c in range(classes):
        for h in range(heads):
            assert np.array_equal(centers[c, h * width:(h + 1) * width], book[h, assignment[h, c]])


# ----------------------------------------------------------------------------- cost tensor
def _literal_cost(codes: np.ndarray, labels: np.ndarray, book: np.ndarray) -> np.ndarray:
    heads, size, width = book.shape
    codes, labels, book = (np.asarray(a, dtype=np.float64) for a in (codes, labels, book))
    classes = labels.shape[1]
    cost = np.zeros((heads, classes, size))
    for h in range(heads):
        for c in range(classes):
            for m in range(size):
                num = den = 0.0
                for n in range(len(codes)):
                    if labels[n, c] == 0:
                        continue
                    weight = 1.0 / labels[n].sum()
                    diff = codes[n, h * width:(h + 1) * width] - book[h, m]
                    num += weight * float(diff @ diff)
                    den += weight
                cost[h, c, m] = num / den if den > 0 else 0.0
    return cost


@pytest.mark.parametrize("multi_label", [False, True])
def test_assignment_cost_equals_per_sample_loop(multi_label: bool) -> None:
    rng = np.random.default_rng(3 + multi_label)
    samples, classes, heads, width, size = 40, 5, 3, 4, 9
    codes = np.where(rng.random((samples, heads * width)) < 0.5, 1, -1).astype(np.int8)
    if multi_label:
        labels = (rng.random((samples, classes)) < 0.4).astype(np.float32)
        labels[:3] = 0  # unlabelled samples count for nothing
        labels[3] = 1  # q = C
    else:
        labels = np.eye(classes, dtype=np.float32)[rng.integers(0, classes, samples)]
    book = random_codebook(heads, width, size, rng)
    got = assignment_cost(torch.from_numpy(codes), torch.from_numpy(labels), torch.from_numpy(book))
    assert got.shape == (heads, classes, size)
    np.testing.assert_allclose(got.numpy(), _literal_cost(codes, labels, book), rtol=1e-10, atol=1e-10)


def test_assignment_cost_weights_a_multi_label_sample_by_one_over_q() -> None:
    # One 1-bit head. Class 0: sample A (label {0}, code +1) and sample B (labels {0,1,2},
    # code -1, weight 1/3). Cost of codeword +1 for class 0 = (1*0 + 1/3*4) / (1 + 1/3) = 1.
    codes = torch.tensor([[1], [-1]], dtype=torch.int8)
    labels = torch.tensor([[1.0, 0, 0], [1.0, 1, 1]])
    book = torch.tensor([[[1], [-1], [1]]], dtype=torch.int8)[:, :3]
    cost = assignment_cost(codes, labels, book)
    assert cost[0, 0, 0].item() == pytest.approx(1.0)
    assert cost[0, 0, 1].item() == pytest.approx(3.0)  # (1*4 + 1/3*0) / (4/3)
    assert cost[0, 1, 0].item() == pytest.approx(4.0)


def test_assignment_cost_accepts_non_contiguous_codes() -> None:
    rng = np.random.default_rng(0)
    codes = torch.from_numpy(np.where(rng.random((8, 12)) < 0.5, 1, -1).astype(np.int8))
    labels = torch.eye(4)[torch.arange(8) % 4]
    book = torch.from_numpy(random_codebook(2, 6, 5, rng))
    strided = torch.cat([codes, codes], dim=1)[:, ::2]
    expected = assignment_cost(strided.contiguous(), labels, book)
    assert torch.allclose(assignment_cost(strided, labels, book), expected)


# ----------------------------------------------------------------------------- solvers
@pytest.mark.parametrize("seed", range(6))
def test_hungarian_is_optimal_against_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    classes, size = 4, 6
    cost = rng.random((classes, size)) * 10
    assignment = solve_assignment(cost, "hungarian", rng)
    assert len(set(assignment.tolist())) == classes
    best = min(sum(cost[c, p[c]] for c in range(classes))
               for p in itertools.permutations(range(size), classes))
    assert cost[np.arange(classes), assignment].sum() == pytest.approx(best)


def test_greedy_never_reuses_an_entry_and_is_seeded() -> None:
    rng = np.random.default_rng(0)
    cost = rng.random((12, 15))
    cost[:, 0] = -1.0  # every class wants entry 0: the result depends on the class order
    first = solve_assignment(cost, "greedy", np.random.default_rng(7))
    again = solve_assignment(cost, "greedy", np.random.default_rng(7))
    assert np.array_equal(first, again)
    assert len(set(first.tolist())) == 12 and first.min() >= 0 and first.max() < 15
    owners = {int(np.flatnonzero(solve_assignment(cost, "greedy", np.random.default_rng(s)) == 0)[0])
              for s in range(20)}
    assert len(owners) > 1  # different seeds, different class orders


def test_greedy_matches_literal_procedure() -> None:
    cost = np.random.default_rng(2).random((6, 9))
    order = np.random.default_rng(11).permutation(6)
    taken: set[int] = set()
    expected = np.empty(6, dtype=np.int64)
    for cls in order:
        choice = min((m for m in range(9) if m not in taken), key=lambda m: (cost[cls, m], m))
        expected[cls] = choice
        taken.add(choice)
    assert np.array_equal(solve_assignment(cost, "greedy", np.random.default_rng(11)), expected)


def test_solver_refusals() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(UserError, match="valid: hungarian, greedy"):
        solve_assignment(np.zeros((2, 3)), "auction", rng)
    with pytest.raises(UserError, match="one-to-one"):
        solve_assignment(np.zeros((4, 3)), "greedy", rng)


@pytest.mark.parametrize("solver", ["hungarian", "greedy"])
def test_reassign_heads_keeps_absent_classes_and_prefers_current_on_ties(solver: str) -> None:
    rng = np.random.default_rng(0)
    heads, classes, size = 3, 5, 10
    current = np.stack([rng.permutation(size)[:classes] for _ in range(heads)])
    # All-equal costs: nothing should move.
    same = reassign_heads(np.ones((heads, classes, size)), current, solver, np.random.default_rng(1))
    assert np.array_equal(same, current)
    # Class 2 absent: it keeps its entry, and nobody else may take it even if cheapest.
    cost = rng.random((heads, classes, size))
    for h in range(heads):
        cost[h, :, current[h, 2]] = -5.0
    present = np.array([True, True, False, True, True])
    new = reassign_heads(cost, current, solver, np.random.default_rng(1), present)
    assert np.array_equal(new[:, 2], current[:, 2])
    for h in range(heads):
        assert len(set(new[h].tolist())) == classes


# ----------------------------------------------------------------------------- distances
def literal_min_distance(centers: np.ndarray) -> int:
    rows = [list(map(int, row)) for row in centers]
    return min(sum(a != b for a, b in zip(rows[i], rows[j], strict=True))
               for i in range(len(rows)) for j in range(i + 1, len(rows)))


def test_hamming_distances_match_literal_count() -> None:
    rng = np.random.default_rng(0)
    a = np.where(rng.random((7, 64)) < 0.5, 1, -1).astype(np.int8)
    b = np.where(rng.random((5, 64)) < 0.5, 1, -1).astype(np.int8)
    got = hamming_distances(a, b)
    assert got.dtype == np.int64
    assert got.tolist() == [[int((x != y).sum()) for y in b] for x in a]


def test_blocked_minimum_is_exact_unless_at_most_the_floor() -> None:
    from methods.centers import _min_distance_unless_at_most

    rng = np.random.default_rng(0)
    for classes, bits in ((2, 8), (65, 16), (130, 24), (200, 32)):
        for _ in range(15):
            codes = np.where(rng.random((classes, bits)) < 0.5, 1, -1)
            exact = literal_min_distance(codes) if classes < 100 else min_pairwise_distance(codes)
            floor = int(rng.integers(-1, bits // 3))
            got = _min_distance_unless_at_most(codes, floor)
            assert got == exact if got > floor else exact <= got <= floor


def test_bernoulli_resampling_equals_the_literal_procedure() -> None:
    """The blocked early rejection must keep exactly the set the plain rule keeps: the first
    draw meeting min_distance, else the first draw with the largest minimum distance."""
    import warnings

    for classes, bits, wanted, tries in ((150, 16, 4, 30), (70, 32, 9, 40), (12, 16, 5, 50)):
        reference_rng = np.random.default_rng(3)
        best, best_distance = None, -1
        for _ in range(tries):
            draw = np.where(reference_rng.random((classes, bits)) < 0.5, 1, -1).astype(np.int8)
            distance = literal_min_distance(draw)
            if distance > best_distance:
                best, best_distance = draw, distance
            if distance >= wanted:
                best = draw
                break
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            got = bernoulli_centers(classes, bits, np.random.default_rng(3), wanted, tries)
        assert np.array_equal(got, best), (classes, bits)


# ----------------------------------------------------------------------------- MDS
SPEC_TARGETS = {196: (4, 10, 23), 555: (3, 9, 21), 100: (4, 10, 24), 80: (5, 11, 24)}


@pytest.mark.parametrize("classes", sorted(SPEC_TARGETS))
def test_gilbert_varshamov_target_spec_values(classes: int) -> None:
    assert tuple(gilbert_varshamov_target(classes, k) for k in (16, 32, 64)) == SPEC_TARGETS[classes]


def test_gilbert_varshamov_target_is_the_smallest_covering_radius() -> None:
    for classes in (2, 3, 4, 6, 10, 21, 100, 1000):
        for bits in (1, 4, 5, 7, 8, 9, 12, 15, 16, 32, 64):  # odd K, C = 2: the sum meets 2^K / C
            if 2**bits < classes:
                continue
            literal = next(d for d in range(1, bits + 2)
                           if sum(math.comb(bits, j) for j in range(d)) >= 2**bits / classes)
            assert gilbert_varshamov_target(classes, bits) == min(literal, bits), (classes, bits)


def test_mds_start_is_hadamard_then_balanced_rows() -> None:
    from scipy.linalg import hadamard

    start = mds_start(40, 16, np.random.default_rng(0))
    h = hadamard(16)
    assert np.array_equal(start[:32], np.concatenate([h, -h]))
    assert (start[32:].sum(axis=1) == 0).all()  # exactly K/2 entries -1 per extra row
    assert np.array_equal(mds_start(5, 16, np.random.default_rng(0)), h[:5])
    odd = balanced_rows(6, 13, np.random.default_rng(1))
    assert ((odd == -1).sum(axis=1) == 6).all() and set(np.unique(odd)) == {-1, 1}
    assert (mds_start(8, 12, np.random.default_rng(0)).sum(axis=1) == 0).all()  # K not 2^n


@pytest.mark.parametrize(("classes", "bits"), [(40, 16), (72, 16), (90, 32)])
def test_mds_admm_reaches_the_target(classes: int, bits: int) -> None:
    target = gilbert_varshamov_target(classes, bits)
    start = mds_start(classes, bits, np.random.default_rng(0))
    assert literal_min_distance(start) < target  # there is work to do
    centers, summary = mds_centers(classes, bits, np.random.default_rng(0))
    assert literal_min_distance(centers) >= target
    assert summary["reached"] and summary["achieved_min_distance"] == literal_min_distance(centers)
    assert summary["target_min_distance"] == target and summary["sweeps"] >= 1
    assert summary["start_min_distance"] == literal_min_distance(start)
    assert set(np.unique(centers)) == {-1, 1} and centers.dtype == np.int8
    upper = hamming_distances(centers, centers)[np.triu_indices(classes, k=1)]
    assert summary["achieved_mean_distance"] == pytest.approx(upper.mean(), abs=1e-4)


def test_mds_is_seeded_and_skips_a_start_that_meets_the_target() -> None:
    a, _ = mds_centers(40, 16, np.random.default_rng(4))
    b, _ = mds_centers(40, 16, np.random.default_rng(4))
    assert np.array_equal(a, b)
    centers, summary = mds_centers(20, 16, np.random.default_rng(0))  # Hadamard rows: 8 >= d* = 5
    assert summary["sweeps"] == 0 and summary["center_solves"] == 0
    assert np.array_equal(centers, mds_start(20, 16, np.random.default_rng(0)))


def test_mds_official_stopping_rules_also_reach_the_target() -> None:
    """patience 0: only the official rules (residual, 100 steps at rho_max, 1000 outer)."""
    centers, summary = mds_centers(40, 16, np.random.default_rng(0), patience=0)
    assert summary["early_stopped_solves"] == 0 and summary["mean_outer_iterations"] > 100
    assert literal_min_distance(centers) >= gilbert_varshamov_target(40, 16)


def test_mds_reports_a_target_it_cannot_reach() -> None:
    # 5 codewords of 4 bits pairwise >= 3 apart do not exist (at most 2: Plotkin).
    centers, summary = mds_centers(5, 4, np.random.default_rng(0), target=3, max_sweeps=2)
    assert not summary["reached"] and summary["sweeps"] == 2
    assert summary["achieved_min_distance"] == min_pairwise_distance(centers) < 3


def test_argmin_near_tie_takes_the_lowest_index_among_near_ties() -> None:
    from methods.centers import argmin_near_tie

    values = np.array([[0.5, -2.0 + 1e-12], [-2.0, 3.0]])  # the later one is 1e-12 lower
    assert argmin_near_tie(values) == 1  # a plain argmin says 2
    assert int(np.argmin(values)) == 2
    assert argmin_near_tie(np.array([0.0, -1.0, -1.0 - 1e-6])) == 2  # a real gap still wins
    assert argmin_near_tie(np.array([np.inf, 4.0, np.inf])) == 1
    assert argmin_near_tie(np.array([1e6 + 1e-4, 1e6])) == 0  # relative to the magnitude



# Compares floats with a stored record or another process: also run under AVX2 kernels (Makefile).
pytestmark = pytest.mark.float_sensitive
