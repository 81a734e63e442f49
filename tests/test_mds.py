"""MDS: the loss against literal per-sample loops (values and gradients, single- and multi-label),
the pairwise memory-bank term, the momentum encoder's EMA, the bank's writes, refusals, the
retrieval output and an end-to-end run with the pairwise term switched on."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from bench.cli import main
from bench.errors import UserError
from bench.network.backbones import HashNetwork, build_backbone
from bench.runs.records import read_record
from bench.runs.spec import RunSpec, resolve_config
from methods.base import Batch, Task
from methods.centers import gilbert_varshamov_target, min_pairwise_distance
from methods.mds import MDS, center_bce_loss, pair_bank_loss


def make_task(bits: int = 8, classes: int = 4, epochs: int = 20, multi: bool = False) -> Task:
    return Task(bits=bits, num_classes=classes, multi_label=multi, seed=0, epochs=epochs,
                device=torch.device("cpu"))


def mds_config(**changes: Any) -> dict[str, Any]:
    return {**resolve_config(RunSpec(method="mds", dataset="synthetic", bits=16)), **changes}


def random_labels(count: int, classes: int, multi: bool, generator: torch.Generator) -> torch.Tensor:
    if multi:
        labels = (torch.rand(count, classes, generator=generator) < 0.4).float()
        labels[0] = 0.0  # a sample without labels is allowed
        return labels
    return torch.eye(classes)[torch.randint(classes, (count,), generator=generator)]


# ----------------------------------------------------------------------------- literal losses
def literal_center_loss(u: torch.Tensor, labels: torch.Tensor, centers: torch.Tensor,
                        scale: float) -> torch.Tensor:
    """Scalar loops: cosines, softmax over classes, BCE per (sample, class), mean."""
    total = 0.0
    count, classes = labels.shape
    for i in range(count):
        norm_u = torch.sqrt(sum(u[i, k] ** 2 for k in range(u.shape[1])))
        logits = []
        for j in range(classes):
            norm_c = math.sqrt(sum(float(c) ** 2 for c in centers[j]))
            dot = sum(u[i, k] * float(centers[j, k]) for k in range(u.shape[1]))
            logits.append(scale * dot / (norm_u * norm_c))
        denominator = sum(torch.exp(v) for v in logits)
        for j in range(classes):
            p = torch.exp(logits[j]) / denominator
            y = float(labels[i, j])
            total = total - (y * torch.log(p) + (1 - y) * torch.log(1 - p))
    return total / (count * classes)


def literal_pair_loss(u: torch.Tensor, labels: torch.Tensor, bank: torch.Tensor,
                      bank_labels: torch.Tensor) -> torch.Tensor:
    total, pairs = 0.0, 0
    for i in range(len(u)):
        for j in range(len(bank)):
            if float(labels[i] @ bank_labels[j]) > 0:
                cosine = (u[i] @ bank[j]) / (torch.linalg.norm(u[i]) * torch.linalg.norm(bank[j]))
                total = total + torch.log(1 + torch.exp((1 - cosine) / 2))
                pairs += 1
    return total / max(pairs, 1)


@pytest.mark.parametrize("multi", [False, True])
def test_center_loss_matches_literal_loop(multi: bool) -> None:
    generator = torch.Generator().manual_seed(1)
    centers = torch.where(torch.rand(5, 8, generator=generator) < 0.5, 1.0, -1.0)
    labels = random_labels(6, 5, multi, generator)
    u = torch.tanh(torch.randn(6, 8, generator=generator, dtype=torch.float64)).requires_grad_()
    got = center_bce_loss(u, labels, centers, math.sqrt(8))
    u_ref = u.detach().clone().requires_grad_()
    expected = literal_center_loss(u_ref, labels, centers, math.sqrt(8))
    assert float(got.detach()) == pytest.approx(float(expected.detach()), rel=1e-10)
    got.backward()
    expected.backward()
    assert torch.allclose(u.grad, u_ref.grad, rtol=1e-8, atol=1e-12)


def test_center_loss_stays_finite_where_p_rounds_to_one() -> None:
    centers = torch.tensor([[1.0] * 64, [-1.0] * 64])
    u = torch.ones(1, 64, requires_grad=True)  # cosine 1 vs -1 at scale 40: p = 1 - e^-80
    loss = center_bce_loss(u, torch.tensor([[1.0, 0.0]]), centers, 40.0)
    loss.backward()
    assert math.isfinite(float(loss.detach())) and torch.isfinite(u.grad).all()


@pytest.mark.parametrize("multi", [False, True])
def test_pair_loss_matches_literal_loop(multi: bool) -> None:
    generator = torch.Generator().manual_seed(2)
    labels = random_labels(5, 4, multi, generator)
    bank_labels = random_labels(9, 4, multi, generator)
    bank_labels[3] = 0.0  # an unwritten bank row: never a positive
    bank = torch.randn(9, 8, generator=generator, dtype=torch.float64)
    u = torch.randn(5, 8, generator=generator, dtype=torch.float64).requires_grad_()
    got = pair_bank_loss(u, labels.double(), bank, bank_labels.double())
    u_ref = u.detach().clone().requires_grad_()
    expected = literal_pair_loss(u_ref, labels, bank, bank_labels)
    assert float(got.detach()) == pytest.approx(float(expected.detach()), rel=1e-10)
    got.backward()
    expected.backward()
    assert torch.allclose(u.grad, u_ref.grad, rtol=1e-8, atol=1e-12)
    none = pair_bank_loss(u, labels.double(), bank, torch.zeros_like(bank_labels).double())
    assert float(none.detach()) == 0.0


# ----------------------------------------------------------------------------- the method
class Context:
    """The parts of a run MDS uses: the network, the train indices, the batch, a log."""

    def __init__(self, bits: int, train_indices: np.ndarray) -> None:
        torch.manual_seed(0)
        self.model = HashNetwork(build_backbone("tiny_cnn", 1), bits)
        self.train_indices = train_indices
        self.device = torch.device("cpu")
        self.stage_times: dict[str, float] = {}
        self.logged: dict[str, list[float]] = {}
        self.epoch = 0
        self.batch: Batch | None = None

    def log(self, name: str, value: Any) -> None:
        self.logged.setdefault(name, []).append(float(value))

    def step(self, method: MDS, images: torch.Tensor, indices: np.ndarray,
             labels: torch.Tensor) -> torch.Tensor:
        features = self.model.features(images)
        h = self.model.hash_layer(features)
        self.batch = Batch(indices=indices, images=images, labels=labels, features=features, h=h)
        return method.loss(h, labels, self)


def literal_batch_norm(h: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    columns = []
    for k in range(h.shape[1]):
        column = h[:, k]
        mean = sum(column) / len(column)
        variance = sum((v - mean) ** 2 for v in column) / len(column)  # biased, as in training
        columns.append(torch.stack([(v - mean) / torch.sqrt(variance + eps) for v in column]))
    return torch.stack(columns, dim=1)


@pytest.mark.parametrize("multi", [False, True])
def test_method_loss_is_the_official_sum(multi: bool) -> None:
    """L = L_c(tanh(BN(h))) + lambda_q mean((|u| - 1)^2) (+ beta L_p from pair_start_epoch)."""
    task = make_task(multi=multi)
    method = MDS(mds_config(lambda_q=0.3, beta=0.7, pair_start_epoch=1), task)
    ctx = Context(task.bits, np.arange(100, 112))
    method.setup(ctx)
    generator = torch.Generator().manual_seed(3)
    images = torch.randn(6, 1, 12, 12, generator=generator)
    labels = random_labels(6, task.num_classes, multi, generator)
    indices = np.array([100, 103, 104, 107, 110, 111])
    for epoch, with_pair in ((0, False), (1, True)):
        ctx.epoch = epoch
        loss = ctx.step(method, images, indices, labels)
        h = ctx.batch.h
        (grad,) = torch.autograd.grad(loss, h)
        h_ref = h.detach().clone().requires_grad_()
        u = torch.tanh(literal_batch_norm(h_ref))
        expected = literal_center_loss(u, labels, method.centers, math.sqrt(task.bits))
        expected = expected + 0.3 * sum((abs(v) - 1) ** 2 for v in u.flatten()) / u.numel()
        if with_pair:
            bank = method.owned["bank"]
            expected = expected + 0.7 * literal_pair_loss(u, labels, bank.codes, bank.labels)
        assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
        (grad_ref,) = torch.autograd.grad(expected, h_ref)
        assert torch.allclose(grad, grad_ref, rtol=1e-4, atol=1e-6)
        assert ("pair" in ctx.logged) == with_pair


def test_momentum_encoder_is_an_ema_of_the_network() -> None:
    task = make_task()
    method = MDS(mds_config(key_momentum=0.9, pair_start_epoch=1), task)
    ctx = Context(task.bits, np.arange(10))
    method.setup(ctx)
    key = method.owned["key"]
    assert all(not p.requires_grad for p in key.parameters())
    optimised = {id(p) for group in method.parameter_groups(1e-3, 0.0) for p in group["params"]}
    assert optimised == {id(p) for p in method.owned["norm"].parameters()}  # not the key encoder
    keys = [*key.network.parameters(), *key.norm.parameters()]
    queries = [*ctx.model.parameters(), *method.owned["norm"].parameters()]
    old = [p.detach().clone().double() for p in keys]
    buffers = [b.clone() for b in key.buffers()]
    with torch.no_grad():  # an "optimizer step" on the query side
        for p in queries:
            p.add_(torch.randn_like(p))
    method.after_step(ctx)
    for index, (before, query, now) in enumerate(zip(old, queries, keys, strict=True)):
        expected = 0.9 * before + 0.1 * query.detach().double()
        assert torch.allclose(now.double(), expected, rtol=0, atol=1e-6), index
        assert not torch.equal(now, query)
    # BatchNorm statistics are not averaged (they come from the key encoder's own passes)
    assert all(torch.equal(a, b) for a, b in zip(buffers, key.buffers(), strict=True))


def test_bank_holds_the_key_codes_from_the_epoch_before_the_term() -> None:
    task = make_task()
    method = MDS(mds_config(pair_start_epoch=2), task)
    ctx = Context(task.bits, np.array([5, 9, 12, 20]))
    method.setup(ctx)
    images = torch.randn(2, 1, 12, 12)
    labels = torch.eye(task.num_classes)[[1, 3]]
    bank = method.owned["bank"]
    ctx.epoch = 0  # two epochs before the term: the key encoder is not run
    ctx.step(method, images, np.array([12, 5]), labels)
    assert float(bank.codes.abs().sum()) == 0.0 and float(bank.labels.sum()) == 0.0
    ctx.epoch = 1
    ctx.step(method, images, np.array([12, 5]), labels)
    with torch.no_grad():
        method.owned["key"].train()
        expected = method.owned["key"](images)
    assert torch.allclose(bank.codes[[2, 0]], expected, atol=1e-6)
    assert torch.equal(bank.labels[[2, 0]], labels) and float(bank.labels[[1, 3]].sum()) == 0.0
    assert "pair" not in ctx.logged


def test_centers_are_the_admm_centers_at_d_star() -> None:
    task = make_task(bits=16, classes=40)
    method = MDS(mds_config(), task)
    method.setup(Context(16, np.arange(8)))
    centers = method.centers.numpy().astype(int)
    assert min_pairwise_distance(centers) >= gilbert_varshamov_target(40, 16) == 5
    summary = method.record()["center_generation"]
    assert summary["reached"] and summary["sweeps"] >= 1 and summary["seconds"] > 0


def test_short_runs_and_pair_none_are_named_honestly() -> None:
    assert MDS(mds_config(), make_task(epochs=4)).record()["pair_term"].startswith("off: the run has 4")
    record = MDS(mds_config(pair_loss="none"), make_task()).record()
    assert record["pair_loss"] == "none" and "variant without" in record["pair_term"]
    assert record["grad_norm_clip"] == {"official": 5.0, "applied": 5.0}  # native protocol
    harmonised = MDS(mds_config(grad_clip=0.0), make_task()).record()
    assert harmonised["grad_norm_clip"] == {"official": 5.0, "applied": 0.0}
    assert MDS(mds_config(), make_task(epochs=20)).pair_active


def test_retrieval_code_is_bn_in_eval_mode() -> None:
    method = MDS(mds_config(), make_task())
    norm = method.owned["norm"]
    norm.running_mean.fill_(0.5)
    norm.running_var.fill_(4.0)
    method.owned.eval()
    h = torch.randn(3, 8)
    assert torch.allclose(method.retrieval_code(h, h), (h - 0.5) / torch.sqrt(torch.tensor(4.0 + 1e-5)))


@pytest.mark.parametrize(("change", "fragment"), [
    ({"lambda_q": -1.0}, "lambda_q=-1.0 must be >= 0"),
    ({"beta": -0.5}, "beta=-0.5 must be >= 0"),
    ({"key_momentum": 1.5}, "key_momentum=1.5 must be in [0, 1]"),
    ({"scale": 0.0}, "scale=0.0 is not valid; give a positive number or one of sqrt_k, adacos"),
    ({"pair_start_epoch": -1}, "pair_start_epoch=-1 must be an integer >= 0"),
    ({"admm_patience": 2.5}, "admm_patience=2.5 must be an integer >= 0"),
])
def test_impossible_settings_are_refused(change: dict[str, Any], fragment: str) -> None:
    with pytest.raises(UserError) as caught:
        MDS.check(mds_config(**change), make_task())
    assert fragment in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(UserError, match="cannot get distinct 4-bit centers"):
        MDS.check(mds_config(), make_task(bits=4, classes=20))


def test_end_to_end_with_the_pairwise_term(tmp_path: Path, one_thread: None) -> None:
    code = main(["run", "--methods", "mds", "--bits", "16", "--dataset", "synthetic", "--epochs", "2",
                 "--set", "pair_start_epoch=1", "--results", str(tmp_path), "--quiet"])
    assert code == 0
    (path,) = (tmp_path / "runs" / "synthetic" / "mds").glob("*.json.gz")
    record = read_record(path)
    assert record["status"] == "complete"
    first, second = record["history"]
    assert "loss_pair" not in first and second["loss_pair"] > 0
    assert second["loss"] == pytest.approx(second["loss_center"] + second["loss_pair"]
                                           + 1e-4 * second["loss_quantization"], rel=1e-5)
    api = record["method_api"]
    assert api["owned_modules"]["key"]["trainable"] == 0 and api["owned_modules"]["norm"]["trainable"] == 32
    assert api["retrieval_output"].startswith("sign(BN(h))")
    assert record["method"]["pair_term"].startswith("momentum encoder + memory bank")
    centers = np.array(record["centers"])
    assert min_pairwise_distance(centers) >= gilbert_varshamov_target(6, 16)
