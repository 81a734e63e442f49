"""The attack evaluation's parts on tiny inputs: CgAT's center code by hand, PGD's budget and
pixel box, its effect on the codes, determinism, and the option's parsing."""

from __future__ import annotations

import pytest
import torch

from bench.errors import UserError
from bench.evaluation.attack import AttackSpec, center_targets, parse_attack, pgd


def test_center_code_of_the_spec_example() -> None:
    """Class 0 holds (1,1,-1), (1,-1,-1); class 1 holds (-1,-1,1), (-1,1,1): by hand,
    2*(2,0,-2) - 2*(-2,0,2) = (8,0,-8), so b*_0 = (1,0,-1) and b*_1 = (-1,0,1)."""
    codes = torch.tensor([[1, 1, -1], [1, -1, -1], [-1, -1, 1], [-1, 1, 1]], dtype=torch.float32)
    labels = torch.tensor([[1, 0], [1, 0], [0, 1], [0, 1]])
    targets = center_targets(torch.tensor([[1, 0], [0, 1]]), codes, labels)
    assert targets.tolist() == [[1, 0, -1], [-1, 0, 1]]


def test_center_code_weighs_unequal_sets() -> None:
    """One positive (1,1) against three negatives summing to (-1,3): 3*(1,1) - 1*(-1,3) = (4,0)."""
    codes = torch.tensor([[1, 1], [-1, 1], [1, 1], [-1, 1]], dtype=torch.float32)
    labels = torch.tensor([[1, 0], [0, 1], [0, 1], [0, 1]])
    assert center_targets(torch.tensor([[1, 0]]), codes, labels).tolist() == [[1, 0]]


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2 * 4 * 4, 16))


BOX = (torch.full((1, 2, 1, 1), -1.0), torch.full((1, 2, 1, 1), 1.5), torch.full((1, 2, 1, 1), 2.0))


def attack(spec: AttackSpec, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.nn.Module]:
    model = tiny_model().eval()
    images = torch.rand((8, 2, 4, 4), generator=torch.Generator().manual_seed(1)) * 2.5 - 1.0
    clean = torch.sign(model(images)).detach()
    adversarial = pgd(model, images, clean, spec, BOX, torch.Generator().manual_seed(seed))
    return images, adversarial, model


def test_pgd_stays_in_the_budget_and_the_pixel_box() -> None:
    spec = AttackSpec(target="self", eps=0.1, step=0.03, steps=10)
    images, adversarial, _ = attack(spec)
    per_pixel = BOX[2]
    assert ((adversarial - images).abs() <= spec.eps * per_pixel + 1e-6).all()
    assert (adversarial >= BOX[0] - 1e-6).all() and (adversarial <= BOX[1] + 1e-6).all()
    assert (adversarial - images).abs().max() > 0


def test_pgd_moves_codes_away_from_their_clean_code() -> None:
    spec = AttackSpec(target="self", eps=0.5, step=0.05, steps=20, random_start=False)
    images, adversarial, model = attack(spec)
    clean, attacked = torch.sign(model(images)), torch.sign(model(adversarial))
    flipped = (clean != attacked).float().sum(dim=1)
    assert flipped.mean() > 1.0  # bits flipped per query, from none


def test_a_zero_budget_changes_nothing() -> None:
    images, adversarial, _ = attack(AttackSpec(target="self", eps=0.0, steps=5))
    assert torch.equal(images, adversarial)


def test_the_attack_is_deterministic_and_its_seed_matters() -> None:
    spec = AttackSpec(target="self", eps=0.2, step=0.02, steps=3)
    first, second, other = attack(spec)[1], attack(spec)[1], attack(spec, seed=5)[1]
    assert torch.equal(first, second) and not torch.equal(first, other)


def test_parse_attack() -> None:
    spec = parse_attack("center:eps=8/255,steps=20,random_start=false")
    assert spec.target == "center" and spec.eps == pytest.approx(8 / 255) and spec.steps == 20
    assert spec.random_start is False and spec.step == pytest.approx(1 / 255)
    assert parse_attack("self").attack_id.startswith("self-")
    assert parse_attack("self").attack_id != parse_attack("self:eps=4/255").attack_id


@pytest.mark.parametrize("text, expected", [
    ("centre", "target 'centre' is not valid"),
    ("center:eps=x", "eps='x' is not a number"),
    ("center:steps=2.5", "steps=2.5 must be a whole number"),
    ("center:speed=3", "'speed=3' is not valid"),
    ("center:eps=-1/255", "must be >= 0"),
])
def test_bad_attack_options_are_one_line(text: str, expected: str) -> None:
    with pytest.raises(UserError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        parse_attack(text)


def test_attack_option_end_to_end_keeps_the_record(tmp_path, one_thread) -> None:
    """Spec check 7: at eps 0 the attacked mAP is the record's; at 8/255 it drops; the record
    is byte-identical to the one written without the attack, and its id does not change."""
    import json

    from bench.cli import main
    from bench.runs.records import read_record

    base = ["run", "--methods", "csq", "--dataset", "synthetic", "--bits", "16", "--epochs", "2",
            "--results", str(tmp_path), "--quiet"]
    assert main([*base, "--attack", "center:eps=0"]) == 0
    (record_path,) = (tmp_path / "runs" / "synthetic" / "csq").glob("*.json.gz")
    stored = record_path.read_bytes()
    record = read_record(record_path)
    assert "attack_result" not in record
    assert main([*base, "--attack", "center:eps=8/255,steps=20"]) == 0
    assert record_path.read_bytes() == stored
    results = {}
    for path in (tmp_path / "attacks" / "synthetic" / "csq").glob("*.json"):
        assert path.name.startswith(record["run_id"] + ".center-")
        result = json.loads(path.read_text())
        results[result["attack"]["eps"]] = result
    assert len(results) == 2 and 0.0 in results
    zero = results[0.0]
    attacked = next(r for eps, r in results.items() if eps > 0)
    assert zero["clean_mAP"] == record["metrics"]["mAP"]
    assert abs(zero["adversarial_mAP"] - zero["clean_mAP"]) <= 1e-3 and zero["bits_flipped_mean"] == 0
    assert attacked["adversarial_mAP"] < attacked["clean_mAP"] and attacked["record_reproduced"] is True
    assert main([*base, "--attack", "center:eps=8/255,steps=20", "--dry-run"]) == 0  # now done
    assert main([*base, "--attack", "centre"]) == 2
