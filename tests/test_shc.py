"""SHC: similarity construction vs a literal loop, the Gilbert-Varshamov d_min, stage-2 center
optimisation on a planted similarity matrix, refusals, the stage-3 loss, and an end-to-end run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.cli import main
from bench.errors import UserError
from bench.spec import RunSpec, resolve_config
from methods.base import Task
from methods.centers import hadamard_centers, hamming_distances, min_pairwise_distance
from methods.csq import CSQ, central_similarity_loss
from methods.shc import (
    SHC,
    blocked_flips,
    center_objective,
    flip_deltas,
    gilbert_varshamov_distance,
    masked_softmax_sums,
    normalise_similarity,
    optimise_centers,
    resolve_min_distance,
)


def make_task(bits: int = 16, classes: int = 6, seed: int = 0) -> Task:
    return Task(bits=bits, num_classes=classes, multi_label=False, seed=seed, epochs=4,
                device=torch.device("cpu"))


def shc_config(**changes) -> dict:
    return {**resolve_config(RunSpec(method="shc", dataset="synthetic", bits=16)), **changes}


# ----------------------------------------------------------------------------- stage 1
def similarity_reference(logits: np.ndarray, labels: np.ndarray, normalisation: str) -> np.ndarray:
    """Literal loops over samples, classes and rows."""
    count = labels.shape[1]
    sums = [[0.0] * count for _ in range(count)]
    for n in range(len(logits)):
        own = [c for c in range(count) if labels[n, c] > 0]
        others = [c for c in range(count) if labels[n, c] == 0]
        if not own or not others:
            continue
        top = max(logits[n, c] for c in others)
        weights = {c: math.exp(logits[n, c] - top) for c in others}
        total = sum(weights.values())
        for row in own:
            for c in others:
                sums[row][c] += weights[c] / total
    symmetric = [[(sums[i][j] + sums[j][i]) / 2 for j in range(count)] for i in range(count)]
    result = np.eye(count)
    for i in range(count):
        values = [symmetric[i][j] for j in range(count) if j != i]
        if normalisation == "centre_maxabs":
            mean = sum(values) / len(values)
            deviations = [v - mean for v in values]
            scale = max(abs(d) for d in deviations)
            scaled = [d / scale if scale > 0 else 0.0 for d in deviations]
        else:
            low, high = min(values), max(values)
            scaled = [2 * (v - low) / (high - low) - 1 if high > low else 0.0 for v in values]
        for j, value in zip([j for j in range(count) if j != i], scaled, strict=True):
            result[i, j] = value
    return result


@pytest.mark.parametrize("normalisation", ["centre_maxabs", "minmax"])
@pytest.mark.parametrize("multi", [False, True])
def test_similarity_matches_literal_loop(normalisation: str, multi: bool) -> None:
    rng = np.random.default_rng(0)
    samples, count = 40, 5
    logits = 3 * rng.standard_normal((samples, count))
    if multi:
        labels = (rng.random((samples, count)) < 0.35).astype(np.float32)
        labels[0] = 1.0  # every class positive: contributes nothing
        labels[1] = 0.0  # no class: contributes nothing
    else:
        labels = np.eye(count, dtype=np.float32)[rng.integers(count, size=samples)]
    got = normalise_similarity(masked_softmax_sums(logits, labels), normalisation)
    expected = similarity_reference(logits, labels, normalisation)
    assert np.allclose(got, expected, atol=1e-12)
    assert np.allclose(np.diag(got), 1.0)
    off = ~np.eye(count, dtype=bool)
    assert got[off].min() >= -1 - 1e-12 and got[off].max() <= 1 + 1e-12
    assert np.isclose(np.abs(got[off]).max(), 1.0)


def test_masked_softmax_never_credits_the_own_class() -> None:
    logits = np.array([[10.0, 0.0, 0.0], [0.0, 10.0, 1.0]])
    labels = np.array([[1.0, 0, 0], [0, 1.0, 0]])
    sums = masked_softmax_sums(logits, labels)
    assert np.allclose(np.diag(sums), 0.0)
    assert np.allclose(sums.sum(axis=1), [1.0, 1.0, 0.0])
    assert sums[1, 2] > sums[1, 0]


# ----------------------------------------------------------------------------- d_min
def test_gilbert_varshamov_distance() -> None:
    def literal(count: int, bits: int) -> int:
        return max([d for d in range(1, bits + 1)
                    if 2**bits / sum(math.comb(bits, i) for i in range(d)) >= count], default=0)

    for count in (2, 3, 6, 10, 21, 100):
        for bits in (4, 8, 16, 32, 64):
            assert gilbert_varshamov_distance(count, bits) == literal(count, bits), (count, bits)
    assert gilbert_varshamov_distance(10, 16) == 5
    assert gilbert_varshamov_distance(10, 32) == 12
    assert gilbert_varshamov_distance(10, 64) == 27
    assert gilbert_varshamov_distance(5, 2) == 0  # 2^2 < 5: not even distinct codes
    # The Hadamard start always meets it for C <= 2K.
    for bits in (16, 32, 64):
        centers = hadamard_centers(10, bits, np.random.default_rng(0))
        assert min_pairwise_distance(centers) >= gilbert_varshamov_distance(10, bits)


# ----------------------------------------------------------------------------- stage 2
def test_flip_deltas_and_blocked_flips_match_brute_force() -> None:
    rng = np.random.default_rng(1)
    count, bits = 5, 12
    similarity = rng.uniform(-1, 1, (count, count))  # deliberately not symmetric
    np.fill_diagonal(similarity, 1.0)
    centers = np.where(rng.random((count, bits)) < 0.5, 1, -1)
    deltas = flip_deltas(similarity, centers)
    d_min = min_pairwise_distance(centers)
    blocked = blocked_flips(centers, d_min)
    base = center_objective(similarity, centers)
    for i in range(count):
        for k in range(bits):
            flipped = centers.copy()
            flipped[i, k] *= -1
            assert deltas[i, k] == pytest.approx(center_objective(similarity, flipped) - base, abs=1e-10)
            assert blocked[i, k] == (min_pairwise_distance(flipped) < d_min)
    assert blocked.any() and not blocked.all()


def planted_similarity() -> np.ndarray:
    """Classes {0, 1} and {2, 3} close, everything else mildly dissimilar."""
    similarity = np.full((6, 6), -0.2)
    for a, b in ((0, 1), (2, 3)):
        similarity[a, b] = similarity[b, a] = 0.9
    np.fill_diagonal(similarity, 1.0)
    return similarity


@pytest.mark.parametrize("bits", [16, 32])
def test_planted_similarity_ordering_and_min_distance(bits: int) -> None:
    similarity = planted_similarity()
    start = hadamard_centers(6, bits, np.random.default_rng(0))
    d_min = gilbert_varshamov_distance(6, bits)
    centers, summary = optimise_centers(similarity, start, d_min)
    distances = hamming_distances(centers, centers)
    close = [distances[0, 1], distances[2, 3]]
    far = [distances[i, j] for i in range(6) for j in range(i + 1, 6) if (i, j) not in ((0, 1), (2, 3))]
    assert max(close) < min(far)
    assert min_pairwise_distance(centers) >= d_min
    assert summary["achieved_min_distance"] == min_pairwise_distance(centers)
    assert summary["objective_after"] < summary["objective_before"]
    assert summary["objective_after"] == pytest.approx(center_objective(similarity, centers))
    assert summary["converged"] and summary["flips"] > 0
    assert set(np.unique(centers)) == {-1, 1}


def test_optimisation_never_breaks_a_larger_min_distance() -> None:
    similarity = planted_similarity()
    start = hadamard_centers(6, 16, np.random.default_rng(0))
    centers, summary = optimise_centers(similarity, start, 8)  # the start is exactly 8 apart
    assert min_pairwise_distance(centers) >= 8
    assert summary["objective_after"] <= summary["objective_before"]


def test_infeasible_constraints_are_refused() -> None:
    with pytest.raises(UserError, match="cannot get distinct 2-bit centers"):
        resolve_min_distance(make_task(bits=2, classes=5), shc_config())
    with pytest.raises(UserError, match="cannot get distinct"):
        SHC.check(shc_config(), make_task(bits=2, classes=5))
    # d_min = K: at most two codewords can be K bits apart; six cannot.
    with pytest.raises(UserError, match="no start set of 6 centers of 16 bits at least 16 bits apart"):
        SHC.check(shc_config(min_distance=16, center_tries=20), make_task(bits=16, classes=6))
    with pytest.raises(UserError, match="must be between 1 and bits"):
        SHC.check(shc_config(min_distance=17), make_task(bits=16, classes=6))
    start = hadamard_centers(6, 16, np.random.default_rng(0))
    with pytest.raises(UserError, match="below d_min=9"):
        optimise_centers(planted_similarity(), start, 9)
    with pytest.raises(UserError, match="min_distance='abc' must be an integer"):
        SHC.check(shc_config(min_distance="abc"), make_task(bits=16, classes=6))
    with pytest.raises(UserError, match="max_flips=-1 must be an integer >= 0"):
        SHC.check(shc_config(max_flips=-1), make_task(bits=16, classes=6))
    SHC.check(shc_config(), make_task(bits=16, classes=6))  # feasible: no error


def test_cli_refuses_infeasible_bits(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["run", "--methods", "shc", "--bits", "2", "--dataset", "synthetic",
                 "--results", str(tmp_path), "--quiet"])
    assert code == 2
    assert "cannot get distinct 2-bit centers" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


# ----------------------------------------------------------------------------- stage 3
def test_loss_is_csq_loss_against_the_optimised_centers() -> None:
    config = shc_config()
    method = SHC(config, make_task())
    assert isinstance(method, CSQ)
    centers, _ = optimise_centers(planted_similarity(), method.centers.numpy(), method.min_distance)
    method.set_centers(centers, np.random.default_rng(0))
    labels = torch.eye(6)[[0, 1, 2, 5]]
    h = torch.randn(4, 16, generator=torch.Generator().manual_seed(0))
    expected = central_similarity_loss(torch.tanh(h), method.centers[[0, 1, 2, 5]], config["lambda_q"])
    assert float(method.loss(h, labels, None)) == pytest.approx(float(expected))
    assert torch.equal(method.class_centers(), torch.as_tensor(centers, dtype=torch.float32))


# ----------------------------------------------------------------------------- end to end
def test_end_to_end_records_stage_times(tmp_path: Path, one_thread: None) -> None:
    code = main(["run", "--methods", "dpn,hashnet,shc", "--bits", "16", "--dataset", "synthetic",
                 "--results", str(tmp_path), "--quiet"])
    assert code == 0
    for name in ("dpn", "hashnet"):
        (path,) = (tmp_path / "runs" / "synthetic" / name).glob("*.json")
        assert json.loads(path.read_text())["status"] == "complete"
    (path,) = (tmp_path / "runs" / "synthetic" / "shc").glob("*.json")
    record = json.loads(path.read_text())
    assert record["status"] == "complete"
    stages = record["timings"]["method_stages"]
    assert set(stages) >= {"classifier", "centers"} and all(v > 0 for v in stages.values())
    optimisation = record["method"]["center_optimisation"]
    assert optimisation["achieved_min_distance"] >= optimisation["min_distance_required"] == 6
    assert optimisation["objective_after"] <= optimisation["objective_before"]
    matrix = np.array(record["method"]["similarity"]["matrix"])
    assert matrix.shape == (6, 6) and np.allclose(np.diag(matrix), 1.0)
    centers = np.array(record["centers"])
    assert min_pairwise_distance(centers) >= 6
