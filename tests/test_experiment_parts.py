"""Experiments that carry an attack and are made of parts (issue 30): the robustness experiment
needs the main table's rows under the tuned protocol and CgAT's under the harmonised one, every
run attacked. Parsing, refusals, expansion, --methods, and a tiny end-to-end run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.cli import main
from bench.errors import UserError
from bench.sweeps.experiments import load_experiment

FAST = ["--device", "cpu", "--quiet"]


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return str(path)


PARTS = """name: parts-test
dataset: synthetic
bits: [16]
seeds: [0]
settings: {epochs: 1}
attack: center:eps=0,steps=1
parts:
  - methods: [csq]
    protocol: tuned
  - methods: [cgat, csq]
    protocol: harmonised
    settings: {batch_size: 64}
    grid: [{base: csq}]
"""


def test_parts_merge_over_the_experiment(tmp_path: Path) -> None:
    experiment = load_experiment(write(tmp_path, PARTS))
    assert experiment.attack == "center:eps=0,steps=1"
    assert experiment.methods == ("csq", "cgat")
    first, second = experiment.parts
    assert (first.protocol, first.methods, first.settings, first.grid) == (
        "tuned", ("csq",), {"epochs": 1}, ({},))
    assert second.protocol == "harmonised" and second.settings == {"epochs": 1, "batch_size": 64}
    assert second.grid == ({"base": "csq"},) and second.dataset == "synthetic" and second.seeds == (0,)
    assert experiment.units == experiment.parts
    plain = load_experiment("main-table")
    assert plain.parts == () and plain.units == (plain,) and plain.attack is None


@pytest.mark.parametrize("text,expected", [
    ("attack: centre\n", "'attack': --attack centre: target 'centre' is not valid"),
    ("attack: 3\n", "'attack' must be an attack as --attack takes it"),
    ("parts: {methods: [csq]}\n", "'parts' must be a list of mappings"),
    ("parts:\n  - {methods: [csq], dataset: synthetic}\n", "part 1: key 'dataset' is the experiment's"),
    ("parts:\n  - {methods: []}\n", "'methods' must list at least one method name"),
])
def test_bad_experiment_keys_are_one_line(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(UserError, match=expected.replace("(", r"\(").replace("[", r"\[")):
        load_experiment(write(tmp_path, "name: bad\nmethods: [csq]\n" + text))


def test_a_dry_run_expands_part_by_part(tmp_path: Path, capsys, tuned_csq: Path) -> None:
    path = write(tmp_path, PARTS)
    assert main(["run", "--experiment", path, "--dry-run", "--results", str(tmp_path / "r")]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("todo")]
    labels = sorted(line.split("/")[0].split(maxsplit=1)[1].strip() for line in lines)
    assert len(lines) == 3
    assert any("csq synthetic 16b seed 0 tuned [epochs=1]" in line for line in lines)
    harmonised = "synthetic 16b seed 0 harmonised [base=csq,batch_size=64,epochs=1]"
    assert any(f"csq {harmonised}" in line for line in lines)
    assert any(f"cgat {harmonised}" in line for line in lines), labels
    assert main(["run", "--experiment", path, "--methods", "cgat", "--dry-run",
                 "--results", str(tmp_path / "r")]) == 0
    planned = [line.split()[1] for line in capsys.readouterr().out.splitlines() if line.startswith("todo")]
    assert planned == ["cgat"]
    assert main(["run", "--experiment", path, "--methods", "dpn", "--dry-run"]) == 2
    assert "dpn not in experiment parts-test" in capsys.readouterr().err


def test_the_robustness_experiment_plans_the_main_rows_and_cgat(capsys) -> None:
    experiment = load_experiment("robustness")
    main_rows = load_experiment("main-table").methods
    assert experiment.attack == "center" and experiment.bits == (32,) and experiment.seeds == (0, 1, 2)
    tuned = [p for p in experiment.parts if p.protocol == "tuned"]
    assert len(tuned) == 1 and set(tuned[0].methods) == set(main_rows)
    (cgat,) = [p for p in experiment.parts if "cgat" in p.methods]
    assert cgat.protocol == "harmonised" and sorted(g["base"] for g in cgat.grid) == ["crh", "csq"]
    assert all(p.settings.get("epochs") == 60 for p in experiment.parts)


def test_an_experiments_attack_runs_and_the_harmonised_part_trains_past_a_tuned_refusal(
        tmp_path: Path, capsys, one_thread, tuned_csq: Path) -> None:
    """The tuned part's values were searched at another budget and its record exists: it is
    only read (and trained again for its attack); the harmonised part trains; every run gets the
    experiment's attack beside its record."""
    setting = tuned_csq
    results = tmp_path / "results"
    assert main(["run", "--methods", "csq", "--bits", "16", "--protocol", "tuned", "--dataset", "synthetic",
                 "--epochs", "1", "--results", str(results), *FAST]) == 0
    setting.write_text(setting.read_text().replace("epochs: 1", "epochs: 2"))
    path = write(tmp_path, PARTS.replace("  - methods: [cgat, csq]", "  - methods: [csq]")
                 .replace("    grid: [{base: csq}]\n", ""))
    capsys.readouterr()
    assert main(["run", "--experiment", path, "--results", str(results), *FAST]) == 0
    out = capsys.readouterr().out
    assert "every tuned run's record exists (1)" in out
    attacks = sorted((results / "attacks" / "synthetic" / "csq").glob("*.json"))
    assert len(attacks) == 2  # the tuned run's and the harmonised run's
    for attack in attacks:
        result = json.loads(attack.read_text())
        assert result["attack"]["eps"] == 0.0 and result["attack"]["steps"] == 1
    runs = sorted((results / "runs" / "synthetic" / "csq").glob("*.json.gz"))
    assert len(runs) == 2 and {p.name.split("-")[3] for p in runs} == {"tuned", "harmonised"}
