"""The unsupervised regime's methods (issue 31): ITQ and LSH (reference rows that fit in setup
and never train) and CIMON (a reconstruction), on hand-worked inputs and end to end on the
synthetic card."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from bench.evaluation.chance import chance_from_record
from bench.runs.spec import RunSpec
from bench.training.train import train_and_evaluate
from methods import get_method
from methods.base import Task
from methods.cimon import (
    DISSIMILAR,
    SIMILAR,
    UNUSED,
    cimon_loss,
    fit_two_gaussians,
    nt_xent,
    pair_targets,
    similar_posterior,
    similarity_loss,
)
from methods.itq import ITQ, itq_rotation, pca_directions, quantization_loss, random_rotation


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> None:
    """Tiny runs: one torch thread keeps a shared 2-core machine fast."""


def task(bits: int) -> Task:
    return Task(bits=bits, num_classes=4, multi_label=False, seed=0, epochs=1, device=torch.device("cpu"))


def run(tmp_path: Path, method: str, **overrides: Any) -> dict[str, Any]:
    settings = {"batch_size": 32, "epochs": 2, "eval_every": 1, **overrides}
    spec = RunSpec(method, "synthetic", 16, protocol="harmonised", overrides=tuple(sorted(settings.items())))
    return train_and_evaluate(spec, results_dir=tmp_path, device="cpu", progress_bars=False)


# ----------------------------------------------------------------------------- ITQ
def toy(rng: np.random.Generator, half: int = 60, dims: int = 10) -> np.ndarray:
    """A symmetric set: every point and its negative (mean exactly 0), anisotropic."""
    x = rng.standard_normal((half, dims)) * np.linspace(3.0, 0.5, dims)
    return np.concatenate([x, -x])


def test_itq_rotation_stays_orthogonal_and_its_loss_never_rises() -> None:
    rng = np.random.default_rng(0)
    data = toy(rng)
    directions, kept, how = pca_directions(data, 4)
    assert how == "exact SVD"
    assert np.allclose(directions.T @ directions, np.eye(4)) and 0 < kept < 1
    v = data @ directions
    start = random_rotation(4, rng)
    assert np.allclose(start.T @ start, np.eye(4))
    rotation, losses = itq_rotation(v, start, 50)
    assert np.allclose(rotation.T @ rotation, np.eye(4), atol=1e-10)
    assert len(losses) == 51 and all(b <= a + 1e-9 for a, b in zip(losses, losses[1:], strict=False))
    assert losses[-1] < losses[0]
    assert losses[-1] == pytest.approx(quantization_loss(v, rotation))


def test_wide_inputs_get_the_exact_top_subspace_from_the_randomized_finder() -> None:
    """A 300 x 500 matrix with a clear spectral gap after 8 directions: the sketched directions
    span the subspace of numpy's exact SVD (projectors equal) and keep the same variance."""
    rng = np.random.default_rng(4)
    signal = rng.standard_normal((300, 8)) @ (rng.standard_normal((8, 500)) * 5)
    data = signal + 0.01 * rng.standard_normal((300, 500))
    data -= data.mean(axis=0)
    directions, kept, how = pca_directions(data, 8, np.random.default_rng(5))
    assert how.startswith("randomized range finder (26 columns")
    _, singular, vt = np.linalg.svd(data, full_matrices=False)
    exact = vt[:8].T
    assert np.abs(directions @ directions.T - exact @ exact.T).max() < 1e-8
    assert kept == pytest.approx((singular[:8] ** 2).sum() / (singular**2).sum(), rel=1e-10)
    # the same seed gives the same directions
    again, _, _ = pca_directions(data, 8, np.random.default_rng(5))
    assert np.array_equal(directions, again)


def test_itq_codes_are_balanced_on_a_symmetric_set() -> None:
    """sign(-v) = -sign(v): on a set closed under negation every bit is +1 on exactly half."""
    data = toy(np.random.default_rng(1))
    method = ITQ({"iterations": 50, "init": "random"}, task(4))
    weights, summary = method.fit(data - data.mean(axis=0), np.random.default_rng(2))
    codes = np.where(data @ weights >= 0, 1, -1)
    assert (codes.mean(axis=0) == 0).all()
    assert summary["bit_balance"] == {"min": 0.5, "max": 0.5}


def test_itq_by_hand_on_two_dimensions() -> None:
    """Points on the two diagonals, (t, t) and (t, -t): the codes' quantization loss is lowest when
    the rotation puts them on the corners (+-1, +-1), which the identity already does; ITQ
    from the identity keeps it and the loss is sum (|v_i| - 1)^2 over coordinates."""
    t = np.array([0.5, 1.0, 1.5])
    diagonals = [np.stack([t, t], 1), np.stack([t, -t], 1)]
    v = np.concatenate(diagonals + [-d for d in diagonals])
    rotation, losses = itq_rotation(v, np.eye(2), 5)
    assert np.allclose(np.abs(rotation), np.eye(2), atol=1e-9)
    assert losses[0] == pytest.approx(float(((np.abs(v) - 1) ** 2).sum()))  # = 4 x 2 x 0.5 = 4
    assert losses[0] == pytest.approx(4.0) and losses[-1] == pytest.approx(4.0)


@pytest.mark.parametrize("method", ["itq", "lsh"])
def test_fitted_methods_end_to_end(method: str, tmp_path: Path) -> None:
    body = run(tmp_path / "a", method)
    assert body["history"] == [] and body["selection"]["best_epoch"] == 0
    assert body["regime"]["trains"] is False and body["timings"]["train"] == 0.0
    assert body["method"]["settings_used"]["input_dim"] == 144  # 12 x 12 pixels, flattened
    chance = chance_from_record(body)
    assert chance is not None and body["metrics"]["mAP"] > chance.mAP + 0.10
    again = run(tmp_path / "b", method, lr=0.0, epochs=4)  # nothing trains: nothing else matters
    assert again["metrics"] == body["metrics"]
    if method == "itq":
        losses = body["method"]["fit"]["quantization_loss"]
        assert len(losses) == 51 and losses[-1] < losses[0]


def test_lsh_is_seeded(tmp_path: Path) -> None:
    first = run(tmp_path / "a", "lsh")
    spec = RunSpec("lsh", "synthetic", 16, seed=1, protocol="harmonised",
                   overrides=(("batch_size", 32), ("epochs", 2), ("eval_every", 1)))
    other = train_and_evaluate(spec, results_dir=tmp_path / "b", device="cpu", progress_bars=False)
    assert first["metrics"]["mAP"] != other["metrics"]["mAP"]


# ----------------------------------------------------------------------------- CIMON
def test_cimon_similarity_term_by_hand() -> None:
    u1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    u2 = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # cosines [[1, 1], [0, 0]]
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    weights = torch.tensor([[1.0, 0.5], [1.0, 1.0]])
    # (1 (1-1)^2 + 0.5 (1-0)^2 + 1 (0-0)^2 + 1 (0-1)^2) / 2^2 = 1.5 / 4
    assert float(similarity_loss(u1, u2, targets, weights)) == pytest.approx(0.375)


def test_nt_xent_by_hand() -> None:
    one = torch.tensor([[1.0, 2.0]])
    assert float(nt_xent(one, -one, 0.5)) == pytest.approx(0.0)  # the positive is the only other
    # Two images, identical views e1, e2, temperature 1: each anchor has its positive at cosine 1
    # and two negatives at 0: -log(e / (e + 2)).
    u = torch.eye(2)
    assert float(nt_xent(u, u, 1.0)) == pytest.approx(math.log(2 + math.e) - 1)
    total, similarity, contrast = cimon_loss(u, u, torch.eye(2), torch.ones(2, 2), 1.0, 0.5)
    assert float(similarity) == pytest.approx(0.0) and float(total) == pytest.approx(0.5 * float(contrast))


def test_two_gaussians_are_recovered() -> None:
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(-0.2, 0.05, 30000), rng.normal(0.4, 0.1, 70000)])
    fit = fit_two_gaussians(rng.permutation(values), 200)
    assert fit["mean_low"] == pytest.approx(-0.2, abs=0.005)
    assert fit["mean_high"] == pytest.approx(0.4, abs=0.005)
    assert fit["std_low"] == pytest.approx(0.05, abs=0.005)
    assert fit["std_high"] == pytest.approx(0.1, abs=0.005)
    assert fit["weight_high"] == pytest.approx(0.7, abs=0.01)


def test_confident_pairs_by_hand() -> None:
    """Equal weights and widths 0.2 at means -0.5 and 0.5: posterior(c) = sigmoid(25 c), so 0.3 is
    confidently similar (0.99945), 0.02 is not confident (0.622) and -0.3 confidently
    dissimilar; a pair across clusters is dissimilar with weight 1 whatever its cosine."""
    gmm = {"weight_low": 0.5, "mean_low": -0.5, "std_low": 0.2,
           "weight_high": 0.5, "mean_high": 0.5, "std_high": 0.2}
    posterior = float(similar_posterior(torch.tensor([0.02]), gmm)[0])
    assert posterior == pytest.approx(1 / (1 + math.exp(-0.5)), abs=1e-6)
    cosines = torch.tensor([[1.0, 0.3, 0.02, 0.3],
                            [0.3, 1.0, -0.3, 0.1],
                            [0.02, -0.3, 1.0, 0.0],
                            [0.3, 0.1, 0.0, 1.0]])
    clusters = np.array([0, 0, 0, 1])
    kinds, weights = pair_targets(cosines, clusters, gmm, confidence=0.9)
    r = 1 / (1 + math.exp(-7.5))
    assert kinds[0, 1] == SIMILAR and float(weights[0, 1]) == pytest.approx(r, abs=1e-6)
    assert kinds[0, 2] == UNUSED and float(weights[0, 2]) == 0.0
    assert kinds[1, 2] == DISSIMILAR and float(weights[1, 2]) == pytest.approx(r, abs=1e-6)
    assert kinds[0, 3] == DISSIMILAR and float(weights[0, 3]) == 1.0  # cross-cluster, cosine 0.3
    assert (kinds.diagonal() == SIMILAR).all() and (weights.diagonal() == 1).all()
    assert torch.equal(kinds, kinds.T) and torch.equal(weights, weights.T)


def test_cimon_two_epochs_on_the_synthetic_card(tmp_path: Path) -> None:
    body = run(tmp_path, "cimon")
    assert len(body["history"]) == 2 and body["selection"]["best_epoch"] == 2
    assert all(math.isfinite(h["loss"]) and h["loss_contrast"] > 0 for h in body["history"])
    assert body["regime"]["supervised"] is False and body["regime"]["views"] == 2
    similarity = body["method"]["similarity"]
    assert similarity["clusters"] == 6 and sum(similarity["cluster_sizes"]) == body["split"]["sizes"]["train"]
    assert similarity["features"].startswith("flattened") and similarity["feature_dim"] == 144
    assert similarity["mixture"]["mean_low"] < similarity["mixture"]["mean_high"]
    assert sum(similarity["pairs"].values()) == pytest.approx(1.0)
    assert "centers" not in body
    assert body["method_api"]["reconstruction"] == get_method("cimon").reconstruction()
    assert body["config"]["similarity_features"] == "pixels"  # auto, from scratch


def test_cimon_reads_the_backbone_when_asked(tmp_path: Path) -> None:
    """The path a pretrained run takes (`--weights FILE`: similarity_features auto -> backbone)."""
    body = run(tmp_path, "cimon", epochs=1, similarity_features="backbone")
    similarity = body["method"]["similarity"]
    assert similarity["features"] == "backbone features before training"
    assert body["method_api"]["reconstruction"]["similarity_features"].startswith("paper: pretrained VGG")
