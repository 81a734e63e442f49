"""The regression gate (`bench check`) without training: its tolerance rule against
hand-worked numbers, compare() both ways, missing and unknown runs, `--update` through the
command with the training replaced by fabricated records, and the committed baseline: every
method in it, and every method's mAP tolerance narrow enough to catch a 3-point change, which
a fabricated +3 or -3 point change then fails."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import bench.commands.check as check
from bench.cli import main
from methods import available_methods, get_method


def fabricated(values: dict[str, list[float]], shift: float = 0.0) -> list[dict[str, Any]]:
    """Gate records: method -> mAP per seed (the other metrics follow it)."""
    records = []
    for method, per_seed in values.items():
        for seed, value in zip(check.GATE["seeds"], per_seed, strict=True):
            v = value + shift
            records.append({"spec": {"method": method, "seed": seed, "dataset": check.GATE["dataset"]},
                            "metrics": {"mAP": v, "mAP_tie_aware": v + 0.001, "p_at_r2": v - 0.01},
                            "environment": {"cpu_count": 2}})
    return records


def table(values: dict[str, list[float]], shift: float = 0.0) -> dict[str, dict[int, dict[str, float]]]:
    return check.per_seed_metrics(fabricated(values, shift))


FOUR = {"csq": [0.60, 0.62, 0.64, 0.62], "crh": [0.70, 0.70, 0.70, 0.70]}


@pytest.fixture
def four_seeds(monkeypatch: pytest.MonkeyPatch) -> None:
    """The unit tests' fabricated runs have four seeds, whatever the committed gate uses."""
    monkeypatch.setitem(check.GATE, "seeds", [0, 1, 2, 3])


# ----------------------------------------------------------------------------- the rule
def test_tolerance_is_three_standard_errors_with_a_floor() -> None:
    # mean 0.62, deviations -0.02, 0, +0.02, 0: s = sqrt(0.0008 / 3) = 0.0163299
    assert check.sample_std([0.60, 0.62, 0.64, 0.62]) == pytest.approx(math.sqrt(0.0008 / 3))
    assert check.tolerance([0.60, 0.62, 0.64, 0.62]) == pytest.approx(3 * 0.0163299 / 2, rel=1e-5)
    assert check.tolerance([0.7, 0.7, 0.7]) == check.FLOOR == 0.005
    # s = 0.01, n = 3: 3 * 0.01 / sqrt 3 = 0.0173 (below the cap)
    assert check.tolerance([0.60, 0.61, 0.59]) == pytest.approx(3 * 0.01 / math.sqrt(3))
    # A spread of 0.0707 would ask for 0.15: capped at 0.025, under the 3 points to catch.
    assert check.tolerance([0.5, 0.6]) == check.CAP == 0.025 < check.CATCH


def test_summarise_keeps_per_seed_values_mean_spread_and_tolerance(four_seeds: None) -> None:
    summary = check.summarise(table(FOUR))
    csq = summary["csq"]
    assert csq["seeds"]["2"]["mAP"] == 0.64
    assert csq["mean"]["mAP"] == pytest.approx(0.62)
    assert csq["std"]["mAP"] == pytest.approx(0.0163299, rel=1e-5)
    assert csq["tolerance"]["mAP"] == pytest.approx(0.0244949, rel=1e-5)
    assert summary["crh"]["tolerance"]["mAP"] == check.FLOOR
    assert summary["csq"]["capped"] == summary["crh"]["capped"] == []
    wide = check.summarise(table({"hashnet": [0.20, 0.42, 0.31, 0.38]}))["hashnet"]
    assert wide["tolerance"]["mAP"] == check.CAP and "mAP" in wide["capped"]


# ----------------------------------------------------------------------------- compare
def made_baseline(values: dict[str, list[float]]) -> dict[str, Any]:
    return check.baseline_payload(table(values), {"cpu_count": 2}, 12.0)


def test_compare_passes_on_the_baseline_itself_and_fails_both_ways(four_seeds: None) -> None:
    baseline = made_baseline(FOUR)
    ok, lines = check.compare(table(FOUR), baseline)
    assert ok and not any("FAIL" in line for line in lines)
    # csq's tolerance is 0.0245: +0.024 passes, +0.025 and -0.025 fail; crh's is 0.005.
    assert check.compare(table({**FOUR, "csq": [v + 0.024 for v in FOUR["csq"]]}), baseline)[0]
    for shift, word in ((0.025, "rose"), (-0.025, "fell")):
        ok, lines = check.compare(table({**FOUR, "csq": [v + shift for v in FOUR["csq"]]}), baseline)
        assert not ok
        assert any(line.startswith("csq") and f"FAIL ({word})" in line for line in lines)
    ok, lines = check.compare(table({**FOUR, "crh": [0.706] * 4}), baseline)
    assert not ok and any(line.startswith("crh") and "FAIL" in line for line in lines)


def test_compare_uses_the_mean_not_the_best_seed(four_seeds: None) -> None:
    baseline = made_baseline(FOUR)
    # One seed up 0.04 and another down 0.04: the mean is unchanged, so this passes...
    moved = {**FOUR, "csq": [0.64, 0.58, 0.64, 0.62]}
    assert check.compare(table(moved), baseline)[0]
    # ...while every seed up by 0.03 (the best seed barely beats the baseline's best) fails.
    assert not check.compare(table({**FOUR, "csq": [v + 0.03 for v in FOUR["csq"]]}), baseline)[0]


def test_missing_runs_and_methods_not_in_the_baseline_fail(four_seeds: None) -> None:
    baseline = made_baseline(FOUR)
    only_csq = {"csq": table(FOUR)["csq"]}
    ok, lines = check.compare(only_csq, baseline, expected=["crh", "csq"])
    assert not ok and any(line.startswith("crh") and "missing" in line for line in lines)
    partial = table(FOUR)
    del partial["csq"][3]
    ok, lines = check.compare(partial, baseline)
    assert not ok and any("seeds [3] missing" in line for line in lines)
    newcomer = {**table(FOUR), **table({"newhash": [0.5] * 4})}
    ok, lines = check.compare(newcomer, baseline, expected=["crh", "csq", "newhash"])
    assert not ok and any(line.startswith("newhash") and "not in the baseline" in line for line in lines)
    # A subset asked for by name (`--methods csq`, as the mutant check does) checks only it.
    assert check.compare(only_csq, baseline, expected=["csq"])[0]
    other_gate = {**baseline, "gate": {**baseline["gate"], "bits": 32}}
    ok, lines = check.compare(table(FOUR), other_gate)
    assert not ok and "another gate configuration" in lines[1]


# ----------------------------------------------------------------------------- the command
@pytest.fixture
def fake_training(monkeypatch: pytest.MonkeyPatch):
    """Replace the gate's training by fabricated records; returns a setter for them."""
    state: dict[str, Any] = {"records": [], "failed": []}

    def train_gate(methods: list[str], args: Any):
        records = [r for r in state["records"] if r["spec"]["method"] in methods]
        return SimpleNamespace(failed=state["failed"], aborted=""), records, 3.0

    monkeypatch.setattr(check, "train_gate", train_gate)
    monkeypatch.setattr(check, "gate_methods", lambda requested: sorted(
        {r["spec"]["method"] for r in state["records"]} if not requested else requested.split(",")))
    return state


def test_update_writes_the_baseline_and_check_then_fails_both_ways(
        tmp_path: Path, fake_training: dict, four_seeds: None, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "baseline.json"
    fake_training["records"] = fabricated(FOUR)
    assert main(["check", "--update", "--baseline", str(path)]) == 0
    written = json.loads(path.read_text())
    assert written["gate"] == check.GATE and set(written["methods"]) == {"crh", "csq"}
    assert written["methods"]["csq"]["mean"]["mAP"] == pytest.approx(0.62)
    assert written["methods"]["csq"]["tolerance"]["mAP"] == pytest.approx(0.0244949, rel=1e-5)
    assert written["methods"]["csq"]["seeds"]["0"]["mAP"] == 0.60
    assert "s / sqrt(n)" in written["rule"]
    capsys.readouterr()
    assert main(["check", "--baseline", str(path)]) == 0
    assert "regression gate: passed" in capsys.readouterr().out
    for shift in (0.03, -0.03):
        fake_training["records"] = fabricated(FOUR, shift)
        assert main(["check", "--baseline", str(path)]) == 1
        assert "regression gate: FAILED" in capsys.readouterr().out


def test_update_refuses_failed_runs_and_a_missing_baseline_is_one_line(
        tmp_path: Path, fake_training: dict, four_seeds: None, capsys: pytest.CaptureFixture[str]) -> None:
    fake_training["records"] = fabricated(FOUR)
    fake_training["failed"] = [("csq-16b-s3", "TrainingDiverged: nan")]
    assert main(["check", "--update", "--baseline", str(tmp_path / "b.json")]) == 2
    assert not (tmp_path / "b.json").exists()
    capsys.readouterr()
    assert main(["check", "--baseline", str(tmp_path / "absent.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--update" in err


def test_a_capped_method_is_named_and_still_fails_on_three_points(
        tmp_path: Path, fake_training: dict, four_seeds: None, capsys: pytest.CaptureFixture[str]) -> None:
    noisy = {"hashnet": [0.20, 0.42, 0.31, 0.38]}
    fake_training["records"] = fabricated(noisy)
    assert main(["check", "--update", "--baseline", str(tmp_path / "b.json")]) == 0
    assert "hashnet's mAP varies" in capsys.readouterr().out
    assert main(["check", "--baseline", str(tmp_path / "b.json")]) == 0
    assert "hashnet's tolerance is capped" in capsys.readouterr().out
    fake_training["records"] = fabricated(noisy, -0.03)
    assert main(["check", "--baseline", str(tmp_path / "b.json")]) == 1


# ----------------------------------------------------------------------------- the committed baseline
@pytest.fixture(scope="module")
def committed() -> dict[str, Any]:
    return json.loads(check.BASELINE.read_text())


def test_committed_baseline_is_for_this_gate_and_every_method(committed: dict[str, Any]) -> None:
    assert committed["gate"] == check.GATE
    # every method that takes images (the gate's card is an image card)
    assert set(committed["methods"]) == set(check.gate_methods(None)), \
        "regenerate the baseline: python -m bench check --update"
    assert set(check.gate_methods(None)) == {
        m for m in available_methods() if "images" in get_method(m).inputs}
    for entry in committed["methods"].values():
        assert sorted(int(s) for s in entry["seeds"]) == sorted(check.GATE["seeds"])
        for metric in check.METRICS:
            values = [entry["seeds"][s][metric] for s in entry["seeds"]]
            assert entry["mean"][metric] == pytest.approx(sum(values) / len(values))
            assert entry["tolerance"][metric] == pytest.approx(check.tolerance(values))


def test_committed_baseline_catches_a_three_point_change_of_any_method(committed: dict[str, Any]) -> None:
    current = {name: {int(s): dict(v) for s, v in entry["seeds"].items()}
               for name, entry in committed["methods"].items()}
    assert check.compare(current, committed)[0]
    for name, entry in committed["methods"].items():
        assert entry["tolerance"]["mAP"] < check.CATCH, f"{name}: the gate cannot catch a 3-point change"
        for shift in (check.CATCH, -check.CATCH):
            moved = copy.deepcopy(current)
            for values in moved[name].values():
                values["mAP"] += shift
            ok, lines = check.compare(moved, committed)
            assert not ok, (name, shift)
            assert any(line.startswith(name) and " mAP " in line and "FAIL" in line for line in lines)
