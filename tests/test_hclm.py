"""sHCLM: losses against literal loops (values and gradients), the proxy pipeline (Tammes,
ITQ, distinct rows, greedy swaps checked by brute force), the similarities, setup on a
multi-label stub, refusals, and a full run's record."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import ortho_group

from bench.errors import UserError
from bench.runs.spec import RunSpec, resolve_config
from bench.training.train import train_and_evaluate
from methods.base import Task
from methods.hclm import (
    HCLM,
    assignment_objective,
    dice_similarity,
    distinct_signs,
    gaussian_class_similarity,
    greedy_assignment,
    hclm_multi_label_loss,
    hclm_proxies,
    hclm_single_label_loss,
    itq_rotation,
    quantization_error,
    swap_deltas,
    tammes_points,
    triplet_loss,
)


def make_task(bits: int = 8, classes: int = 4, multi_label: bool = False) -> Task:
    return Task(bits=bits, num_classes=classes, multi_label=multi_label, seed=0, epochs=3,
                device=torch.device("cpu"))


def config(**overrides) -> dict:
    values = resolve_config(RunSpec(method="hclm", dataset="synthetic", bits=16))
    values.update(overrides)
    return values


def grad_pair(fn, reference, h: torch.Tensor) -> None:
    a, b = h.clone().requires_grad_(True), h.clone().requires_grad_(True)
    got, want = fn(a), reference(b)
    assert float(got.detach()) == pytest.approx(float(want.detach()), rel=1e-10, abs=1e-12)
    (ga,), (gb,) = torch.autograd.grad(got, a), torch.autograd.grad(want, b)
    assert torch.allclose(ga, gb, atol=1e-12)


def proxies_and_h(seed: int = 0, batch: int = 6, classes: int = 4, bits: int = 8):
    generator = torch.Generator().manual_seed(seed)
    h = 2 * torch.randn(batch, bits, generator=generator, dtype=torch.float64)
    w = torch.where(torch.rand(classes, bits, generator=generator) < 0.5, 1.0, -1.0).double()
    return generator, h, w


# ----------------------------------------------------------------------------- losses
def test_single_label_loss_matches_a_literal_loop() -> None:
    _, h, w = proxies_and_h()
    labels = torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 3, 1, 0]), 4).double()

    def reference(x: torch.Tensor) -> torch.Tensor:
        total = x.new_zeros(())
        for n in range(x.shape[0]):
            nu = [torch.tanh(x[n, k]) for k in range(x.shape[1])]
            logits = [sum(nu[k] * w[c, k] for k in range(x.shape[1])) for c in range(4)]
            y = int(labels[n].argmax())
            total = total - (logits[y] - torch.log(sum(torch.exp(z) for z in logits)))
        return total / x.shape[0]

    grad_pair(lambda x: hclm_single_label_loss(torch.tanh(x), w, labels), reference, h)


@pytest.mark.parametrize("negative", ["freq", "one"])
def test_multi_label_balanced_bce_matches_a_literal_loop(negative: str) -> None:
    generator, h, w = proxies_and_h(1)
    labels = (torch.rand(6, 4, generator=generator) < 0.4).double()
    labels[0] = torch.tensor([1.0, 1.0, 0.0, 1.0], dtype=torch.float64)
    frequency = torch.tensor([0.1, 0.5, 0.3, 0.8], dtype=torch.float64)

    def reference(x: torch.Tensor) -> torch.Tensor:
        total = x.new_zeros(())
        for n in range(x.shape[0]):
            for c in range(4):
                z = sum(torch.tanh(x[n, k]) * w[c, k] for k in range(x.shape[1]))
                p = 1 / (1 + torch.exp(-z))
                f = float(frequency[c])
                if labels[n, c] > 0:
                    total = total - (1 - f) * torch.log(p)
                else:
                    total = total - (f if negative == "freq" else 1.0) * torch.log(1 - p)
        return total / (x.shape[0] * 4)

    grad_pair(lambda x: hclm_multi_label_loss(torch.tanh(x), w, labels, frequency, negative),
              reference, h)


@pytest.mark.parametrize("multi_label", [False, True])
def test_triplet_loss_matches_a_literal_loop(multi_label: bool) -> None:
    generator, h, _ = proxies_and_h(2, batch=7, bits=5)
    if multi_label:
        labels = (torch.rand(7, 3, generator=generator) < 0.4).double()
    else:
        labels = torch.nn.functional.one_hot(torch.tensor([0, 0, 1, 2, 1, 0, 2]), 3).double()
    margin = 0.3

    def reference(x: torch.Tensor) -> torch.Tensor:
        nu = torch.tanh(x)
        total, count = x.new_zeros(()), 0
        for a, p, n in itertools.product(range(7), repeat=3):
            share_p = float(labels[a] @ labels[p]) > 0
            share_n = float(labels[a] @ labels[n]) > 0
            if p == a or not share_p or share_n:
                continue
            d_ap = sum((nu[a, k] - nu[p, k]) ** 2 for k in range(5)) / 20
            d_an = sum((nu[a, k] - nu[n, k]) ** 2 for k in range(5)) / 20
            total = total + torch.clamp(d_ap - d_an + margin, min=0)
            count += 1
        return total / max(count, 1)

    grad_pair(lambda x: triplet_loss(torch.tanh(x), labels, margin), reference, h)


# ----------------------------------------------------------------------------- proxies
def min_unit_distance(points: np.ndarray) -> float:
    return min(float(np.linalg.norm(a - b)) for a, b in itertools.combinations(points, 2))


@pytest.mark.parametrize("num,dim,optimum", [(4, 3, math.sqrt(8 / 3)), (6, 3, math.sqrt(2)),
                                             (5, 8, math.sqrt(2 * 5 / 4))])
def test_tammes_reaches_known_optima(num: int, dim: int, optimum: float) -> None:
    """Tetrahedron, octahedron, and the regular simplex (C <= K + 1: cos = -1/(C - 1))."""
    points, summary = tammes_points(num, dim, np.random.default_rng(0))
    assert np.allclose(np.linalg.norm(points, axis=1), 1)
    assert min_unit_distance(points) == pytest.approx(optimum, abs=2e-3)
    assert summary["min_distance_unit"] == pytest.approx(min_unit_distance(points))


def test_tammes_improves_on_its_random_start() -> None:
    points, summary = tammes_points(60, 8, np.random.default_rng(3))
    start = np.random.default_rng(3).standard_normal((60, 8))
    start /= np.linalg.norm(start, axis=1, keepdims=True)
    assert summary["start_min_distance_unit"] == pytest.approx(min_unit_distance(start))
    assert min_unit_distance(points) > 1.5 * min_unit_distance(start)


def test_itq_reduces_quantization_error_and_stays_orthogonal() -> None:
    points, _ = tammes_points(40, 16, np.random.default_rng(0))
    v = 4.0 * points @ ortho_group.rvs(16, random_state=1)  # radius sqrt(K), a random pose
    rotation, summary = itq_rotation(v, 30)
    assert np.allclose(rotation @ rotation.T, np.eye(16), atol=1e-10)
    literal_none = sum((np.sign(x) - x) @ (np.sign(x) - x) for x in v)
    assert summary["error_no_rotation"] == pytest.approx(literal_none)
    assert quantization_error(v @ rotation) == pytest.approx(summary["error_rotated"])
    assert summary["error_rotated"] < 0.8 * literal_none


def test_distinct_signs_repairs_repeated_rows() -> None:
    v = np.array([[0.9, -0.2, 0.5], [0.8, -0.1, 0.4], [0.7, -0.3, 0.6], [-1.0, 1.0, 1.0]])
    codes, repaired = distinct_signs(v, np.random.default_rng(0))
    assert repaired == 2 and len({row.tobytes() for row in codes}) == 4
    assert codes[0].tolist() == [1, -1, 1]
    assert codes[1].tolist() == [1, 1, 1]  # its least confident bit (|-0.1|) flipped


def literal_objective(s: np.ndarray, codes: np.ndarray, perm: np.ndarray) -> float:
    bits, total = codes.shape[1], 0.0
    for i in range(len(perm)):
        for j in range(len(perm)):
            if i != j:
                dot = sum(int(codes[perm[i], k]) * int(codes[perm[j], k]) for k in range(bits))
                total += (s[i, j] + s[j, i]) / 2 * (1 - dot / bits)
    return total


def planted(classes: int = 8, groups: int = 2) -> np.ndarray:
    group = np.arange(classes) % groups
    s = np.where(group[:, None] == group[None, :], 0.9, 0.05)
    np.fill_diagonal(s, 1.0)
    return s


def test_swap_deltas_equal_brute_force_differences() -> None:
    rng = np.random.default_rng(0)
    s = rng.random((6, 6))
    codes = np.where(rng.random((6, 8)) < 0.5, 1, -1).astype(np.int8)
    perm = rng.permutation(6)
    sym = (s + s.T) / 2
    np.fill_diagonal(sym, 0)
    m = (codes[perm] @ codes[perm].T / 8).astype(np.float64)
    deltas = swap_deltas(sym, m, sym @ m)
    base = literal_objective(s, codes, perm)
    for a, b in itertools.combinations(range(6), 2):
        swapped = perm.copy()
        swapped[[a, b]] = swapped[[b, a]]
        assert deltas[a, b] == pytest.approx(literal_objective(s, codes, swapped) - base, abs=1e-9)


def test_greedy_assignment_is_a_local_optimum_and_beats_random() -> None:
    rng = np.random.default_rng(4)
    similarity = planted() + 0.05 * rng.random((8, 8))
    codes, _ = hclm_proxies(8, 6, np.random.default_rng(1))
    perm, summary = greedy_assignment(similarity, codes, np.random.default_rng(2))
    assert sorted(perm.tolist()) == list(range(8)) and summary["converged"]
    found = literal_objective(similarity, codes, perm)
    assert summary["objective"] == pytest.approx(found)
    for a, b in itertools.combinations(range(8), 2):  # no single swap improves
        swapped = perm.copy()
        swapped[[a, b]] = swapped[[b, a]]
        assert literal_objective(similarity, codes, swapped) >= found - 1e-9
    randoms = [literal_objective(similarity, codes, np.random.default_rng(seed).permutation(8))
               for seed in range(20)]
    assert found < min(randoms)
    assert summary["objective_random_start"] > found


def test_proxies_are_distinct_signs_with_a_summary() -> None:
    codes, summary = hclm_proxies(30, 8, np.random.default_rng(0), planted(30, 3))
    assert set(np.unique(codes)) == {-1, 1} and len(np.unique(codes, axis=0)) == 30
    assert summary["duplicate_rows"] == 0 and summary["min_distance"] >= 1
    assert summary["assignment"]["objective"] == pytest.approx(
        assignment_objective(planted(30, 3), codes, np.arange(30)))
    again, _ = hclm_proxies(30, 8, np.random.default_rng(0), planted(30, 3))
    assert np.array_equal(codes, again)


# ----------------------------------------------------------------------------- similarities
def test_gaussian_similarity_from_class_means() -> None:
    features = np.array([[0.0, 0.0], [2.0, 0.0], [4.0, 0.0], [4.0, 3.0]])
    labels = np.eye(3)[[0, 0, 1, 2]]
    similarity, kappa = gaussian_class_similarity(features, labels)
    means = [np.array([1.0, 0.0]), np.array([4.0, 0.0]), np.array([4.0, 3.0])]
    pairs = [np.linalg.norm(means[i] - means[j]) for i in range(3) for j in range(3) if i != j]
    assert kappa == pytest.approx(sum(pairs) / len(pairs))
    for i in range(3):
        for j in range(3):
            d2 = float(((means[i] - means[j]) ** 2).sum())
            assert similarity[i, j] == pytest.approx(math.exp(-d2 / (2 * kappa**2)))


def test_dice_similarity_literal() -> None:
    labels = np.array([[1, 1, 0], [1, 0, 0], [0, 1, 1], [1, 1, 1], [0, 0, 0]])
    dice = dice_similarity(labels)
    for i in range(3):
        for j in range(3):
            both = sum(1 for row in labels if row[i] and row[j])
            assert dice[i, j] == pytest.approx(2 * both / (labels[:, i].sum() + labels[:, j].sum()))


class StubContext:
    """The parts of TrainContext that setup reads."""

    def __init__(self, labels: np.ndarray) -> None:
        self.labels, self.stage_times = labels, {}
        self.train_indices = np.arange(len(labels))
        self.model = None

    def labels_of(self, indices: np.ndarray) -> np.ndarray:
        return self.labels[indices]

    def encode_with(self, module, indices):  # pragma: no cover - multi-label needs no features
        raise AssertionError("multi-label similarity uses the labels only")


def test_multi_label_setup_uses_dice_and_tag_frequencies() -> None:
    labels = np.array([[1, 1, 0, 0], [1, 0, 0, 0], [0, 1, 1, 0], [1, 1, 1, 0], [0, 0, 0, 1]], float)
    method = HCLM(config(), make_task(bits=8, classes=4, multi_label=True))
    ctx = StubContext(labels)
    method.setup(ctx)  # type: ignore[arg-type]
    assert np.allclose(method.similarity, dice_similarity(labels))
    assert method.frequency.tolist() == pytest.approx([0.6, 0.6, 0.4, 0.2])
    assert method.proxies.shape == (4, 8) and set(ctx.stage_times) == {"similarity", "proxies"}
    h = torch.randn(5, 8)
    got = method.loss(h, torch.as_tensor(labels, dtype=torch.float32), ctx)  # type: ignore[arg-type]
    want = hclm_multi_label_loss(torch.tanh(h), method.proxies, torch.as_tensor(labels).float(),
                                 method.frequency)
    assert float(got) == pytest.approx(float(want))


def test_single_label_similarity_sources() -> None:
    """`backbone` encodes the training split with the run's backbone as it is before training;
    `pixels` with a pooling module; both give the Gaussian similarity of the class means."""
    labels = np.eye(3)[[0, 0, 1, 2, 2]]
    features = np.array([[0.0, 1.0], [0.0, 3.0], [5.0, 0.0], [1.0, 1.0], [1.0, 2.0]])
    backbone = torch.nn.Linear(1, 1)

    class Context(StubContext):
        def encode_with(self, module, indices):
            self.module = module
            return features[indices]

    for source in ("backbone", "pixels"):
        ctx = Context(labels)
        ctx.model = torch.nn.Module()
        ctx.model.backbone = backbone
        method = HCLM(config(similarity_features=source), make_task(bits=8, classes=3))
        similarity = method.class_similarity(ctx)  # type: ignore[arg-type]
        assert (ctx.module is backbone) == (source == "backbone")
        assert np.allclose(similarity, gaussian_class_similarity(features, labels)[0])
        assert ("before training" in method.similarity_measure) == (source == "backbone")


def test_impossible_settings_are_refused() -> None:
    with pytest.raises(UserError, match=r"2\^3 < 9"):
        HCLM.check(config(), make_task(bits=3, classes=9))
    for key, value in (("lambda_triplet", -0.1), ("kappa", 0.0), ("triplet_margin", -1.0),
                       ("tammes_steps", 0)):
        with pytest.raises(UserError, match=f"{key}={value}"):
            HCLM.check(config(**{key: value}), make_task())


# ----------------------------------------------------------------------------- a run
def test_run_records_proxies_similarity_and_settings(tmp_path: Path) -> None:
    spec = RunSpec("hclm", "synthetic", 16, protocol="native",
                   overrides=(("batch_size", 64), ("epochs", 1), ("lambda_triplet", 0.1)))
    body = train_and_evaluate(spec, results_dir=tmp_path, device="cpu", progress_bars=False)
    record = body["method"]
    proxies = np.array(record["proxies"])
    assert proxies.shape == (6, 16) and np.array_equal(proxies, np.array(body["centers"]))
    assert record["similarity"]["measure"].endswith("average-pooled to 16x16 per channel")
    assert record["settings_used"]["kappa_resolved"] > 0
    assert record["proxies_summary"]["assignment"]["converged"]
    assert body["config"]["lr"] == 1e-3  # harmonised values are its native ones
    assert "loss_triplet" in body["history"][0]


# Compares floats with a stored record or another process: also run under AVX2 kernels (Makefile).
pytestmark = pytest.mark.float_sensitive


@pytest.mark.parametrize("pretrained", [True, False])
def test_similarity_features_follow_pretrained(pretrained: bool) -> None:
    """Spec check 8: the default resolves to the backbone's features for a pretrained run (the
    paper's choice) and to pixels otherwise, in the configuration the run id and record keep."""
    spec = RunSpec(method="hclm", dataset="synthetic", bits=16, pretrained=pretrained)
    resolved = resolve_config(spec)["similarity_features"]
    assert resolved == ("backbone" if pretrained else "pixels")
    explicit = RunSpec(method="hclm", dataset="synthetic", bits=16, pretrained=pretrained,
                       overrides=(("similarity_features", "pixels"),))
    assert resolve_config(explicit)["similarity_features"] == "pixels"  # a set value stays
    assert HCLM.params["similarity_features"].default == "auto"
