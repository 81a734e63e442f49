"""Hash-center utilities shared by center-based methods (CSQ, SHC, CRH, DPN).

Pure functions on NumPy / torch arrays; every random choice takes an explicit seeded
generator so a run is reproducible from its record.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from scipy.linalg import hadamard
from scipy.optimize import linear_sum_assignment

from bench.errors import UserError


# ----------------------------------------------------------------------------- CSQ centers
def hadamard_centers(num_classes: int, bits: int, rng: np.random.Generator,
                     max_tries: int = 1000) -> np.ndarray:
    """CSQ centers (Yuan et al., CVPR 2020): rows of [H_K; -H_K] when 2K >= C, else Bernoulli
    vectors resampled until every pair is at least K/4 bits apart (warns when relaxed)."""
    if bits & (bits - 1) == 0 and 2 * bits >= num_classes:
        h = hadamard(bits).astype(np.int8)
        return np.concatenate([h, -h])[:num_classes].copy()
    return bernoulli_centers(num_classes, bits, rng, min_distance=bits / 4, max_tries=max_tries)


def bernoulli_centers(num_classes: int, bits: int, rng: np.random.Generator,
                      min_distance: float = 0.0, max_tries: int = 1000) -> np.ndarray:
    """Random ±1 centers; with min_distance > 0, resample the whole set until the minimum
    pairwise Hamming distance reaches it, keeping the best set if it never does."""
    best, best_distance = None, -1
    for _ in range(max(1, max_tries)):
        centers = np.where(rng.random((num_classes, bits)) < 0.5, 1, -1).astype(np.int8)
        distance = min_pairwise_distance(centers)
        if distance > best_distance:
            best, best_distance = centers, distance
        if distance >= min_distance:
            return centers
    warnings.warn(
        f"no {num_classes} random {bits}-bit centers at Hamming distance >= {min_distance} "
        f"in {max_tries} tries; relaxed to {best_distance}",
        stacklevel=2,
    )
    return best


def hamming_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise Hamming distances between ±1 rows: (K - <a, b>) / 2."""
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    return (a.shape[1] - a @ b.T) // 2


def min_pairwise_distance(centers: np.ndarray) -> int:
    if len(centers) < 2:
        return int(centers.shape[1])
    distances = hamming_distances(centers, centers)
    np.fill_diagonal(distances, centers.shape[1] + 1)
    return int(distances.min())


def multi_label_targets(labels: torch.Tensor, centers: torch.Tensor,
                        tie_breaker: torch.Tensor) -> torch.Tensor:
    """CSQ's center of a multi-label sample: the sign of the sum of its class centers, with a
    tied bit taking the bit of a fixed random vector. Single-label rows get their center."""
    summed = labels @ centers
    return torch.where(summed == 0, tie_breaker.expand_as(summed), torch.sign(summed))


# ----------------------------------------------------------------------------- CRH codebooks
def valid_heads(bits: int, codebook_size: int) -> list[int]:
    """Every head count H that divides K and leaves 2^(K/H) >= M distinct sub-codes."""
    return [h for h in range(1, bits + 1) if bits % h == 0 and 2 ** (bits // h) >= codebook_size]


def head_width(bits: int, codebook_size: int, heads: int | None = None) -> tuple[int, int]:
    """(heads, bits per head). Default: the smallest divisor d of K with 2^d >= M, so that the
    codebook fits and the number of heads (hence of distinct composed centers) is largest.
    An explicit `heads` is refused (UserError, one line with the valid choices) when it does
    not divide K or leaves too few bits per head for M distinct codewords."""
    valid = valid_heads(bits, codebook_size)
    alternative = f"valid heads for K={bits}, M={codebook_size}: {valid}" if valid else (
        f"no head count works: K={bits} bits hold at most {2**bits} codewords; use more bits "
        f"or a smaller codebook")
    if heads is not None:
        if isinstance(heads, bool) or not isinstance(heads, (int, np.integer)) or heads < 1:
            raise UserError(f"heads={heads!r} is not a positive integer; {alternative}")
        if bits % heads:
            raise UserError(f"heads={heads} does not divide bits={bits}; {alternative}")
        width = bits // heads
        if 2**width < codebook_size:
            raise UserError(
                f"heads={heads} leaves {width} bits per head, too few for M={codebook_size} distinct "
                f"codewords (2^{width} < {codebook_size}); {alternative}"
            )
        return int(heads), width
    if not valid:
        raise UserError(f"bits={bits} cannot hold M={codebook_size} distinct codewords; {alternative}")
    return max(valid), bits // max(valid)


def random_codebook(heads: int, width: int, size: int, rng: np.random.Generator,
                    min_distance: int = 0, max_tries: int = 10_000) -> np.ndarray:
    """[H, M, d] ±1 sub-codebooks of M distinct codewords per head, uniform over {-1,+1}^d.

    For d <= 20 draw M distinct integers without replacement; above, draw and reject
    duplicates. `min_distance` > 0 is the optional rejection-sampling ablation."""
    if 2**width < size:
        raise UserError(f"{width}-bit heads hold at most {2**width} distinct codewords, not {size}")
    books = np.empty((heads, size, width), dtype=np.int8)
    bit_weights = 1 << np.arange(min(width, 20), dtype=np.int64)
    for head in range(heads):
        if min_distance > 0:
            books[head] = _spread_codewords(width, size, rng, min_distance, max_tries)
        elif width <= 20:
            ints = rng.choice(2**width, size=size, replace=False)
            books[head] = np.where((ints[:, None] & bit_weights[None, :]) > 0, 1, -1)
        else:
            rows = np.empty((0, width), dtype=np.int8)
            while len(rows) < size:
                fresh = np.where(rng.random((size - len(rows), width)) < 0.5, 1, -1).astype(np.int8)
                stacked = np.concatenate([rows, fresh])
                _, first = np.unique(stacked, axis=0, return_index=True)
                rows = stacked[np.sort(first)]  # keep first occurrences, in draw order
            books[head] = rows
    return books


def _spread_codewords(width: int, size: int, rng: np.random.Generator, min_distance: int,
                      max_tries: int) -> np.ndarray:
    """Sequential rejection: accept a random codeword if it is at least `min_distance` bits
    from every codeword accepted so far."""
    chosen = np.empty((size, width), dtype=np.int8)
    count = 0
    for _ in range(max_tries):
        candidate = np.where(rng.random(width) < 0.5, 1, -1).astype(np.int8)
        if count == 0 or int((chosen[:count] != candidate).sum(axis=1).min()) >= min_distance:
            chosen[count] = candidate
            count += 1
            if count == size:
                return chosen
    raise UserError(
        f"could not draw {size} {width}-bit codewords at least {min_distance} bits apart in "
        f"{max_tries} tries; lower codebook_min_distance (0 disables it)"
    )


def assignment_cost(codes: torch.Tensor, labels: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """[H, C, M] label-weighted mean squared distance between each class's sub-codes and each
    codeword, by matrix products (never the [N, H, C, M, d] tensor).

    codes [N, K] (±1), labels [N, C] multi-hot, codebook [H, M, d] with K = H * d. A sample
    with q labels weighs 1/q for each of its classes. A class with no sample has an all-zero
    row (callers decide what such a class does; see `reassign_heads`)."""
    heads, _, width = codebook.shape
    if codes.shape[1] != heads * width:
        raise ValueError(f"codes have {codes.shape[1]} bits, codebook covers {heads} x {width}")
    codes = codes.to(torch.float64)
    codebook = codebook.to(device=codes.device, dtype=torch.float64)
    labels = labels.to(device=codes.device, dtype=torch.float64)
    weights = labels / labels.sum(dim=1, keepdim=True).clamp_min(1.0)  # [N, C]
    class_mass = weights.sum(dim=0)  # [C]
    sub_codes = codes.reshape(codes.shape[0], heads, width)  # [N, H, d]
    weighted_sum = torch.einsum("nc,nhd->hcd", weights, sub_codes)  # [H, C, d]
    weighted_sq = weights.T @ (sub_codes**2).sum(dim=2)  # [C, H]
    cross = torch.einsum("hcd,hmd->hcm", weighted_sum, codebook)  # [H, C, M]
    code_sq = (codebook**2).sum(dim=2)  # [H, M]
    total = weighted_sq.T[:, :, None] + class_mass[None, :, None] * code_sq[:, None, :] - 2 * cross
    return total / class_mass.clamp_min(1e-12)[None, :, None]


def solve_assignment(cost: np.ndarray, solver: str, rng: np.random.Generator) -> np.ndarray:
    """One-to-one class -> codeword assignment for one head. cost is [C, M] with M >= C.

    `hungarian` is optimal (scipy's linear_sum_assignment); `greedy` lets classes, in a seeded
    random order, each take their cheapest free codeword (lowest index on ties)."""
    num_classes, size = cost.shape
    if size < num_classes:
        raise UserError(f"cannot assign {num_classes} classes to {size} codewords one-to-one")
    if solver == "hungarian":
        rows, cols = linear_sum_assignment(cost)
        assignment = np.empty(num_classes, dtype=np.int64)
        assignment[rows] = cols
        return assignment
    if solver == "greedy":
        taken = np.zeros(size, dtype=bool)
        assignment = np.empty(num_classes, dtype=np.int64)
        for cls in rng.permutation(num_classes):
            choice = int(np.argmin(np.where(taken, np.inf, cost[cls])))
            assignment[cls] = choice
            taken[choice] = True
        return assignment
    raise UserError(f"unknown assignment solver '{solver}'; valid: hungarian, greedy")


def reassign_heads(cost: np.ndarray, current: np.ndarray, solver: str, rng: np.random.Generator,
                   present: np.ndarray | None = None) -> np.ndarray:
    """New [H, C] assignment from the [H, C, M] cost, each head solved independently.

    Classes absent from the epoch (`present` False) have no evidence, so they keep their
    codeword and the others are assigned among the remaining ones. Exact ties are broken in
    favour of the current codeword (a 1e-9 bonus), so equal-cost swaps are not counted as
    changes; the optimum is otherwise unchanged."""
    heads, num_classes, _ = cost.shape
    present = np.ones(num_classes, dtype=bool) if present is None else np.asarray(present, dtype=bool)
    rows = np.flatnonzero(present)
    new = np.array(current, dtype=np.int64, copy=True)
    if len(rows) == 0:
        return new
    for head in range(heads):
        free = np.setdiff1d(np.arange(cost.shape[2]), current[head][~present])
        sub = cost[head][np.ix_(rows, free)].astype(np.float64, copy=True)
        stay = free[None, :] == current[head][rows][:, None]
        sub -= 1e-9 * stay
        new[head, rows] = free[solve_assignment(sub, solver, rng)]
    return new


def compose_centers(codebook: np.ndarray, assignment: np.ndarray) -> np.ndarray:
    """Class centers [C, K] = concatenation over heads of each class's assigned codeword.

    codebook [H, M, d], assignment [H, C] -> [C, H * d]."""
    heads, _, width = codebook.shape
    picked = codebook[np.arange(heads)[:, None], assignment]  # [H, C, d]
    return picked.transpose(1, 0, 2).reshape(assignment.shape[1], heads * width)
