"""CgAT (methods/cgat.py): the center code of the spec's example, the training PGD's budget and
pixel box, the code memory keyed by dataset index, the same numbers as the attack evaluation,
the adversarial term's start, the wrapper's refusals, and 2-epoch runs with base CSQ and CRH."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from bench.errors import UserError
from bench.evaluation.attack import AttackSpec, center_targets, pgd
from bench.network.backbones import HashNetwork, build_backbone
from bench.runs.spec import RunSpec, resolve_config
from bench.training.train import train_and_evaluate
from methods.base import Batch, Task
from methods.cgat import CgAT, adversarial_start_epoch, center_codes

BOX = (torch.full((1, 1, 1, 1), -1.0), torch.full((1, 1, 1, 1), 1.0), torch.full((1, 1, 1, 1), 2.0))


def test_center_code_of_the_spec_example() -> None:
    """Class 0 holds (1,1,-1), (1,-1,-1); class 1 holds (-1,-1,1), (-1,1,1). By hand for class 0:
    N_neg * sum_pos - N_pos * sum_neg = 2*(2,0,-2) - 2*(-2,0,2) = (8,0,-8): b*_0 = (1,0,-1)."""
    codes = torch.tensor([[1, 1, -1], [1, -1, -1], [-1, -1, 1], [-1, 1, 1]], dtype=torch.float32)
    labels = torch.tensor([[1, 0], [1, 0], [0, 1], [0, 1]])
    assert center_codes(torch.tensor([[1, 0], [0, 1]]), codes, labels).tolist() == [[1, 0, -1], [-1, 0, 1]]


def test_the_training_attack_is_the_attack_evaluations() -> None:
    """Training and evaluation attack with the same numbers: CgAT's training step (its settings,
    its seeded generator, its code memory) gives exactly the center codes and the perturbation
    that the attack evaluation's `center_targets` and `pgd` give for the same settings and the
    same random start."""
    method, ctx = make_cgat()
    ctx.model.train()
    method.memory_codes = torch.where(torch.rand(24, 8, generator=torch.Generator().manual_seed(2)) > 0.5,
                                      1.0, -1.0)
    rows = np.array([0, 1, 2, 3, 4, 7, 11])
    images, labels = ctx.images[rows], ctx.labels[rows]
    targets = method.centers_for(labels)
    assert torch.equal(targets, center_targets(labels, method.memory_codes, method.memory_labels))
    assert (targets != 0).any()
    start = method.generator.get_state()
    ours = method.adversarial_images(ctx, images, targets)
    spec = AttackSpec(target="center", eps=method.config["eps"], step=method.config["step"],
                      steps=method.config["steps"], random_start=method.config["random_start"], seed=0)
    assert (spec.eps, spec.step, spec.steps, spec.random_start) == (8 / 255, 2 / 255, 7, True)
    theirs = pgd(method._output(ctx), images, targets, spec, BOX, torch.Generator().set_state(start))
    assert torch.equal(ours, theirs)
    assert not torch.equal(ours, images)  # a real perturbation, not two no-ops


@pytest.mark.parametrize("epochs,start", [(60, 46), (130, 100), (2, 1), (1, 0), (13, 10)])
def test_the_adversarial_term_starts_at_100_of_130(epochs: int, start: int) -> None:
    assert adversarial_start_epoch(100 / 130, epochs) == start


@dataclass
class FakeContext:
    """A training step as CgAT sees it: a tiny network in train mode, its batch, the box."""

    model: torch.nn.Module
    images: torch.Tensor
    labels: torch.Tensor
    config: dict[str, Any]
    task: Task
    epoch: int = 0
    batch: Batch | None = None
    logged: dict[str, list[float]] = field(default_factory=dict)
    device: torch.device = torch.device("cpu")
    stage_times: dict[str, float] = field(default_factory=dict)

    @property
    def train_indices(self) -> np.ndarray:
        return np.arange(len(self.images)) * 3 + 5  # dataset indices that are not row numbers

    def labels_of(self, indices: np.ndarray) -> np.ndarray:
        return self.labels[(np.asarray(indices) - 5) // 3].numpy()

    def encode_with(self, module: torch.nn.Module, indices: np.ndarray) -> np.ndarray:
        module.eval()
        with torch.no_grad():
            return module(self.images[(np.asarray(indices) - 5) // 3]).numpy()

    def pixel_box(self) -> tuple[torch.Tensor, ...]:
        return BOX

    def log(self, name: str, value: Any) -> None:
        self.logged.setdefault(name, []).append(float(value))


def make_cgat(base: str = "csq", epochs: int = 4, **changes: Any) -> tuple[CgAT, FakeContext]:
    config = {**resolve_config(RunSpec("cgat", "synthetic", 8, protocol="harmonised",
                                       overrides=(("base", base), ("epochs", epochs)))), **changes}
    task = Task(bits=8, num_classes=3, multi_label=False, seed=0, epochs=epochs, device=torch.device("cpu"))
    torch.manual_seed(0)
    model = HashNetwork(build_backbone("tiny_cnn", 1), 8)
    images = torch.rand(24, 1, 12, 12, generator=torch.Generator().manual_seed(1)) * 2 - 1
    labels = torch.eye(3)[torch.arange(24) % 3]
    method = CgAT(config, task)
    ctx = FakeContext(model, images, labels, config, task)
    method.setup(ctx)
    return method, ctx


def step(method: CgAT, ctx: FakeContext, rows: np.ndarray) -> torch.Tensor:
    ctx.model.train()
    images, labels = ctx.images[rows], ctx.labels[rows]
    features = ctx.model.features(images)
    h = ctx.model.hash_layer(features)
    ctx.batch = Batch(indices=ctx.train_indices[rows], images=images, labels=labels, features=features, h=h)
    return method.loss(h, labels, ctx)


def test_the_training_pgd_stays_in_the_budget_and_the_pixel_box() -> None:
    method, ctx = make_cgat()
    ctx.model.train()
    # codes of a trained model differ by class (at initialisation they are often all alike, and
    # every center code is then 0)
    method.memory_codes = torch.where(torch.rand(24, 8, generator=torch.Generator().manual_seed(2)) > 0.5,
                                      1.0, -1.0)
    images = ctx.images[:8]
    targets = method.centers_for(ctx.labels[:8])
    assert (targets != 0).float().mean() > 0.5
    adversarial = method.adversarial_images(ctx, images, targets)
    eps = 8 / 255 * 2.0  # pixel budget in input units (per-pixel factor 2)
    assert ((adversarial - images).abs() <= eps + 1e-6).all()
    assert (adversarial >= -1 - 1e-6).all() and (adversarial <= 1 + 1e-6).all()
    assert (adversarial - images).abs().max() > eps / 2  # it moved (7 steps of 2/255 from a random start)
    assert all(p.grad is None for p in ctx.model.parameters())  # gradient wrt the images only
    def objective(x: torch.Tensor) -> torch.Tensor:
        return (torch.tanh(method._output(ctx)(x)) * targets).mean()

    with torch.no_grad():
        assert float(objective(adversarial)) < float(objective(images))  # towards -b*


def test_the_memory_is_keyed_by_dataset_index_and_filled_in_setup() -> None:
    method, ctx = make_cgat(epochs=4)
    with torch.no_grad():
        expected = torch.where(ctx.model(ctx.images) >= 0, 1.0, -1.0)
    assert torch.equal(method.memory_codes, expected)  # setup: the network's codes, in index order
    before = method.memory_codes.clone()
    rows = np.array([4, 0, 9])
    loss = step(method, ctx, rows)  # epoch 0 of 4: base loss only, the memory still updated
    assert set(ctx.logged) == {"base"} and float(loss.detach()) == pytest.approx(ctx.logged["base"][0])
    batch_codes = torch.where(ctx.batch.h.detach() >= 0, 1.0, -1.0)
    assert torch.equal(method.memory_codes[torch.as_tensor(rows)], batch_codes)
    untouched = np.setdiff1d(np.arange(24), rows)
    assert torch.equal(method.memory_codes[untouched], before[untouched])
    with pytest.raises(RuntimeError, match="outside the training split"):
        method.rows(np.array([6]))  # not a training index


def test_the_adversarial_term_is_the_centered_tanh_of_the_attacked_codes() -> None:
    """In an adversarial epoch the loss is L_base - mean(tanh(r(x_adv)) * b*), b* recomputed
    after the benign codes entered the memory; the term is differentiable in the network."""
    method, ctx = make_cgat(epochs=4)
    method.memory_codes = torch.where(torch.rand(24, 8, generator=torch.Generator().manual_seed(2)) > 0.5,
                                      1.0, -1.0)
    ctx.epoch = 3
    rows = np.arange(6)
    loss = step(method, ctx, rows)
    assert set(ctx.logged) == {"base", "adversarial"} and ctx.logged["adversarial"][0] != 0
    total = ctx.logged["base"][0] + ctx.logged["adversarial"][0]
    assert float(loss.detach()) == pytest.approx(total, abs=1e-6)
    assert -1.0 <= ctx.logged["adversarial"][0] <= 1.0
    loss.backward()
    assert ctx.model.hash_layer.weight.grad is not None and ctx.model.hash_layer.weight.grad.abs().sum() > 0
    assert method.adversarial_steps == 1


def test_refusals() -> None:
    task = Task(bits=8, num_classes=3, multi_label=False, seed=0, epochs=4, device=torch.device("cpu"))

    def config(**changes: Any) -> dict[str, Any]:
        return {**resolve_config(RunSpec("cgat", "synthetic", 8, protocol="harmonised")), **changes}

    with pytest.raises(UserError, match="base=cgat"):
        CgAT.check(config(base="cgat"), task)
    with pytest.raises(UserError, match="unknown method 'nope'"):
        CgAT.check(config(base="nope"), task)
    with pytest.raises(UserError, match="adv_start=1.0 must lie in"):
        CgAT.check(config(adv_start=1.0), task)
    with pytest.raises(UserError, match="csq does not have"):
        resolve_config(RunSpec("cgat", "synthetic", 8, protocol="harmonised",
                               overrides=(("base_settings", '{"margin": 0.1}'),)))
    settings = resolve_config(RunSpec("cgat", "synthetic", 8, protocol="harmonised",
                                      overrides=(("base_settings", '{"lambda_q": 0.01}'),)))["base_settings"]
    assert settings == {"lambda_q": 0.01, "bit_reduction": "mean", "center_tries": 1000}


@pytest.mark.parametrize("base", ["csq", "crh"])
def test_two_epochs_on_the_synthetic_card(base: str, tmp_path: Path) -> None:
    """The default adv_start puts the second of two epochs under attack; the record names the
    base, its settings and where the adversarial term started, and the base's hooks ran."""
    spec = RunSpec("cgat", "synthetic", 16, protocol="harmonised",
                   overrides=(("base", base), ("epochs", 2), ("eval_every", 1)))
    body = train_and_evaluate(spec, results_dir=tmp_path, device="cpu", progress_bars=False)
    assert body["config"]["base"] == base and body["config"]["adv_start"] == pytest.approx(100 / 130)
    record = body["method"]
    assert record["base"] == base and record["adv_start"] == pytest.approx(100 / 130)
    assert record["adv_start_epoch"] == 2 and record["adversarial_epochs"] == 1
    steps = len(body["history"]) and -(-body["split"]["sizes"]["train"] // 128)
    assert record["adversarial_steps"] == steps
    first, second = body["history"]
    assert "loss_adversarial" not in first and "loss_adversarial" in second
    assert body["metrics"]["mAP"] > 0.2  # six classes: chance is about 1/6
    assert body["centers"] == body["method_at_selected_epoch"]["base_record"]["centers"]
    assert body["method_api"]["base"]["method"] == base
    if base == "crh":  # CRH's epoch hook got the epoch's codes: it reassigned
        assert record["base_record"]["reassignment_epochs"]
