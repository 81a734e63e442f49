"""Shared hash-center utilities used by CRH: head widths, codebooks, the assignment cost
tensor, the one-to-one solvers and center composition."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from bench.errors import UserError
from methods.centers import (
    assignment_cost,
    compose_centers,
    head_width,
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
