"""Issue 26 (shared/specs/methods-fidelity-v2.md, section 7): baselines at their official
settings and a tuning protocol that is fair by construction. SHC's checks (1, 2, 9) live in
tests/test_shc.py, HCLM's (8) in tests/test_hclm.py; this file holds the shared ones."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from bench.cli import main
from bench.errors import UserError
from bench.runs.spec import RunSpec, resolve_config
from bench.tuning.tune import (
    default_point,
    knob_counts,
    outside,
    resolved_defaults,
    search_space,
    trial_budget,
)
from bench.tuning.widening import edge_hits, widen
from methods import available_methods, get_method
from methods.base import Task


def task(bits: int = 32, classes: int = 10, multi_label: bool = False) -> Task:
    return Task(bits=bits, num_classes=classes, multi_label=multi_label, seed=0, epochs=4,
                device=torch.device("cpu"))


# ----------------------------------------------------------------------------- checks 3-5
def test_every_method_has_a_default_point() -> None:
    """Check 3: trial 0 exists for every method (OrthoHash's scale None used to drop it)."""
    assert [m for m in available_methods() if default_point(m, search_space(m)) is None] == []
    point = default_point("orthohash", search_space("orthohash"), task(bits=16))
    assert point == {"lr": 1e-3, "margin": 0.2, "scale": 4.0}  # sqrt(16), the supplement's rule
    crh = default_point("crh", search_space("crh"), task(classes=10))
    assert crh["scale"] == pytest.approx(math.sqrt(2) * math.log(9)) and crh["lambda_q"] == 0.1


def test_a_default_outside_its_range_is_named_and_put_at_the_edge() -> None:
    multi = task(multi_label=True)  # CRH's multi-label lambda_q is 0: no log range holds it
    assert resolved_defaults("crh", search_space("crh"), multi)["lambda_q"] == 0.0
    assert outside(search_space("crh"), resolved_defaults("crh", search_space("crh"), multi)) == ["lambda_q"]
    assert default_point("crh", search_space("crh"), multi)["lambda_q"] == search_space("crh")["lambda_q"][1]


def test_shared_knobs_have_one_range() -> None:
    """Check 4 and R2: scale, margin, lambda_q and lr on the spec's ranges for every method."""
    spaces = {m: search_space(m) for m in available_methods()}
    assert spaces["crh"]["scale"] == spaces["orthohash"]["scale"] == spaces["mds"]["scale"]
    assert spaces["crh"]["scale"] == ("log", 1.0, 16.0)
    assert spaces["crh"]["margin"] == spaces["orthohash"]["margin"] == ("float", 0.0, 1.0)
    for method in ("csq", "shc", "mds", "crh"):
        assert spaces[method]["lambda_q"] == ("log", 1e-5, 1.0)
    assert {spaces[m]["lr"] for m in spaces} == {("log", 1e-4, 1e-2)}
    # No method keeps a shared knob fixed that another searches.
    for key in ("scale", "lambda_q"):
        for method in ("crh", "orthohash", "mds", "csq", "shc"):
            has = key in get_method(method).params
            assert (key in spaces[method]) == has, (method, key)


def test_knob_counts_and_trial_budget() -> None:
    counts = knob_counts(available_methods())
    assert counts["crh"] == 4 and counts["orthohash"] == 3 and counts["mds"] == 4
    assert counts["csq"] == counts["shc"] == counts["hashnet"] == counts["dpn"] == 2
    assert counts["hclm"] == counts["classify-then-hash"] == 1
    assert trial_budget(available_methods()) == 24  # R5: some method searches 3+ knobs
    assert trial_budget(["csq", "hclm"]) == 12


def test_every_official_default_lies_inside_its_range() -> None:
    """Check 5 over C in {10, 100, 196, 555} and K in {16, 32, 64}, incl. sqrt(K), 8,
    sqrt(2) ln(C-1), 0.1 and 10/K where a method searches that knob."""
    from bench.tuning.fidelity import defaults_outside

    assert defaults_outside() == []
    widest = get_method("orthohash").resolve_default("scale", "adacos", task(classes=555))
    assert widest == pytest.approx(math.sqrt(2) * math.log(554))
    assert search_space("orthohash")["scale"][1] <= widest <= search_space("orthohash")["scale"][2]


@pytest.mark.parametrize("method", ["orthohash", "crh", "mds"])
def test_scale_takes_a_rule_or_a_number(method: str) -> None:
    cls = get_method(method)
    assert cls.resolve_default("scale", "sqrt_k", task(bits=64)) == 8.0
    adacos = cls.resolve_default("scale", "adacos", task(classes=10))
    assert adacos == pytest.approx(math.sqrt(2) * math.log(9))
    assert cls.resolve_default("scale", 5, task()) == 5.0
    with pytest.raises(UserError, match="scale='big' is not valid.*sqrt_k, adacos"):
        cls.resolve_default("scale", "big", task())
    config = resolve_config(RunSpec(method, "synthetic", 16, protocol="harmonised",
                                    overrides=(("scale", "adacos"),)))
    cls.check(config, task(bits=16, classes=6))


def test_bad_scale_is_one_line_and_exit_2(capsys, tmp_path) -> None:
    code = main(["run", "--methods", "orthohash", "--dataset", "synthetic", "--bits", "16", "--set",
                 "scale=-1", "--results", str(tmp_path), "--dry-run"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "scale=-1" in err[0] and "sqrt_k" in err[0]


# ----------------------------------------------------------------------------- check 10, CSQ
def test_hashnet_native_alpha_is_ten_over_k() -> None:
    from methods.hashnet import HashNet

    config = resolve_config(RunSpec("hashnet", "synthetic", 16, protocol="native"))
    assert HashNet(config, task(bits=16, classes=6)).alpha == 0.625
    assert HashNet.resolve_default("alpha", config["alpha"], task(bits=64)) == pytest.approx(10 / 64)
    harmonised = resolve_config(RunSpec("hashnet", "synthetic", 16, protocol="harmonised"))
    assert HashNet(harmonised, task(bits=16, classes=6)).alpha == 0.1  # the paper's value stays


def test_csq_native_is_named_a_re_implementation() -> None:
    assert "re-implementation" in get_method("csq").native_source


# ----------------------------------------------------------------------------- check 7: edges
def test_edge_hits_and_widening() -> None:
    space = {"lr": ("log", 1e-4, 3e-3), "margin": ("float", 0.0, 0.5), "lambda_q": ("log", 1e-5, 0.1)}
    # lr: log10 span 1.477, 5 % = 0.074 -> above 10^(log10(3e-3) - 0.074) = 2.53e-3 is an edge hit.
    assert edge_hits({"lr": 2.6e-3, "margin": 0.2, "lambda_q": 1e-3}, space) == [("lr", "high")]
    assert edge_hits({"lr": 2.4e-3, "margin": 0.2, "lambda_q": 1e-3}, space) == []
    assert edge_hits({"lr": 1e-3, "margin": 0.49, "lambda_q": 1.08e-5}, space) == [
        ("margin", "high"), ("lambda_q", "low")]
    assert edge_hits({"lr": 1e-3, "margin": 0.01, "lambda_q": 1e-3}, space) == []  # m = 0 is hard
    wider = widen(space, [("lr", "high"), ("margin", "high"), ("lambda_q", "low")])
    assert wider["lr"] == ("log", 1e-4, pytest.approx(9e-3))
    assert wider["margin"] == ("float", 0.0, 0.75)
    assert wider["lambda_q"] == ("log", pytest.approx(1e-5 / 3), 0.1)
    assert widen(space, [("margin", "low")])["margin"] == ("float", 0.0, 0.5)  # never below 0
    # Two methods can hit opposite edges of one shared knob in one round (the multi-label card's
    # scale: MDS at the bottom, OrthoHash at the top): both edges move, neither undoes the other.
    both = widen(space, [("lambda_q", "low"), ("lambda_q", "high"), ("margin", "high"), ("margin", "low")])
    assert both["lambda_q"] == ("log", pytest.approx(1e-5 / 3), pytest.approx(0.3))
    assert both["margin"] == ("float", 0.0, 0.75)
    # A linear knob without a hard bound: each edge moves by half the given range, in either order,
    # and a repeated hit moves its edge once.
    beta = {"beta": ("float", 1.0, 3.0)}
    assert widen(beta, [("beta", "low"), ("beta", "high")])["beta"] == ("float", 0.0, 4.0)
    assert widen(beta, [("beta", "high"), ("beta", "low")])["beta"] == ("float", 0.0, 4.0)
    assert widen(beta, [("beta", "high"), ("beta", "high")])["beta"] == ("float", 1.0, 4.0)


def test_edge_hits_of_a_tuned_file(tmp_path) -> None:
    from bench.tuning.fidelity import tuned_edge_hits

    (tmp_path / "synthetic.yaml").write_text(
        "dataset: synthetic\nmethods:\n  csq:\n    values: {lr: 0.0029, lambda_q: 0.001}\n"
        "    search_space: {lr: [log, 0.0001, 0.003], lambda_q: [log, 1.0e-05, 0.1]}\n")
    assert tuned_edge_hits(tmp_path) == ["synthetic csq lr at high edge (0.0029 in [0.0001, 0.003]; "
                                         "searched at 32 bits/30 epochs)"]


def test_an_edge_hit_of_a_superseded_entry_is_counted_apart(tmp_path) -> None:
    """A later search at the same bit length replaces an entry for new tables: its edge hit no
    longer fails check 7 and is listed apart; the later entry's own hit would count."""
    from bench.tuning.fidelity import tuned_edge_hits

    space = "    search_space: {lr: [log, 0.0001, 0.003], lambda_q: [log, 1.0e-05, 0.1]}\n"
    (tmp_path / "synthetic.yaml").write_text(
        "dataset: synthetic\nmethods:\n  csq:\n"
        "  - values: {lr: 0.0029, lambda_q: 0.001}\n    bits: 32\n    epochs: 30\n    date: '2026-11-25'\n"
        + space.replace("    ", "    ", 1)
        + "  - values: {lr: 0.001, lambda_q: 0.001}\n    bits: 32\n    epochs: 60\n    date: '2026-12-04'\n"
        + space)
    assert tuned_edge_hits(tmp_path) == []
    assert tuned_edge_hits(tmp_path, superseded=True) == [
        "synthetic csq lr at high edge (0.0029 in [0.0001, 0.003]; searched at 32 bits/30 epochs)"]


# ----------------------------------------------------------------------------- check 6: budget
ENTRY = "    values: {lr: 0.0005, lambda_q: 0.01}\n"


def write_setting(folder: Path, *entries: str) -> None:
    body = "".join(entries)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "synthetic.yaml").write_text(f"dataset: synthetic\nmethods:\n  csq:\n{body}")


def tuned(bits: int, epochs: int | None = None) -> dict:
    overrides = (("epochs", epochs),) if epochs is not None else ()
    return resolve_config(RunSpec("csq", "synthetic", bits, protocol="tuned", overrides=overrides))


def test_tuned_values_apply_only_at_their_budget(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("BENCH_TUNED_DIR", str(tmp_path))
    write_setting(tmp_path, ENTRY + "    bits: 16\n    epochs: 4\n")
    assert tuned(16)["lr"] == 0.0005  # the card's 4 epochs, 16 bits
    with pytest.raises(UserError, match=r"searched at 16 bits/4 epochs, not at this run's 16 bits/8 epochs"):
        tuned(16, 8)
    with pytest.raises(UserError, match=r"not at this run's 32 bits/4 epochs \(and no transfer check"):
        tuned(32)


def test_a_transfer_check_lets_values_cross_bit_lengths_not_budgets(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("BENCH_TUNED_DIR", str(tmp_path))
    write_setting(tmp_path, ENTRY + "    bits: 16\n    epochs: 4\n"
                  "    transfer: {32: {within_spread: true}, 64: {within_spread: false}}\n")
    assert tuned(32)["lr"] == 0.0005
    with pytest.raises(UserError, match="64 bits/4 epochs"):
        tuned(64)  # the check ran and failed: search there
    with pytest.raises(UserError, match="32 bits/8 epochs"):
        tuned(32, 8)  # a transfer check never crosses epoch budgets


def test_a_later_check_that_holds_retires_an_earlier_own_search(tmp_path, monkeypatch) -> None:
    """A 16-bit search made because an earlier 32-bit check failed there gives way once a newer
    32-bit search's check holds at 16 bits (its values apply there, as for every method whose
    check held); a 16-bit search newer than the check keeps its length. The retired entry's edge
    hit no longer counts as current."""
    from bench.tuning.fidelity import tuned_edge_hits

    monkeypatch.setenv("BENCH_TUNED_DIR", str(tmp_path))
    space = "    search_space: {lr: [log, 0.0001, 0.01], lambda_q: [log, 0.00001, 1.0]}\n"
    own = ("  - values: {lr: 0.0099, lambda_q: 0.01}\n    bits: 16\n    epochs: 4\n" + space
           + "    date: '2026-12-05T10:00:00Z'\n")
    checked = ("  - values: {lr: 0.0005, lambda_q: 0.01}\n    bits: 32\n    epochs: 4\n" + space
               + "    transfer: {16: {within_spread: true}}\n    date: '2026-12-06T10:00:00Z'\n")
    write_setting(tmp_path, own, checked)
    assert tuned(16)["lr"] == 0.0005
    assert tuned_edge_hits(tmp_path) == []
    assert len(tuned_edge_hits(tmp_path, superseded=True)) == 1  # counted apart, kept for its records
    write_setting(tmp_path, own.replace("2026-12-05", "2026-12-07"), checked)
    assert tuned(16)["lr"] == 0.0099
    assert len(tuned_edge_hits(tmp_path)) == 1


def test_entries_per_budget_and_legacy_entries(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("BENCH_TUNED_DIR", str(tmp_path))
    write_setting(tmp_path, "  - values: {lr: 0.0005}\n    bits: 16\n    epochs: 4\n"
                            "  - values: {lr: 0.0007}\n    bits: 16\n    epochs: 8\n")
    assert tuned(16)["lr"] == 0.0005 and tuned(16, 8)["lr"] == 0.0007
    write_setting(tmp_path, ENTRY)  # no bits, no epochs: written at 32 bits, 30 epochs
    assert tuned(32, 30)["lr"] == 0.0005
    assert tuned(32, 30)["tuned_setting"]["searched_at"] == {"bits": 32, "epochs": 30}
    with pytest.raises(UserError, match="searched at 32 bits/30 epochs"):
        tuned(32)


def test_committed_tuned_files_keep_the_30_epoch_entries_beside_the_60_epoch_search() -> None:
    """The entries written before budgets were keyed load as 32 bits/30 epochs; Fashion-MNIST's
    search at its table budget (32 bits, 60 epochs) sits beside them for every table row, and a
    method's own search at another length of the table (where its transfer check failed) is at
    the table's budget too (60 epochs on Fashion-MNIST, 30 on the multi-label card)."""
    from bench.runs.spec import entry_budget, load_tuned
    from bench.sweeps.experiments import load_experiment

    rows = load_experiment("main-table").methods
    # (card, the budgets every row has, the table budget's epochs for own searches at 16/64 bits)
    for card, budgets, epochs in (("fashion-mnist", {(32, 30), (32, 60)}, 60),
                                  ("fashion-mnist-multi", {(32, 30)}, 30)):
        setting = load_tuned(card)
        assert setting is not None and setting.methods
        for method in rows:
            found = {entry_budget(e) for e in setting.entries(method)}
            assert budgets <= found and found - budgets <= {(16, epochs), (64, epochs)}, (card, method, found)


def test_budget_mismatch_is_refused_in_one_line(capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("BENCH_TUNED_DIR", str(tmp_path / "tuned"))
    write_setting(tmp_path / "tuned", ENTRY + "    bits: 16\n    epochs: 4\n")
    code = main(["run", "--methods", "csq", "--protocol", "tuned", "--dataset", "synthetic", "--bits",
                 "16", "--epochs", "8", "--results", str(tmp_path / "results"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "16 bits/4 epochs" in err[0] and "16 bits/8 epochs" in err[0]
    assert not (tmp_path / "results" / "runs").exists()


def test_dry_run_of_a_mismatched_table_lists_it_with_a_note(capsys, tmp_path, monkeypatch) -> None:
    """main-table (tuned, 60 epochs) is refused while the method's only entry was searched at 30
    epochs; its dry run still lists the runs, and says so. (Its own tuned file, so that the test
    does not depend on how far the committed searches have come.)"""
    monkeypatch.setenv("BENCH_TUNED_DIR", str(tmp_path / "tuned"))
    (tmp_path / "tuned").mkdir()
    (tmp_path / "tuned" / "fashion-mnist.yaml").write_text(
        "dataset: fashion-mnist\nmethods:\n  csq:\n" + ENTRY + "    bits: 32\n    epochs: 30\n")
    code = main(["run", "--experiment", "main-table", "--methods", "csq", "--seeds", "0", "--dry-run",
                 "--results", str(tmp_path / "results")])
    out = capsys.readouterr().out
    assert code == 0
    assert out.startswith("note: a real run would refuse: protocol tuned:") and "60 epochs" in out
    assert out.count("csq fashion-mnist") == 3  # 16, 32 and 64 bits listed


def test_mismatch_script_counts_tuned_experiments(tmp_path, monkeypatch) -> None:
    from bench.tuning.fidelity import tuned_mismatches

    monkeypatch.setenv("BENCH_TUNED_DIR", str(tmp_path / "tuned"))
    write_setting(tmp_path / "tuned", ENTRY + "    bits: 16\n    epochs: 4\n")
    experiments = tmp_path / "experiments"
    experiments.mkdir()
    (experiments / "t.yaml").write_text("name: t\ndataset: synthetic\nmethods: [csq]\nbits: [16, 32]\n"
                                        "seeds: [0]\nprotocol: tuned\n")
    (experiments / "h.yaml").write_text("name: h\ndataset: synthetic\nmethods: [csq]\nbits: [64]\n"
                                        "seeds: [0]\nprotocol: harmonised\n")
    assert tuned_mismatches(experiments) == ["t csq 32 bits/4 epochs"]
    # An archived experiment (made under an earlier rule, kept for its records) is listed apart.
    (experiments / "old.yaml").write_text("name: old\ndataset: synthetic\nmethods: [csq]\nbits: [64]\n"
                                          "seeds: [0]\nprotocol: tuned\narchived: v2, kept for its records\n")
    assert tuned_mismatches(experiments) == ["t csq 32 bits/4 epochs"]
    assert tuned_mismatches(experiments, archived=True) == ["old csq 64 bits/4 epochs"]
