"""OrthoHash: the cosine-margin loss against a literal per-sample loop (values and gradients,
single- and multi-label), BatchNorm retrieval in eval mode, the MaxHD sampler against a
one-candidate-at-a-time reference, refusals before training, and a full run's record."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.cli import main
from bench.errors import UserError
from bench.runs.spec import RunSpec, resolve_config
from bench.training.train import train_and_evaluate
from methods.base import Task
from methods.orthohash import OrthoHash, maxhd_targets, orthohash_loss, orthohash_targets


def make_task(bits: int = 16, classes: int = 5, multi_label: bool = False, seed: int = 0) -> Task:
    return Task(bits=bits, num_classes=classes, multi_label=multi_label, seed=seed, epochs=3,
                device=torch.device("cpu"))


def config(**overrides) -> dict:
    values = resolve_config(RunSpec(method="orthohash", dataset="synthetic", bits=16))
    values.update(overrides)
    return values


# ----------------------------------------------------------------------------- loss
def reference_loss(v: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor, margin: float,
                   scale: float) -> torch.Tensor:
    """Per sample: cosines by explicit sums, margin off each positive class, log-softmax by
    log-sum-exp, cross-entropy against y / |y|_1; averaged over labelled samples."""
    total, labelled = v.new_zeros(()), 0
    for n in range(v.shape[0]):
        positives = [c for c in range(targets.shape[0]) if labels[n, c] > 0]
        if not positives:
            continue
        labelled += 1
        logits = []
        for c in range(targets.shape[0]):
            dot = sum(v[n, k] * targets[c, k] for k in range(v.shape[1]))
            norm_v = torch.sqrt(sum(v[n, k] ** 2 for k in range(v.shape[1])))
            norm_o = math.sqrt(sum(float(targets[c, k]) ** 2 for k in range(v.shape[1])))
            cosine = dot / (norm_v * norm_o)
            logits.append(scale * (cosine - (margin if c in positives else 0.0)))
        stacked = torch.stack(logits)
        log_z = torch.log(torch.exp(stacked - stacked.max()).sum()) + stacked.max()
        for c in positives:
            total = total - (stacked[c] - log_z) / len(positives)
    return total / labelled


@pytest.mark.parametrize("multi_label", [False, True])
def test_loss_matches_a_literal_loop(multi_label: bool) -> None:
    generator = torch.Generator().manual_seed(3)
    batch, classes, bits = 6, 4, 8
    v = torch.randn(batch, bits, generator=generator, dtype=torch.float64)
    targets = torch.where(torch.rand(classes, bits, generator=generator) < 0.5, 1.0, -1.0).double()
    if multi_label:
        labels = (torch.rand(batch, classes, generator=generator) < 0.5).double()
        labels[0] = 0.0  # unlabelled: no target, left out of the mean
        labels[1] = torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=torch.float64)
    else:
        labels = torch.nn.functional.one_hot(torch.arange(batch) % classes, classes).double()
    for margin, scale in ((0.2, math.sqrt(bits)), (0.0, 8.0), (0.5, 1.5)):
        a = v.clone().requires_grad_(True)
        b = v.clone().requires_grad_(True)
        got = orthohash_loss(a, targets, labels, margin, scale)
        want = reference_loss(b, targets, labels, margin, scale)
        assert float(got.detach()) == pytest.approx(float(want.detach()), rel=1e-10)
        (grad_got,) = torch.autograd.grad(got, a)
        (grad_want,) = torch.autograd.grad(want, b)
        assert torch.allclose(grad_got, grad_want, atol=1e-12)


def test_margin_is_taken_from_every_positive_class() -> None:
    """Hand-worked: v along o_0 with o_0 ⟂ o_1; labels {0, 1}, m = 0.5, s = 2: logits
    2(1 - .5) = 1 and 2(0 - .5) = -1; loss = -(1/2)(log p_0 + log p_1) with p = softmax(1, -1)."""
    targets = torch.tensor([[1.0, 1.0], [1.0, -1.0]])
    v = torch.tensor([[3.0, 3.0]])
    labels = torch.tensor([[1.0, 1.0]])
    p0 = math.exp(1) / (math.exp(1) + math.exp(-1))
    expected = -0.5 * (math.log(p0) + math.log(1 - p0))
    assert float(orthohash_loss(v, targets, labels, 0.5, 2.0)) == pytest.approx(expected, rel=1e-6)


# ----------------------------------------------------------------------------- BatchNorm
def test_retrieval_is_bn_in_eval_mode() -> None:
    method = OrthoHash(config(), make_task(bits=4, classes=3))
    generator = torch.Generator().manual_seed(0)
    bn = method.owned["bn"]
    method.owned.train()
    for _ in range(5):  # training steps move the running statistics
        method.loss(3 + 2 * torch.randn(16, 4, generator=generator), torch.eye(3)[torch.arange(16) % 3],
                    None)  # type: ignore[arg-type]
    bn.requires_grad_(False)  # plain numbers below; the loop encodes under no_grad
    bn.weight.copy_(torch.tensor([1.0, 2.0, 0.5, -1.0]))
    bn.bias.copy_(torch.tensor([0.1, -0.2, 0.0, 0.3]))
    method.owned.eval()
    h = torch.randn(7, 4, generator=generator)
    code = method.retrieval_code(h, torch.zeros(7, 1))
    for n in range(7):
        for k in range(4):
            mean, var = float(bn.running_mean[k]), float(bn.running_var[k])
            want = (float(h[n, k]) - mean) / math.sqrt(var + bn.eps) * float(bn.weight[k]) + float(bn.bias[k])
            assert float(code[n, k]) == pytest.approx(want, rel=1e-5, abs=1e-6)
    assert abs(float(bn.running_mean[0])) > 1.0  # the statistics did move
    method.owned.train()
    assert not torch.allclose(method.retrieval_code(h, torch.zeros(7, 1)), code)


# ----------------------------------------------------------------------------- targets
def reference_maxhd(classes: int, bits: int, rng: np.random.Generator, start: float, floor: float,
                    patience: int) -> tuple[np.ndarray, float] | None:
    """One candidate at a time from the same stream; None when the floor is passed."""
    threshold, accepted, rejected = start, [], 0
    while len(accepted) < classes:
        candidate = np.where(rng.random(bits) < 0.5, 1, -1)
        if all((candidate != row).sum() / bits >= threshold - 1e-9 for row in accepted):
            accepted.append(candidate)
            rejected = 0
            continue
        rejected += 1
        if rejected == patience:
            rejected = 0
            threshold = round(threshold - 0.01, 2)
            if threshold < floor - 1e-9:
                return None
    return np.array(accepted), threshold


@pytest.mark.parametrize("classes,bits,patience", [(2, 16, 50), (10, 16, 300), (12, 12, 700), (40, 10, 200)])
def test_maxhd_matches_a_sequential_reference(classes: int, bits: int, patience: int) -> None:
    reference = reference_maxhd(classes, bits, np.random.default_rng(5), 0.61, 0.2, patience)
    assert reference is not None
    want, threshold = reference
    got, summary = maxhd_targets(classes, bits, np.random.default_rng(5), 0.61, 0.2, patience)
    assert np.array_equal(got, want)
    assert summary["final_threshold"] == pytest.approx(threshold)
    distances = (got[:, None, :] != got[None, :, :]).sum(axis=2) / bits
    assert distances[~np.eye(classes, dtype=bool)].min() >= threshold - 1e-9


def test_maxhd_lowers_the_threshold_only_when_it_must() -> None:
    # Two rows: the first candidate pair at >= 0.61 K comes quickly, the threshold stays.
    _, summary = maxhd_targets(2, 16, np.random.default_rng(0))
    assert summary["final_threshold"] == 0.61 and summary["threshold_lowerings"] == 0
    # Plotkin: at most 5 words of 16 bits are >= 10 apart, so 10 classes force lowering.
    targets, summary = maxhd_targets(10, 16, np.random.default_rng(0), patience=500)
    assert summary["final_threshold"] < 0.61
    d = (targets[:, None, :] != targets[None, :, :]).sum(axis=2)[np.triu_indices(10, 1)]
    assert d.min() >= summary["final_threshold"] * 16 - 1e-9


def test_maxhd_floor_it_cannot_meet_is_refused_before_training() -> None:
    # Plotkin again: 6 words of 16 bits cannot all be >= 0.6 * 16 bits apart.
    assert reference_maxhd(6, 16, np.random.default_rng(1), 0.61, 0.6, 300) is None
    with pytest.raises(UserError, match=r"maxhd_floor=0\.6;"):
        maxhd_targets(6, 16, np.random.default_rng(1), 0.61, 0.6, 300)
    with pytest.raises(UserError, match="maxhd_floor=0.6"):
        OrthoHash.check(config(codebook="maxhd", maxhd_floor=0.6), make_task(bits=16, classes=6))


def test_cli_refuses_impossible_settings_with_one_line(capsys, tmp_path: Path) -> None:
    for setting, named in (("margin=-0.1", "margin=-0.1"), ("scale=0", "scale=0"),
                           ("maxhd_floor=0.7", "maxhd_floor=0.7"),
                           ("codebook=maxhd", None)):
        argv = ["run", "--methods", "orthohash", "--dataset", "synthetic", "--bits", "16",
                "--epochs", "1", "--quiet", "--results", str(tmp_path), "--set", setting]
        if named is None:  # a floor the sampler cannot meet for 6 classes at 16 bits
            argv += ["--set", "maxhd_floor=0.6"]
            named = "maxhd_floor=0.6"
        code = main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and named in err[0], err
        assert not list(tmp_path.rglob("*.json*"))  # refused before anything trained


def test_target_kinds_and_summary() -> None:
    rng = np.random.default_rng(0)
    hadamard, summary = orthohash_targets(8, 16, "hadamard", rng)
    assert summary["min_distance"] == 8 and summary["rule"].startswith("rows")
    assert np.array_equal(hadamard @ hadamard[:8].T, 16 * np.eye(8))
    bernoulli, summary = orthohash_targets(300, 16, "bernoulli", np.random.default_rng(0))
    assert set(np.unique(bernoulli)) == {-1, 1} and summary["mean_distance"] == pytest.approx(8, abs=0.3)
    again, _ = orthohash_targets(300, 16, "bernoulli", np.random.default_rng(0))
    assert np.array_equal(bernoulli, again)
    with pytest.raises(UserError, match="codebook='nope'"):
        orthohash_targets(3, 8, "nope", rng)


# ----------------------------------------------------------------------------- a run
def test_run_records_targets_settings_and_bn(tmp_path: Path) -> None:
    spec = RunSpec("orthohash", "synthetic", 16, protocol="native",
                   overrides=(("batch_size", 64), ("epochs", 1)))
    body = train_and_evaluate(spec, results_dir=tmp_path, device="cpu", progress_bars=False)
    settings = body["method"]["settings_used"]
    assert settings["scale"] == 4.0 and settings["scale_rule"] == "sqrt(K)"
    assert settings["released_code_scale"] == 8.0 and settings["margin"] == 0.2
    targets = np.array(body["method"]["targets"])
    assert targets.shape == (6, 16) and np.array_equal(targets, np.array(body["centers"]))
    assert body["config"]["backbone_lr_scale"] == 0.1 and body["config"]["lr_step_at"] == 0.8
    assert body["method_api"]["owned_modules"]["bn"]["trainable"] == 32
    assert body["method_api"]["retrieval_output"].startswith("sign(BN(h))")
