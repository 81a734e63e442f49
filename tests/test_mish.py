"""MISH (methods/mish.py): its pieces on hand-worked inputs and tiny runs on the synthetic document card."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import bench.training.train as train
from bench.errors import UserError
from bench.runs.spec import RunSpec
from bench.training.regime import check_views
from bench.training.train import train_and_evaluate
from methods.mish import WordDecoder, bit_balance_loss, noise_sigma, problem_partners, sample_bits
from tests.test_unsupervised import corrupted_training_labels

pytest.importorskip("sklearn")  # the document card's TF-IDF

TINY = (("batch_size", 40), ("epochs", 2), ("eval_every", 1))


def test_straight_through_samples_are_bits_and_pass_gradients() -> None:
    p = torch.tensor([[0.0, 1.0, 0.3, 0.7]], requires_grad=True)
    bits = sample_bits(p, torch.Generator().manual_seed(0))
    assert set(bits.flatten().tolist()) <= {0.0, 1.0} and bits[0, 0] == 0 and bits[0, 1] == 1
    (bits * torch.tensor([1.0, 2.0, 3.0, 4.0])).sum().backward()
    assert p.grad.tolist() == [[1.0, 2.0, 3.0, 4.0]]  # identity gradient


def test_the_decoder_loss_on_a_hand_worked_input() -> None:
    decoder = WordDecoder(3, 1, torch.Generator().manual_seed(0))
    with torch.no_grad():
        decoder.embedding.copy_(torch.tensor([[1.0], [0.0], [-1.0]]))
        decoder.importance.fill_(1.0)
    # logits (1, 0, -1); the document holds words 0 and 2 (any positive weight counts once):
    # -(1 - L) - (-1 - L) = 2L, L = log(e + 1 + 1/e)
    loss = decoder.loss(torch.tensor([[1.0]]), torch.tensor([[0.5, 0.0, 0.2]]))
    assert loss.item() == pytest.approx(2 * math.log(math.e + 1 + 1 / math.e), abs=1e-5)


def test_the_noise_schedule() -> None:
    assert noise_sigma(0) == 1.0
    assert noise_sigma(1000) == pytest.approx(1 - 1e-3)
    assert noise_sigma(2_000_000) == 0.0


def test_bit_balance_reverses_the_gradient_into_the_bits() -> None:
    p = torch.rand(8, 4, generator=torch.Generator().manual_seed(1), requires_grad=True)
    weights = torch.rand(4, 4, requires_grad=True)
    bit_balance_loss(p, weights).backward()
    # the predictor descends its error; the bits receive the negated gradient of the same error
    plain = p.detach().clone().requires_grad_(True)
    bits = plain.shape[1]
    mask = 1 - torch.eye(bits)
    error = (((plain[:, :, None] * weights.detach()[None]) - plain.detach()[:, None, :]) ** 2 * mask)
    (error.sum(dim=(0, 2)) / (mask.sum(dim=1) * len(plain))).mean().backward()
    assert torch.allclose(p.grad, -plain.grad, atol=1e-6)


def test_problem_partners_collide_on_the_block_but_lie_outside_the_top_k() -> None:
    codes = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    memory = torch.tensor([[1.0, 1.0, -1.0, -1.0],   # equal on block 0, inner product 0
                           [1.0, 1.0, 1.0, -1.0],    # inner product 2: the nearest (top 1)
                           [-1.0, -1.0, 1.0, 1.0]])  # equal on block 1, inner product 0
    none = torch.zeros(2, 3, dtype=torch.bool)
    assert problem_partners(codes, memory, torch.tensor([0, 1]), 2, 1, none).tolist() == [0, 2]
    # the top-1 neighbour is never a problem pair; inside the top 3 nothing is
    assert problem_partners(codes, memory, torch.tensor([0, 1]), 2, 3, none).tolist() == [-1, -1]
    # a document is not its own partner
    itself = torch.tensor([[True, False, False], [False, False, False]])
    assert problem_partners(codes, memory, torch.tensor([0, 0]), 2, 1, itself).tolist() == [-1, 0]


def test_problem_partners_match_a_pairwise_loop_on_random_codes() -> None:
    """The vectorised search against the definition, pair by pair: equal on the chosen block,
    inner product below the k-th largest (self excluded), not the document itself, first in memory
    order. 6-bit blocks of 18-bit codes collide often enough to exercise every branch."""
    generator = torch.Generator().manual_seed(3)
    codes = torch.randint(0, 2, (40, 18), generator=generator).float() * 2 - 1
    memory = torch.randint(0, 2, (300, 18), generator=generator).float() * 2 - 1
    blocks = torch.randint(0, 3, (40,), generator=generator)
    same = torch.rand(40, 300, generator=generator) < 0.01
    found = problem_partners(codes, memory, blocks, 6, 20, same).tolist()
    expected = []
    for i in range(40):
        products = [float(codes[i] @ memory[m]) for m in range(300)]
        kth = sorted((v for m, v in enumerate(products) if not same[i, m]), reverse=True)[19]
        start = int(blocks[i]) * 6
        partner = next((m for m in range(300) if not same[i, m] and products[m] < kth
                        and torch.equal(codes[i, start:start + 6], memory[m, start:start + 6])), -1)
        expected.append(partner)
    assert found == expected and sum(x >= 0 for x in found) > 5


@pytest.mark.parametrize("batch", [3, 7, 12])
def test_the_memory_ring_keeps_what_writing_one_by_one_would(batch: int) -> None:
    from methods.mish import MISH

    method = MISH.__new__(MISH)  # only the ring's state
    method.memory_size, method.write = 5, 0
    method.memory_codes = torch.zeros(0, 2)
    method.memory_index = torch.zeros(0, dtype=torch.long)
    slots, write = [None] * 5, 0
    filled = 0
    for step in range(4):
        ids = torch.arange(step * batch, (step + 1) * batch)
        method._remember(torch.stack([ids.float(), -ids.float()], dim=1), ids)
        for index in ids.tolist():  # the definition: fill, then overwrite the oldest
            if filled < 5:
                slots[filled], filled = index, filled + 1
            else:
                slots[write], write = index, (write + 1) % 5
    assert method.memory_index.tolist() == slots
    assert method.memory_codes[:, 0].tolist() == [float(i) for i in slots]


def test_views_zero_is_the_unaugmented_batch_and_three_is_refused() -> None:
    assert check_views(0, "m") == 0
    with pytest.raises(UserError, match="0 \\(the unaugmented batch\\), 1 or 2"):
        check_views(3, "m")


def run(tmp_path: Path, dataset: str = "synthetic-documents") -> dict[str, Any]:
    spec = RunSpec("mish", dataset, 16, protocol="harmonised", overrides=TINY)
    return train_and_evaluate(spec, results_dir=tmp_path, device="cpu", progress_bars=False)


def test_two_epochs_on_documents_unsupervised_and_blind_to_labels(tmp_path: Path, one_thread: None,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    record = run(tmp_path / "true")
    assert len(record["history"]) == 2 and np.isfinite(record["metrics"]["mAP"])
    assert record["regime"]["supervised"] is False and record["regime"]["views"] == 0
    assert set(record["method_api"]["owned_modules"]) == {"decoder", "balance"}
    assert "problem pair side" in record["method_api"]["reconstruction"]
    corrupted_training_labels(monkeypatch)
    # A document source hands its labels to the per-split feature source it builds: restore those
    # too before scoring (the shared helper restores the corpus's).
    corrupted_evaluate, true_labels = train._encode_and_evaluate, {}

    def make_split(card: Any, source: Any, *args: Any, **kwargs: Any):
        true_labels.setdefault("labels", source.labels.copy())
        return corrupting_split(card, source, *args, **kwargs)

    def encode_and_evaluate(run_: Any, *args: Any, **kwargs: Any):
        run_.source.labels = true_labels["labels"]
        return corrupted_evaluate(run_, *args, **kwargs)

    corrupting_split = train.make_split
    monkeypatch.setattr(train, "make_split", make_split)
    monkeypatch.setattr(train, "_encode_and_evaluate", encode_and_evaluate)
    corrupted = run(tmp_path / "corrupted")
    assert corrupted["metrics"]["mAP"] == record["metrics"]["mAP"]
    assert corrupted["metrics"]["per_query_ap"] == record["metrics"]["per_query_ap"]


def test_an_image_card_is_refused_in_one_line(tmp_path: Path, one_thread: None) -> None:
    with pytest.raises(UserError) as error:
        run(tmp_path, "synthetic")
    assert "mish: hashes documents" in str(error.value) and "\n" not in str(error.value)
