"""CSQ's loss and centers against references written out here, never against the functions
they test: a per-sample, per-bit loop for the loss (values and gradients), hand-worked
values, a literal Sylvester construction for the Hadamard centers and a literal loop for the
multi-label target. SHC trains with this loss, so these also pin SHC's stage 3."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bench.runs.spec import RunSpec, resolve_config
from methods.base import Task
from methods.csq import CSQ, central_similarity_loss


def csq_task(bits: int = 16, classes: int = 6, multi: bool = False, seed: int = 0) -> Task:
    return Task(bits=bits, num_classes=classes, multi_label=multi, seed=seed, epochs=4,
                device=torch.device("cpu"))


def csq_config(**changes) -> dict:
    return {**resolve_config(RunSpec(method="csq", dataset="synthetic", bits=16)), **changes}


def target_reference(labels: torch.Tensor, centers: torch.Tensor, tie: torch.Tensor) -> torch.Tensor:
    """Literal loop: per sample and bit, the sign of the sum of its classes' center bits; a
    zero sum takes the tie-break bit."""
    rows = []
    for n in range(labels.shape[0]):
        row = []
        for k in range(centers.shape[1]):
            total = 0.0
            for c in range(labels.shape[1]):
                if labels[n, c] > 0:
                    total += float(centers[c, k])
            row.append(float(tie[k]) if total == 0 else (1.0 if total > 0 else -1.0))
        rows.append(row)
    return torch.tensor(rows, dtype=torch.float64)


def loss_reference(h: torch.Tensor, targets: torch.Tensor, lambda_q: float,
                   bit_reduction: str = "mean") -> torch.Tensor:
    """Literal loop over samples and bits: u = tanh(h), p = (u + 1) / 2 clipped to
    [1e-7, 1 - 1e-7], t = (c + 1) / 2, bce = -(t log p + (1 - t) log(1 - p)); bce summed or
    averaged over the bits of a sample, averaged over samples; plus lambda_q times the mean
    over every output of (|u| - 1)^2."""
    batch, bits = h.shape
    center = h.new_zeros(())
    quantization = h.new_zeros(())
    for n in range(batch):
        sample = h.new_zeros(())
        for k in range(bits):
            u = torch.tanh(h[n, k])
            p = torch.clamp((u + 1) / 2, 1e-7, 1 - 1e-7)
            t = (float(targets[n, k]) + 1) / 2
            sample = sample - (t * torch.log(p) + (1 - t) * torch.log(1 - p))
            quantization = quantization + (torch.abs(u) - 1) ** 2
        center = center + (sample if bit_reduction == "sum" else sample / bits)
    return center / batch + lambda_q * quantization / (batch * bits)


def value_and_grad(fn, h: torch.Tensor) -> tuple[float, torch.Tensor]:
    h = h.detach().clone().requires_grad_(True)
    value = fn(h)
    (grad,) = torch.autograd.grad(value, h)
    return float(value.detach()), grad


def sylvester(bits: int) -> np.ndarray:
    """H_1 = [1], H_2n = [[H, H], [H, -H]], written out."""
    h = [[1]]
    while len(h) < bits:
        h = [row + row for row in h] + [row + [-v for v in row] for row in h]
    return np.array(h)


# ----------------------------------------------------------------------------- the loss
@pytest.mark.parametrize("bit_reduction", ["mean", "sum"])
@pytest.mark.parametrize("lambda_q", [0.0, 1e-4, 0.5])
def test_loss_matches_the_literal_loop_values_and_gradients(bit_reduction: str, lambda_q: float) -> None:
    generator = torch.Generator().manual_seed(0)
    batch, bits = 7, 12
    h = 2.0 * torch.randn(batch, bits, generator=generator, dtype=torch.float64)
    h[0, 0] = 30.0  # saturated: p is clipped at 1 - 1e-7
    targets = torch.where(torch.rand(batch, bits, generator=generator) < 0.5, 1.0, -1.0).double()
    value, grad = value_and_grad(
        lambda x: central_similarity_loss(torch.tanh(x), targets, lambda_q, bit_reduction), h)
    ref_value, ref_grad = value_and_grad(lambda x: loss_reference(x, targets, lambda_q, bit_reduction), h)
    assert value == pytest.approx(ref_value, rel=1e-10, abs=1e-12)
    assert torch.allclose(grad, ref_grad, rtol=1e-8, atol=1e-12)
    assert grad.abs().sum() > 0


def test_hand_worked_values() -> None:
    # u = 0: p = 1/2 for every bit, so each bit's BCE is ln 2; |u| - 1 = -1 everywhere.
    zeros = torch.zeros(3, 8, dtype=torch.float64)
    targets = torch.ones(3, 8, dtype=torch.float64)
    assert float(central_similarity_loss(zeros, targets, 0.25)) == pytest.approx(math.log(2) + 0.25)
    assert float(central_similarity_loss(zeros, targets, 0.0, "sum")) == pytest.approx(8 * math.log(2))
    # u = +-0.6 towards / away from the center: p = 0.8 -> -ln 0.8, p = 0.2 -> -ln 0.2,
    # quantization (0.6 - 1)^2 = 0.16 for every output.
    u = torch.tensor([[0.6, -0.6]], dtype=torch.float64)
    c = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    expected = (-math.log(0.8) - math.log(0.2)) / 2 + 2.0 * 0.16
    assert float(central_similarity_loss(u, c, 2.0)) == pytest.approx(expected)


def test_the_gradient_pulls_every_output_towards_its_center() -> None:
    generator = torch.Generator().manual_seed(3)
    h = 0.5 * torch.randn(5, 16, generator=generator, dtype=torch.float64)
    targets = torch.where(torch.rand(5, 16, generator=generator) < 0.5, 1.0, -1.0).double()
    _, grad = value_and_grad(lambda x: central_similarity_loss(torch.tanh(x), targets, 0.0), h)
    assert (grad * targets < 0).all()  # gradient descent moves h towards the target's sign


@pytest.mark.parametrize("multi", [False, True])
def test_method_loss_uses_its_centers_and_the_composed_multi_label_target(multi: bool) -> None:
    config = csq_config(lambda_q=0.3)
    method = CSQ(config, csq_task(multi=multi))
    generator = torch.Generator().manual_seed(1)
    if multi:
        labels = (torch.rand(9, 6, generator=generator) < 0.4).float()
        labels[0] = 0.0
        labels[0, [0, 1]] = 1.0  # rows 0 and 1 of a Hadamard matrix tie on half the bits
        labels[1] = 0.0
        labels[1, [2, 3, 4]] = 1.0
    else:
        labels = torch.eye(6)[torch.randint(6, (9,), generator=generator)]
    h = torch.randn(9, 16, generator=generator)
    targets = target_reference(labels, method.centers, method.tie_breaker)
    if multi:
        assert (targets[0] == method.tie_breaker.double()).any()  # the tie-break is exercised
    got = float(method.loss(h, labels, None))
    expected = float(loss_reference(h.double(), targets, 0.3))
    assert got == pytest.approx(expected, rel=1e-5)


# ----------------------------------------------------------------------------- the centers
@pytest.mark.parametrize("bits, classes", [(16, 6), (16, 10), (32, 10), (8, 16)])
def test_centers_are_sylvester_hadamard_rows_then_their_negations(bits: int, classes: int) -> None:
    method = CSQ(csq_config(), csq_task(bits=bits, classes=classes))
    h = sylvester(bits)
    expected = np.concatenate([h, -h])[:classes]
    assert np.array_equal(method.centers.numpy().astype(int), expected)
    assert method.class_centers() is method.centers
    assert method.record()["centers"] == expected.tolist()


def test_more_classes_than_twice_the_bits_get_well_separated_random_centers() -> None:
    method = CSQ(csq_config(), csq_task(bits=8, classes=20, seed=5))
    centers = method.centers.numpy().astype(int)
    assert centers.shape == (20, 8) and set(np.unique(centers)) == {-1, 1}
    same = CSQ(csq_config(), csq_task(bits=8, classes=20, seed=5)).centers
    assert torch.equal(method.centers, same)  # seeded
    distances = [int((centers[i] != centers[j]).sum()) for i in range(20) for j in range(i + 1, 20)]
    assert min(distances) >= 1  # distinct (K/4 = 2 is the target, relaxed with a warning if unmet)
