"""Issue 29 (shared/specs/methods-wave3.md): IDCH, MLH, ICS and LBHash against hand-worked values
and independent literal formulas, one property each, their refusals, and the reconstruction
mark every reconstructed method carries (bench list, the record's method_api)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch

from bench.errors import UserError
from bench.runs.spec import RunSpec, resolve_config
from methods import get_method
from methods.base import Batch, HashMethod, Param, Task
from methods.ics import ICS, ics_loss, simplex_projection
from methods.idch import IDCH, center_separation_loss, gaussian_class_loss, vertex_loss
from methods.lbhash import LBHash, byte_values, flip_rows, flip_template, map_loss, net_loss
from methods.mlh import MLH, center_branch_loss, mutual_loss, pairwise_likelihood_loss

TOL = 1e-4


def make_task(bits: int, classes: int, multi: bool = False, epochs: int = 4) -> Task:
    return Task(bits=bits, num_classes=classes, multi_label=multi, seed=0, epochs=epochs,
                device=torch.device("cpu"))


def config_of(method: str, **changes: Any) -> dict[str, Any]:
    return {**resolve_config(RunSpec(method=method, dataset="synthetic", bits=16, protocol="harmonised")),
            **changes}


@dataclass
class FakeContext:
    """What a loss hook reads of the loop: the batch (indices, features) and `log`."""

    batch: Batch | None = None
    logged: dict[str, list[float]] = field(default_factory=dict)
    device: torch.device = torch.device("cpu")
    stage_times: dict[str, float] = field(default_factory=dict)

    def log(self, name: str, value: Any) -> None:
        self.logged.setdefault(name, []).append(float(value))


def batch_of(h: torch.Tensor, labels: torch.Tensor, indices: Any = None,
             features: torch.Tensor | None = None) -> Batch:
    count = h.shape[0]
    return Batch(indices=np.arange(count) if indices is None else np.asarray(indices),
                 images=torch.zeros(count, 1, 2, 2), labels=labels,
                 features=torch.zeros(count, 3) if features is None else features, h=h)


# ============================================================================= IDCH
def idch_with_centers(mu: list[list[float]], **changes: Any) -> IDCH:
    mu_tensor = torch.tensor(mu)
    method = IDCH(config_of("idch", **changes), make_task(mu_tensor.shape[1], mu_tensor.shape[0]))
    with torch.no_grad():
        method.owned["centers"].mu.copy_(mu_tensor)
    return method


def test_idch_loss_on_the_hand_worked_input() -> None:
    """K = C = 2, mu = ((1,1), (-1,-1)), h = (1,1) of class 0: ||h - mu_0||^2 = 0, ||h - mu_1||^2
    = 8, logits (0, -1) at sigma 1/4: L_cls = ln(1 + e^-1); cos(mu_0, mu_1) = -1, softplus(-1)
    for both ordered pairs: L_sep = ln(1 + e^-1); sign(h) = h: L_q = 0."""
    method = idch_with_centers([[1.0, 1.0], [-1.0, -1.0]])
    h, labels = torch.tensor([[1.0, 1.0]]), torch.tensor([[1.0, 0.0]])
    expected = math.log(1 + math.exp(-1))
    class_term = float(gaussian_class_loss(h, method.mu.detach(), labels, 0.25))
    assert class_term == pytest.approx(0.31326, abs=TOL)
    assert class_term == pytest.approx(expected, abs=1e-6)
    assert float(center_separation_loss(method.mu.detach())) == pytest.approx(0.31326, abs=TOL)
    assert float(vertex_loss(h)) == 0.0
    ctx = FakeContext(batch=batch_of(h, labels))
    assert float(method.loss(h, labels, ctx).detach()) == pytest.approx(0.34459, abs=TOL)
    assert set(ctx.logged) == {"class", "separation", "quantization"}


def test_idch_loss_matches_a_literal_formula_on_random_input() -> None:
    """Per-sample loops for L_cls (multi-label target y / |y|_1), L_sep over ordered pairs and L_q."""
    generator = torch.Generator().manual_seed(3)
    h = torch.randn(5, 4, generator=generator)
    mu = torch.randn(3, 4, generator=generator)
    labels = torch.tensor([[1.0, 0, 0], [0, 1, 1], [0, 0, 1], [1, 1, 1], [0, 1, 0]])
    sigma = 0.7
    cls_literal = 0.0
    for n in range(5):
        logits = [-(sigma / 2) * sum((float(h[n, k]) - float(mu[c, k])) ** 2 for k in range(4))
                  for c in range(3)]
        log_z = math.log(sum(math.exp(v) for v in logits))
        positives = [c for c in range(3) if labels[n, c] > 0]
        cls_literal += -sum(logits[c] - log_z for c in positives) / len(positives)
    sep_literal = 0.0
    for i in range(3):
        for j in range(3):
            if i != j:
                cos = float(mu[i] @ mu[j]) / float(mu[i].norm() * mu[j].norm())
                sep_literal += math.log(1 + math.exp(0.5 * 4 * cos))
    q_literal = sum(sum((math.copysign(1, float(h[n, k])) - float(h[n, k])) ** 2 for k in range(4))
                    for n in range(5)) / 5
    assert float(gaussian_class_loss(h, mu, labels, sigma)) == pytest.approx(cls_literal / 5, rel=1e-5)
    assert float(center_separation_loss(mu)) == pytest.approx(sep_literal / 6, rel=1e-5)
    assert float(vertex_loss(h)) == pytest.approx(q_literal, rel=1e-5)


def test_idch_learned_centers_move_apart_and_onto_their_classes() -> None:
    """Property: started almost equal, the centers trained on the loss (h fixed at three class
    patterns) end pointing apart, each with its class's sign pattern."""
    patterns = torch.tensor([[1.0, 1, -1, -1], [-1.0, 1, 1, -1], [1.0, -1, 1, 1]])
    base = torch.tensor([[0.5, 0.5, 0.5, 0.5]])
    jitter = 0.01 * torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    method = idch_with_centers((base + jitter).tolist())
    labels = torch.eye(3).repeat(4, 1)
    h = patterns.repeat(4, 1)
    before = method.center_state()["mean_cosine"]
    optimizer = torch.optim.SGD(method.owned.parameters(), lr=0.5)
    ctx = FakeContext(batch=batch_of(h, labels))
    for _ in range(300):
        optimizer.zero_grad()
        method.loss(h, labels, ctx).backward()
        optimizer.step()
    after = method.center_state()
    assert before > 0.99 and after["mean_cosine"] < 0.0
    assert torch.equal(method.class_centers(), patterns)
    assert after["min_distance"] >= 2


def test_idch_centers_are_owned_and_optimised_at_the_run_lr() -> None:
    method = IDCH(config_of("idch"), make_task(16, 6))
    groups = method.parameter_groups(0.01, 1e-5)
    assert len(groups) == 1 and groups[0]["lr"] == 0.01
    assert groups[0]["params"][0] is method.owned["centers"].mu
    assert method.class_centers().shape == (6, 16)
    with pytest.raises(UserError, match="sigma=0"):
        IDCH.check(config_of("idch", sigma=0.0), make_task(16, 6))


# ============================================================================= MLH
def test_mlh_center_loss_on_the_hand_worked_input() -> None:
    """Centers (1,1,1,1), (1,1,-1,-1); u parallel to the first, y = (1, 0), s = sqrt(4) = 2:
    logits (2, 0), P = (e^2, 1)/(e^2 + 1); BCE summed over the two classes = 2 ln(1 + e^-2)."""
    centers = torch.tensor([[1.0, 1, 1, 1], [1.0, 1, -1, -1]])
    u = torch.tensor([[0.5, 0.5, 0.5, 0.5]])
    labels = torch.tensor([[1.0, 0.0]])
    value = float(center_branch_loss(u, labels, centers, 2.0))
    assert value == pytest.approx(0.25386, abs=TOL)
    assert value == pytest.approx(2 * math.log(1 + math.exp(-2)), abs=1e-6)


def test_mlh_pairwise_and_mutual_losses_on_hand_worked_inputs() -> None:
    """Two samples with u_p = (1,0,0,0): theta = 1/2. Same label: softplus(1/2) - 1/2; different
    labels: softplus(1/2). Mutual term: 0 for equal codes, 1 for orthogonal ones."""
    u = torch.tensor([[1.0, 0, 0, 0], [1.0, 0, 0, 0]])
    same = torch.tensor([[1.0, 0], [1.0, 0]])
    other = torch.tensor([[1.0, 0], [0.0, 1]])
    assert float(pairwise_likelihood_loss(u, same)) == pytest.approx(0.47408, abs=TOL)
    assert float(pairwise_likelihood_loss(u, other)) == pytest.approx(math.log(1 + math.exp(0.5)), abs=1e-6)
    assert float(mutual_loss(u, u)) == pytest.approx(0.0, abs=1e-7)
    assert float(mutual_loss(u, torch.tensor([[0.0, 1, 0, 0], [0.0, 0, 1, 0]]))) == pytest.approx(1.0)


def test_mlh_total_weights_and_two_branches_with_one_evaluated() -> None:
    """Property: the pairwise head is owned, trained (gradient, optimizer group) and never the
    retrieval code; the total is 4 L_C + L_P + L_M."""
    task = make_task(8, 3)
    method = MLH(config_of("mlh"), task)
    model = torch.nn.Module()
    model.hash_layer = torch.nn.Linear(5, 8)
    ctx = FakeContext()
    ctx.model = model
    method.setup(ctx)
    assert method.centers is not None and method.centers.shape == (3, 8)
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(4, 5, generator=generator)
    h = torch.randn(4, 8, generator=generator, requires_grad=True)
    labels = torch.eye(3)[[0, 1, 0, 2]]
    ctx.batch = batch_of(h, labels, features=features)
    total = method.loss(h, labels, ctx)
    u_c = torch.tanh(h)
    u_p = torch.tanh(method.owned["pair_head"](features))
    expected = (4 * center_branch_loss(u_c, labels, method.centers, math.sqrt(8))
                + pairwise_likelihood_loss(u_p, labels) + mutual_loss(u_c, u_p))
    assert float(total.detach()) == pytest.approx(float(expected.detach()), rel=1e-6)
    total.backward()
    head = method.owned["pair_head"]
    assert head.weight.grad is not None and float(head.weight.grad.abs().sum()) > 0
    assert [p for g in method.parameter_groups(1e-3, 0.0) for p in g["params"]] == list(head.parameters())
    assert torch.equal(method.retrieval_code(h.detach(), features), h.detach())


# ============================================================================= ICS
def test_ics_loss_on_the_hand_worked_input() -> None:
    """Centers (1,1), (1,-1), y = (1,1), w = (1/2,1/2), h = 0: c_bar = (1, 0), u = 0 so each bit's
    BCE is ln 2 (summed: 2 ln 2), (|u| - 1)^2 = 1, sum w ln w = -ln 2."""
    centers = torch.tensor([[1.0, 1.0], [1.0, -1.0]])
    total, parts = ics_loss(torch.zeros(1, 2), torch.tensor([[0.5, 0.5]]), centers, 0.05, 0.001)
    assert float(total) == pytest.approx(1.43560, abs=TOL)
    assert float(total) == pytest.approx(2 * math.log(2) + 0.05 - 0.001 * math.log(2), abs=1e-6)
    assert float(parts["weight_regulariser"]) == pytest.approx(-math.log(2), abs=1e-6)


def ics_method(centers: list[list[float]], labels: np.ndarray, **changes: Any) -> ICS:
    method = ICS(config_of("ics", **changes), make_task(len(centers[0]), len(centers), multi=True))
    method.centers = torch.tensor(centers)
    ctx = FakeContext()
    ctx.train_indices = np.arange(len(labels))
    ctx.labels_of = lambda indices: labels[indices]
    method.setup(ctx)
    return method


def test_ics_weight_step_projection_and_batch_mean() -> None:
    """u = (0.5, 0.5), B = 1: gradient (-2 atanh(1/2) + lambda_r (ln 1/2 + 1), lambda_r (ln 1/2 + 1)),
    a step of 0.1 and the projection give (0.55493, 0.44507). Two copies of the sample in one
    batch take half the step each (the gradient of the batch-mean loss)."""
    centers = [[1.0, 1.0], [1.0, -1.0]]
    labels = np.ones((2, 2), dtype=np.float32)
    method = ics_method(centers, labels)
    h = torch.full((1, 2), math.atanh(0.5))
    ctx = FakeContext(batch=batch_of(h, torch.ones(1, 2), indices=[0]))
    method.loss(h, torch.ones(1, 2), ctx)
    moved = method.owned["weights"].weights[0]
    assert moved.tolist() == pytest.approx([0.55493, 0.44507], abs=TOL)
    twice = ics_method(centers, labels)
    h2 = h.repeat(2, 1)
    twice.loss(h2, torch.ones(2, 2), FakeContext(batch=batch_of(h2, torch.ones(2, 2), indices=[0, 1])))
    half_step = twice.owned["weights"].weights[0]
    assert float(half_step[0]) == pytest.approx(0.5 + (0.55493 - 0.5) / 2, abs=TOL)
    assert simplex_projection(torch.tensor([[1.2, -0.4]]), torch.ones(1, 2)).tolist() == [[1.0, 0.0]]


def test_ics_projection_matches_a_bisection_reference() -> None:
    """The sort-based projection against a slow bisection on the threshold, with supports."""
    generator = torch.Generator().manual_seed(5)
    values = 2 * torch.randn(20, 6, generator=generator, dtype=torch.float64)
    support = torch.rand(20, 6, generator=generator) < 0.6
    support[:, 0] = True
    projected = simplex_projection(values, support)
    for row in range(20):
        chosen = values[row][support[row]].tolist()
        low, high = min(chosen) - 1, max(chosen)
        for _ in range(200):
            middle = (low + high) / 2
            if sum(max(v - middle, 0.0) for v in chosen) > 1:
                low = middle
            else:
                high = middle
        expected = [max(v - high, 0.0) for v in chosen]
        assert projected[row][support[row]].tolist() == pytest.approx(expected, abs=1e-9)
        assert float(projected[row][~support[row]].abs().sum()) == 0.0


def test_ics_weights_stay_on_the_label_simplex_while_training() -> None:
    """Property: after many steps every row is >= 0, sums to 1 over its positive labels and is 0
    elsewhere; single-label rows keep weight 1."""
    generator = torch.Generator().manual_seed(2)
    labels = (torch.rand(12, 4, generator=generator) < 0.5).float()
    labels[torch.arange(12), torch.randint(4, (12,), generator=generator)] = 1.0
    method = ics_method([[1.0, 1, 1, 1], [1.0, -1, 1, -1], [1.0, 1, -1, -1], [1.0, -1, -1, 1]],
                        labels.numpy())
    for _ in range(30):
        rows = torch.randperm(12, generator=generator)[:5].numpy()
        h = torch.randn(5, 4, generator=generator)
        method.loss(h, labels[rows], FakeContext(batch=batch_of(h, labels[rows], indices=rows)))
    weights = method.owned["weights"].weights
    assert float(weights.min()) >= 0.0
    assert (weights.sum(dim=1) - 1).abs().max() < 1e-5
    assert float(weights[labels == 0].abs().sum()) == 0.0
    single = labels.sum(dim=1) == 1
    assert torch.equal(weights[single], labels[single])
    assert method.owned["weights"].summary()["mean_abs_change"] > 0


# ============================================================================= LBHash
def test_lbhash_bytes_and_flips() -> None:
    bits = torch.tensor([[True, False, False, False, False, False, False, True]])
    assert byte_values(bits).tolist() == [[129]]
    template = flip_template(64, 4, np.random.default_rng(0))
    x = torch.ones(50, 64)
    flipped = flip_rows(x, template, np.random.default_rng(1))
    assert ((flipped < 0).sum(dim=1) == 4).all()  # (64 // 32)^2 bits per row
    assert len({tuple(row) for row in (flipped < 0).int().tolist()}) > 1  # positions vary by row
    chunk = flip_rows(torch.ones(50, 8), template, np.random.default_rng(2))
    assert ((chunk < 0).sum(dim=1) == int(template[:8].sum())).all()  # f_C: the template's head


def test_lbhash_losses_on_hand_worked_inputs() -> None:
    """Zero surrogate logits: every CE is ln 256, so net = m ln 256 and map = 0 (m = 4 at K = 32).
    A logit of ln 255 on the center byte: CE = ln 2; a two-label sample averages its centers."""
    zeros = torch.zeros(3, 4, 256)
    centers = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    assert float(net_loss(zeros, centers, labels)) == pytest.approx(22.1807, abs=TOL)
    target = torch.zeros(3, 4, dtype=torch.long)
    assert float(map_loss(zeros, target, 255 - target, 16.0)) == pytest.approx(0.0, abs=1e-6)
    capped = float(map_loss(zeros, target, 255 - target, 1.0))
    assert capped == pytest.approx(4 * (math.log(256) - 1), abs=1e-5)
    logits = torch.zeros(1, 1, 256)
    logits[0, 0, 17] = math.log(255)
    one = torch.tensor([[17], [99]])
    assert float(net_loss(logits, one, torch.tensor([[1.0, 0.0]]))) == pytest.approx(math.log(2), abs=1e-6)
    both = float(net_loss(logits, one, torch.tensor([[1.0, 1.0]])))
    assert both == pytest.approx((math.log(2) + math.log(510)) / 2, abs=1e-5)  # p(99) = 1 / (255 + 255)


def test_lbhash_method_loss_with_a_zeroed_surrogate() -> None:
    """Through the method: the surrogates' last layers zeroed, net = 4 ln 256, map = 0; the
    gradient reaches h (the flip is an identity in the gradient) only through the net loss."""
    method = LBHash(config_of("lbhash"), make_task(32, 4))
    for net in method.owned["surrogates"].nets:
        torch.nn.init.zeros_(net[-1].weight)
        torch.nn.init.zeros_(net[-1].bias)
    h = torch.randn(6, 32, generator=torch.Generator().manual_seed(0), requires_grad=True)
    labels = torch.eye(4)[[0, 1, 2, 3, 0, 1]]
    ctx = FakeContext(batch=batch_of(h, labels))
    total = method.loss(h, labels, ctx)
    assert ctx.logged["net"][0] == pytest.approx(4 * math.log(256), abs=1e-4)
    assert ctx.logged["map"][0] == pytest.approx(0.0, abs=1e-6)
    total.backward()
    assert h.grad is not None  # zero here (zeroed last layers), but connected


def test_lbhash_refuses_bits_not_a_multiple_of_eight_and_redraws_the_permutation() -> None:
    with pytest.raises(UserError, match=r"bits=12 is not a multiple of 8"):
        LBHash.check(config_of("lbhash"), make_task(12, 4))
    method = LBHash(config_of("lbhash"), make_task(16, 4))
    first = method.perm.clone()
    outputs = [method.on_epoch_end(epoch, None, None, FakeContext()) for epoch in range(8)]
    assert [epoch + 1 for epoch, out in enumerate(outputs) if out] == [4, 8]
    assert method.record()["permutation_redrawn_after_epochs"] == [4, 8]
    assert not torch.equal(first, method.perm)


# ============================================================================= reconstruction mark
class Rebuilt(HashMethod):
    name = "rebuilt-test"
    summary = "test-only reconstructed method"
    params = {"w": Param(1.0, "a weight", source="reconstruction: a predecessor's value"),
              "v": Param(2.0, "a read value", source="paper, section 3")}
    reconstructed = {"loss": "two terms summed"}


def test_reconstruction_names_pieces_and_reconstructed_params() -> None:
    assert Rebuilt.reconstruction() == {"loss": "two terms summed", "w": "a predecessor's value"}
    api = Rebuilt({}, make_task(8, 2)).describe_api()
    assert api["reconstruction"] == Rebuilt.reconstruction()
    assert "reconstruction" not in get_method("csq")(config_of("csq"), make_task(16, 6)).describe_api()
    for name in ("idch", "mlh", "ics", "lbhash"):
        unknowns = get_method(name).reconstruction()
        assert unknowns, name
    assert {"sigma", "lambda_sep", "lambda_q", "loss"} <= set(get_method("idch").reconstruction())
    for name in ("crh", "csq", "dpn", "hashnet", "shc", "orthohash", "mds", "hclm", "classify-then-hash"):
        assert get_method(name).reconstruction() == {}, name


def test_bench_list_marks_reconstructions(capsys: pytest.CaptureFixture[str]) -> None:
    from bench.cli import main

    assert main(["list", "methods"]) == 0
    lines = capsys.readouterr().out.splitlines()
    named = {line.split()[0]: i for i, line in enumerate(lines) if line.startswith("  ") and
             not line.startswith("   ")}
    assert {"idch", "mlh", "ics", "lbhash"} <= set(named)
    for name in ("idch", "mlh", "ics", "lbhash"):
        follow = lines[named[name] + 1]
        assert follow.strip().startswith("reconstruction:"), (name, follow)
        for unknown in get_method(name).reconstruction():
            assert unknown in follow
    csq_next = lines[named["csq"] + 1]
    assert not csq_next.strip().startswith("reconstruction:")
