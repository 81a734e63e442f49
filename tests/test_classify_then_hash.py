"""Classify-then-hash (issue 17's reference row): the classifier losses against literal loops,
codes equal to the predicted class's center (single-label) or the CSQ-composed center of the
predicted set (multi-label), CSQ's centers, the head created in setup being optimised, and a
full run's record."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from bench.runs.spec import RunSpec, resolve_config
from bench.training.train import build_optimizer, train_and_evaluate
from methods.base import Task
from methods.classify_then_hash import ClassifyThenHash, classifier_loss
from methods.csq import CSQ


def make_task(bits: int = 16, classes: int = 5, multi_label: bool = False, seed: int = 0) -> Task:
    return Task(bits=bits, num_classes=classes, multi_label=multi_label, seed=seed, epochs=3,
                device=torch.device("cpu"))


def config(**overrides) -> dict:
    values = resolve_config(RunSpec(method="classify-then-hash", dataset="synthetic", bits=16))
    values.update(overrides)
    return values


class Backbone(nn.Module):
    feature_dim = 6


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = Backbone()
        self.hash_layer = nn.Linear(6, 16)


class StubContext:
    def __init__(self) -> None:
        self.model, self.device = Model(), torch.device("cpu")


def ready(multi_label: bool = False, classes: int = 5, seed: int = 0) -> ClassifyThenHash:
    method = ClassifyThenHash(config(), make_task(classes=classes, multi_label=multi_label, seed=seed))
    method.setup(StubContext())  # type: ignore[arg-type]
    return method


# ----------------------------------------------------------------------------- losses
@pytest.mark.parametrize("multi_label", [False, True])
def test_classifier_loss_matches_a_literal_loop(multi_label: bool) -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 4, generator=generator, dtype=torch.float64)
    if multi_label:
        labels = (torch.rand(5, 4, generator=generator) < 0.4).double()
    else:
        labels = torch.nn.functional.one_hot(torch.tensor([0, 3, 1, 1, 2]), 4).double()

    def reference(z: torch.Tensor) -> torch.Tensor:
        total = z.new_zeros(())
        for n in range(5):
            if multi_label:
                for c in range(4):
                    p = 1 / (1 + torch.exp(-z[n, c]))
                    total = total - (torch.log(p) if labels[n, c] > 0 else torch.log(1 - p)) / 4
            else:
                y = int(labels[n].argmax())
                total = total - (z[n, y] - torch.log(sum(torch.exp(z[n, c]) for c in range(4))))
        return total / 5

    a, b = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    got, want = classifier_loss(a, labels, multi_label), reference(b)
    assert float(got.detach()) == pytest.approx(float(want.detach()), rel=1e-10)
    (ga,), (gb,) = torch.autograd.grad(got, a), torch.autograd.grad(want, b)
    assert torch.allclose(ga, gb, atol=1e-12)


# ----------------------------------------------------------------------------- codes
def test_codes_are_the_predicted_class_center() -> None:
    method = ready()
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(20, 6, generator=generator)
    codes = method.retrieval_code(torch.zeros(20, 16), features)
    weight = method.owned["classifier"].weight.detach()
    bias = method.owned["classifier"].bias.detach()
    centers = method.class_centers()
    for n in range(20):
        scores = [float(features[n] @ weight[c] + bias[c]) for c in range(5)]
        predicted = max(range(5), key=lambda c: scores[c])
        assert codes[n].tolist() == centers[predicted].tolist()
    assert set(codes.unique().tolist()) <= {-1.0, 1.0}


def test_multi_label_codes_compose_the_predicted_set() -> None:
    method = ready(multi_label=True, classes=4)
    with torch.no_grad():  # logits = features[:, :4] exactly
        method.owned["classifier"].weight.copy_(torch.eye(4, 6))
        method.owned["classifier"].bias.zero_()
    features = torch.tensor([[2.0, -1.0, 0.5, -3.0, 9, 9],  # set {0, 2}
                             [-1.0, -0.5, -2.0, -0.1, 9, 9],  # none positive: top-1 = class 3
                             [1.0, 1.0, 1.0, 1.0, 0, 0],  # all four
                             [-1.0, 3.0, -1.0, -1.0, 0, 0]])  # {1}
    sets = [[0, 2], [3], [0, 1, 2, 3], [1]]
    codes = method.retrieval_code(torch.zeros(4, 16), features)
    centers, tie = method.class_centers(), method.tie_breaker
    for n, chosen in enumerate(sets):
        for k in range(16):
            total = sum(float(centers[c, k]) for c in chosen)
            want = float(tie[k]) if total == 0 else math.copysign(1.0, total)
            assert float(codes[n, k]) == want


@pytest.mark.filterwarnings("ignore:no 40 random 16-bit centers")
def test_centers_are_csq_centers_for_the_same_seed() -> None:
    for classes, bits in ((5, 16), (40, 16)):  # Hadamard rows, then CSQ's Bernoulli fallback
        task = make_task(bits=bits, classes=classes, seed=3)
        mine = ClassifyThenHash(config(), task)
        csq = CSQ(resolve_config(RunSpec(method="csq", dataset="synthetic", bits=bits)), task)
        assert torch.equal(mine.class_centers(), csq.class_centers())
        assert torch.equal(mine.tie_breaker, csq.tie_breaker)
    bernoulli = ClassifyThenHash(config(centers="bernoulli"), make_task(classes=5))
    assert bernoulli.record()["centers_min_distance"] >= 4


def test_head_built_in_setup_is_in_the_optimizer() -> None:
    method = ready()
    model = Model()
    model.backbone.weight = nn.Parameter(torch.zeros(1))  # something to optimise
    optimizer = build_optimizer(model, config(), method)  # type: ignore[arg-type]
    optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert all(id(p) in optimised for p in method.owned["classifier"].parameters())


# ----------------------------------------------------------------------------- a run
def test_run_records_reference_row(tmp_path: Path) -> None:
    spec = RunSpec("classify-then-hash", "synthetic", 16, protocol="native",
                   overrides=(("batch_size", 64), ("epochs", 1)))
    body = train_and_evaluate(spec, results_dir=tmp_path, device="cpu", progress_bars=False)
    record = body["method"]
    assert record["reference_row"] and record["settings_used"]["feature_dim"] == 32
    assert np.array_equal(np.array(record["centers"]), np.array(body["centers"]))
    assert body["method_api"]["owned_modules"]["classifier"] == {
        "type": "Linear", "parameters": 32 * 6 + 6, "trainable": 32 * 6 + 6}
    assert body["config"]["lr"] == 1e-3 and body["config"]["lr_schedule"] == "cosine"
    # At most C distinct codes: the record counts them and the size of their tie groups.
    ties = body["database_codes"]
    assert 1 <= ties["distinct"] <= 6
    assert ties["mean_tie_group_size"] == pytest.approx(ties["items"] / ties["distinct"], abs=1e-4)


def test_code_ties_on_a_hand_worked_database() -> None:
    from bench.training.train import code_ties

    codes = np.array([[1.0, -2.0], [0.5, -1.0], [-1.0, 1.0], [2.0, -0.1], [-3.0, -3.0]])
    # sign patterns: (+,-) x3, (-,+) x1, (-,-) x1 -> 3 groups; per item (9 + 1 + 1) / 5
    assert code_ties(codes) == {"items": 5, "distinct": 3, "mean_tie_group_size": round(5 / 3, 4),
                                "mean_tie_group_size_per_item": 2.2}
