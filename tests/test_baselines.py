"""DPN and HashNet: losses against literal per-sample / per-pair loops (values and gradients),
HashNet's continuation schedules, and the native vs harmonised protocols."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from bench.cli import main
from bench.data.loading import load_card
from bench.errors import UserError
from bench.runs.records import read_record
from bench.runs.spec import RunSpec, resolve_config
from methods import available_methods, get_method
from methods.base import HARMONISED, Task
from methods.dpn import DPN, per_class_polarization_loss, polarization_loss
from methods.hashnet import (
    HashNet,
    default_epoch_step,
    epoch_beta,
    hashnet_pair_loss,
    iteration_beta,
)


def make_task(bits: int = 16, classes: int = 5, multi_label: bool = False, seed: int = 0,
              epochs: int = 30) -> Task:
    return Task(bits=bits, num_classes=classes, multi_label=multi_label, seed=seed, epochs=epochs,
                device=torch.device("cpu"))


def default_config(method: type) -> dict:
    return resolve_config(RunSpec(method=method.name, dataset="synthetic", bits=16))


def single_labels(generator: torch.Generator, batch: int, classes: int) -> torch.Tensor:
    ids = torch.randint(classes, (batch,), generator=generator)
    return torch.nn.functional.one_hot(ids, classes).double()


def multi_labels(generator: torch.Generator, batch: int, classes: int) -> torch.Tensor:
    labels = (torch.rand(batch, classes, generator=generator) < 0.3).double()
    labels[0] = 0.0  # a sample without labels
    labels[1] = 0.0
    labels[1, :3] = 1.0  # and one with three
    return labels


class Stub:
    """The parts of TrainContext the losses read."""

    def __init__(self, step: int = 0, epoch: int = 0) -> None:
        self.step, self.epoch, self.logged = step, epoch, {}

    def log(self, name: str, value: float) -> None:
        self.logged.setdefault(name, []).append(float(value))


def grad_of(fn, h: torch.Tensor) -> tuple[float, torch.Tensor]:
    h = h.detach().clone().requires_grad_(True)
    value = fn(h)
    (grad,) = torch.autograd.grad(value, h)
    return float(value.detach()), grad


# ----------------------------------------------------------------------------- DPN
def dpn_reference(h: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor, margin: float):
    """Literal loop: per sample, mean over its positive classes of mean over bits of the hinge;
    averaged over the samples that have a label."""
    total = h.new_zeros(())
    labelled = 0
    for n in range(h.shape[0]):
        classes = [c for c in range(labels.shape[1]) if labels[n, c] > 0]
        if not classes:
            continue
        labelled += 1
        sample = h.new_zeros(())
        for c in classes:
            bit_sum = h.new_zeros(())
            for k in range(h.shape[1]):
                bit_sum = bit_sum + torch.clamp(margin - h[n, k] * targets[c, k], min=0)
            sample = sample + bit_sum / h.shape[1]
        total = total + sample / len(classes)
    return total / max(labelled, 1)


@pytest.mark.parametrize("multi", [False, True])
def test_dpn_loss_matches_loop_values_and_gradients(multi: bool) -> None:
    generator = torch.Generator().manual_seed(1)
    batch, classes, bits = 9, 5, 12
    method = DPN(default_config(DPN), make_task(bits, classes, multi))
    targets = method.targets.double()
    labels = (multi_labels if multi else single_labels)(generator, batch, classes)
    h = 1.5 * torch.randn(batch, bits, generator=generator, dtype=torch.float64)
    value, grad = grad_of(lambda x: method.loss(x, labels, Stub()), h)
    ref_value, ref_grad = grad_of(lambda x: dpn_reference(x, labels, targets, 1.0), h)
    assert value == pytest.approx(ref_value, rel=1e-10, abs=1e-12)
    assert torch.allclose(grad, ref_grad, atol=1e-12)
    assert grad.abs().sum() > 0


def test_dpn_single_label_equals_plain_hinge_and_margin_is_used() -> None:
    generator = torch.Generator().manual_seed(2)
    targets = torch.where(torch.rand(4, 8, generator=generator) < 0.5, 1.0, -1.0).double()
    labels = single_labels(generator, 6, 4)
    h = torch.randn(6, 8, generator=generator, dtype=torch.float64)
    own = labels @ targets
    for margin in (1.0, 0.5):
        assert float(per_class_polarization_loss(h, labels, targets, margin)) == pytest.approx(
            float(polarization_loss(h, own, margin)))
        assert float(per_class_polarization_loss(h, labels, targets, margin)) == pytest.approx(
            float(dpn_reference(h, labels, targets, margin)))


def test_dpn_majority_option_uses_one_target_per_sample() -> None:
    generator = torch.Generator().manual_seed(3)
    config = {**default_config(DPN), "multi_label": "majority"}
    method = DPN(config, make_task(10, 4, True))
    labels = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0], [0, 0, 0, 1]], dtype=torch.float32)
    h = torch.randn(3, 10, generator=generator)
    loss = method.loss(h, labels, Stub())
    expected = h.new_zeros(())
    for n in range(3):
        summed = labels[n] @ method.targets
        target = torch.where(summed == 0, method.tie_breaker, torch.sign(summed))
        expected = expected + torch.clamp(1 - h[n] * target, min=0).mean()
    assert float(loss) == pytest.approx(float(expected / 3), rel=1e-6)
    assert DPN.params["multi_label"].default == "per_class"


def test_dpn_targets_are_seeded_bernoulli_and_are_the_centers() -> None:
    a = DPN(default_config(DPN), make_task(64, 10, seed=7))
    b = DPN(default_config(DPN), make_task(64, 10, seed=7))
    c = DPN(default_config(DPN), make_task(64, 10, seed=8))
    assert torch.equal(a.targets, b.targets) and not torch.equal(a.targets, c.targets)
    assert set(a.targets.unique().tolist()) == {-1.0, 1.0}
    assert 0.35 < float((a.targets > 0).float().mean()) < 0.65
    assert a.class_centers() is a.targets
    assert DPN.native["optimizer"] == "sgd" and DPN.native["lr_schedule"] == "step"


# ----------------------------------------------------------------------------- HashNet
def hashnet_reference(u: torch.Tensor, labels: torch.Tensor, alpha: float):
    """Literal per-pair loop over i != j, with the |S|/|S1|, |S|/|S0| weights divided by |S|."""
    similar_terms, dissimilar_terms = [], []
    batch = u.shape[0]
    for i in range(batch):
        for j in range(batch):
            if i == j:
                continue
            s = 1.0 if float(labels[i] @ labels[j]) > 0 else 0.0
            x = alpha * (u[i] * u[j]).sum()
            term = torch.log1p(torch.exp(x)) - s * x
            (similar_terms if s else dissimilar_terms).append(term)
    pairs = len(similar_terms) + len(dissimilar_terms)
    total = u.new_zeros(())
    if similar_terms:
        total = total + sum(similar_terms) * (pairs / len(similar_terms))
    if dissimilar_terms:
        total = total + sum(dissimilar_terms) * (pairs / len(dissimilar_terms))
    return total / pairs


@pytest.mark.parametrize("multi", [False, True])
@pytest.mark.parametrize("alpha", [0.1, 0.7])
def test_hashnet_loss_matches_pair_loop_values_and_gradients(multi: bool, alpha: float) -> None:
    generator = torch.Generator().manual_seed(4)
    batch, classes, bits = 8, 4, 16
    labels = (multi_labels if multi else single_labels)(generator, batch, classes)
    h = torch.randn(batch, bits, generator=generator, dtype=torch.float64)
    beta = 1.7
    value, grad = grad_of(lambda x: hashnet_pair_loss(torch.tanh(beta * x), labels, alpha), h)
    ref_value, ref_grad = grad_of(lambda x: hashnet_reference(torch.tanh(beta * x), labels, alpha), h)
    assert value == pytest.approx(ref_value, rel=1e-10)
    assert torch.allclose(grad, ref_grad, atol=1e-12)


@pytest.mark.parametrize("kind", ["no_similar", "no_dissimilar"])
def test_hashnet_batch_without_one_kind_of_pair_is_finite(kind: str) -> None:
    generator = torch.Generator().manual_seed(5)
    classes = 6
    if kind == "no_similar":
        labels = torch.eye(classes, dtype=torch.float64)
    else:
        labels = torch.zeros(classes, classes, dtype=torch.float64)
        labels[:, 2] = 1.0
    h = torch.randn(classes, 8, generator=generator, dtype=torch.float64)
    value, grad = grad_of(lambda x: hashnet_pair_loss(torch.tanh(x), labels, 0.1), h)
    ref_value, ref_grad = grad_of(lambda x: hashnet_reference(torch.tanh(x), labels, 0.1), h)
    assert math.isfinite(value) and torch.isfinite(grad).all()
    assert value == pytest.approx(ref_value, rel=1e-10)
    assert torch.allclose(grad, ref_grad, atol=1e-12)


def test_hashnet_loss_is_stable_for_large_inner_products() -> None:
    u = torch.ones(4, 64, dtype=torch.float32, requires_grad=True)
    labels = torch.eye(4)
    loss = hashnet_pair_loss(u, labels, alpha=50.0)  # alpha<u,u> = 3200: exp overflows
    loss.backward()
    assert torch.isfinite(loss) and float(loss.detach()) == pytest.approx(3200.0)
    assert torch.isfinite(u.grad).all()


def test_hashnet_beta_schedules() -> None:
    # Paper / authors' code: updated every 200 iterations to (1 + 0.005 * iter) ** 0.5.
    assert iteration_beta(1) == 1.0 and iteration_beta(199) == 1.0
    assert iteration_beta(200) == pytest.approx(math.sqrt(2.0))
    assert iteration_beta(399) == pytest.approx(math.sqrt(2.0))
    assert iteration_beta(400) == pytest.approx(math.sqrt(3.0))
    assert iteration_beta(10_000) == pytest.approx(math.sqrt(51.0))
    # Re-implementation: sqrt(floor(epoch / E) + 1), epoch 0-based.
    assert [epoch_beta(e, 20) for e in (0, 19, 20, 40)] == pytest.approx([1, 1, math.sqrt(2), math.sqrt(3)])
    assert default_epoch_step(150) == 20 and default_epoch_step(30) == 4 and default_epoch_step(3) == 1

    config = default_config(HashNet)
    assert config["continuation"] == "iteration"
    method = HashNet(config, make_task(epochs=30))
    assert method.current_beta(step=199, epoch=0) == pytest.approx(math.sqrt(2.0))  # 200th iteration
    assert method.current_beta(step=198, epoch=0) == 1.0
    by_epoch = HashNet({**config, "continuation": "epoch"}, make_task(epochs=30))
    assert by_epoch.epoch_step == 4
    assert by_epoch.current_beta(step=0, epoch=8) == pytest.approx(math.sqrt(3.0))
    fixed = HashNet({**config, "continuation": "epoch", "beta_epoch_step": 20}, make_task(epochs=30))
    assert fixed.current_beta(step=0, epoch=19) == 1.0 and fixed.epoch_step == 20
    assert HashNet({**config, "continuation": "none"}, make_task()).current_beta(10_000, 99) == 1.0


def test_hashnet_refuses_bad_epoch_step() -> None:
    from bench.errors import UserError

    for bad in (0, "x", 2.5):
        with pytest.raises(UserError, match="beta_epoch_step"):
            HashNet.check({**default_config(HashNet), "beta_epoch_step": bad}, make_task())
    HashNet.check(default_config(HashNet), make_task())


def test_hashnet_loss_applies_the_current_beta() -> None:
    generator = torch.Generator().manual_seed(6)
    config = default_config(HashNet)
    method = HashNet(config, make_task(classes=3))
    labels = single_labels(generator, 6, 3)
    h = torch.randn(6, 16, generator=generator, dtype=torch.float64)
    ctx = Stub(step=399)
    loss = method.loss(h, labels, ctx)
    assert config["alpha"] == "10/K"  # the native protocol: the authors' 10 / K, 0.625 at 16 bits
    expected = hashnet_pair_loss(torch.tanh(math.sqrt(3.0) * h), labels, 10 / 16)
    assert float(loss) == pytest.approx(float(expected))
    assert ctx.logged["beta"] == [pytest.approx(math.sqrt(3.0))]
    assert method.on_epoch_end(0, None, None, ctx) == {"beta": pytest.approx(math.sqrt(3.0))}


def test_hashnet_alpha_takes_the_authors_rule_under_any_protocol() -> None:
    """`--set alpha=10/K` (the hashnet-alpha experiment) keeps the rule as written, so the run is
    keyed by the rule, and resolves it per length; any other text is refused naming the rule."""
    card = load_card("synthetic")
    for bits in (16, 64):
        spec = RunSpec(method="hashnet", dataset="synthetic", bits=bits, protocol="harmonised",
                       overrides=(("alpha", "10/K"),))
        config = resolve_config(spec, card)
        assert config["alpha"] == "10/K"
        assert HashNet(config, make_task(bits=bits)).alpha == pytest.approx(10 / bits)
    with pytest.raises(UserError, match=r"alpha='10/X' is not a valid float or 10/K"):
        resolve_config(RunSpec(method="hashnet", dataset="synthetic", bits=16, protocol="harmonised",
                               overrides=(("alpha", "10/X"),)), card)


# ----------------------------------------------------------------------------- protocols
def test_harmonised_uses_the_shared_optimizer_native_each_methods_own() -> None:
    card = load_card("synthetic")
    native_optimizers = {}
    for name in available_methods():
        method = get_method(name)
        harmonised = resolve_config(RunSpec(method=name, dataset="synthetic", bits=16,
                                            protocol="harmonised"), card)
        native = resolve_config(RunSpec(method=name, dataset="synthetic", bits=16), card)
        for key, value in HARMONISED.items():
            assert harmonised[key] == value, (name, key)
        for key, value in method.native.items():
            assert native[key] == value, (name, key)
        assert harmonised["epochs"] == native["epochs"] == card.schedule["epochs"]
        native_optimizers[name] = (native["optimizer"], native["lr"], native["batch_size"])
    assert native_optimizers["dpn"] == ("sgd", 1e-4, 256)
    assert native_optimizers["hashnet"] == ("sgd", 3e-3, 72)
    assert native_optimizers["csq"] == ("rmsprop", 1e-5, 64)
    assert native_optimizers["shc"] == ("rmsprop", 1e-4, 64)  # SHC's own (official run.py), not CSQ's


def test_record_says_which_protocol(tmp_path: Path, one_thread: None) -> None:
    code = main(["run", "--methods", "dpn", "--bits", "8", "--dataset", "synthetic", "--epochs", "1",
                 "--protocol", "harmonised", "--results", str(tmp_path), "--quiet"])
    assert code == 0
    (path,) = (tmp_path / "runs" / "synthetic" / "dpn").glob("*.json.gz")
    record = read_record(path)
    assert record["status"] == "complete"
    assert record["spec"]["protocol"] == "harmonised"
    assert "harmonised" in record["run_id"]
    assert record["config"]["optimizer"] == HARMONISED["optimizer"]
    assert record["config"]["lr"] == HARMONISED["lr"]
    assert record["config"]["batch_size"] == HARMONISED["batch_size"]
