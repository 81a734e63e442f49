"""Transfer checks (`bench tune --transfer-to`): a setting searched at one code length is used
at another only when the study's top configurations, rerun there, keep it within the seeds'
spread of the best (rule R4 of the fidelity spec)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from bench.cli import main
from bench.tuning.transfer import judge

FAST = ["--dataset", "synthetic", "--epochs", "1", "--device", "cpu", "--quiet"]


def test_judge_on_hand_worked_scores() -> None:
    """Means 0.81 / 0.82 / 0.71; each pair differs by 0.02, so every sample variance is
    0.0002 and the pooled spread sqrt(0.0002) = 0.01414: a gap of 0.01 holds."""
    verdict = judge([[0.80, 0.82], [0.81, 0.83], [0.70, 0.72]])
    assert verdict["best"] == 1
    assert verdict["gap"] == pytest.approx(0.01)
    assert verdict["spread"] == pytest.approx(math.sqrt(0.0002))
    assert verdict["within_spread"] is True


def test_judge_fails_a_gap_beyond_the_spread() -> None:
    """Chosen mean 0.80 against 0.83 with seeds 0.005 apart: 0.03 > 0.0035 fails."""
    verdict = judge([[0.7975, 0.8025], [0.8275, 0.8325], [0.70, 0.705]])
    assert verdict["best"] == 1 and verdict["gap"] == pytest.approx(0.03)
    assert verdict["spread"] == pytest.approx(math.sqrt(0.0025**2 * 2))
    assert verdict["within_spread"] is False


def test_judge_keeps_the_chosen_one_on_an_exact_tie() -> None:
    verdict = judge([[0.8, 0.9], [0.8, 0.9]])
    assert verdict["best"] == 0 and verdict["gap"] == 0.0 and verdict["within_spread"]


def test_judge_needs_two_seeds() -> None:
    from bench.errors import UserError

    with pytest.raises(UserError, match="at least 2 seeds"):
        judge([[0.8], [0.7]])


def test_transfer_check_runs_top_configurations_and_gates_tuned_runs(tmp_path: Path, monkeypatch,
                                                                     one_thread) -> None:
    """End to end on the synthetic card: 3 trials at 16 bits, checked at 8 bits on 2 seeds;
    the entry records every configuration's seed scores; `--protocol tuned` at 8 bits follows
    the verdict (and refuses, exit 2, once the verdict says it does not hold). The check is made
    to hold here (its gap and spread stay the real ones), so no search at 8 bits follows it."""
    import bench.tuning.transfer as transfer

    monkeypatch.setattr(transfer, "judge", lambda scores: {**judge(scores), "within_spread": True})
    tuned = tmp_path / "tuned"
    monkeypatch.setenv("BENCH_TUNED_DIR", str(tuned))
    results = tmp_path / "results"
    setting = tuned / "synthetic.yaml"
    assert main(["tune", "--methods", "csq", "--trials", "3", "--bits", "16", *FAST,
                 "--results", str(results), "--output", str(setting),
                 "--transfer-to", "8", "--transfer-seeds", "2"]) == 0
    entry = yaml.safe_load(setting.read_text())["methods"]["csq"]
    check = entry["transfer"][8]
    configurations = check["configurations"]
    assert len(configurations) == 3 and check["seeds"] == [0, 1]
    assert configurations[0]["values"] == entry["values"]  # the chosen one is first
    searched = [c["searched_val_mAP"] for c in configurations]
    assert searched == sorted(searched, reverse=True)
    assert all(len(c["val_mAP"]) == 2 and len(c["run_ids"]) == 2 for c in configurations)
    expected = judge([c["val_mAP"] for c in configurations])  # recomputed from the stored scores
    assert check["within_spread"] is True and check["spread"] == pytest.approx(expected["spread"], abs=1e-6)
    assert check["gap"] == pytest.approx(expected["gap"], abs=1e-6)
    trial_records = list((results / "tuning" / "runs" / "synthetic" / "csq").glob("*.json.gz"))
    assert len(trial_records) == 3 + 3 * 2

    # The verdict decides: force it both ways and watch `--protocol tuned` follow it at 8 bits.
    run = ["run", "--methods", "csq", "--bits", "8", "--protocol", "tuned", *FAST,
           "--results", str(tmp_path / "runs")]
    data = yaml.safe_load(setting.read_text())
    data["methods"]["csq"]["transfer"][8]["within_spread"] = True
    setting.write_text(yaml.safe_dump(data))
    assert main([*run, "--dry-run"]) == 0
    data["methods"]["csq"]["transfer"][8]["within_spread"] = False
    setting.write_text(yaml.safe_dump(data))
    assert main(run) == 2

    # Rerunning the same command reads every record (nothing retrains) and keeps the check.
    before = sorted(p.name for p in trial_records)
    assert main(["tune", "--methods", "csq", "--trials", "3", "--bits", "16", *FAST,
                 "--results", str(results), "--output", str(setting)]) == 0
    after = sorted(p.name for p in (results / "tuning" / "runs" / "synthetic" / "csq").glob("*.json.gz"))
    assert after == before
    assert 8 in yaml.safe_load(setting.read_text())["methods"]["csq"]["transfer"]


@pytest.mark.parametrize("flags, expected", [
    (["--bits", "16", "--transfer-to", "16"], "--transfer-to 16: 16 is the searched length"),
    (["--bits", "16", "--transfer-to", "8,x"], "--transfer-to 'x' is not valid"),
    (["--bits", "16", "--transfer-to", "8", "--transfer-seeds", "1"], "--transfer-seeds '1'"),
])
def test_bad_transfer_input_is_one_line_and_exit_2(tmp_path: Path, capsys, flags, expected) -> None:
    code = main(["tune", "--methods", "csq", "--trials", "1", *FAST, *flags,
                 "--results", str(tmp_path), "--output", str(tmp_path / "t.yaml")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and expected in err[0], err
    assert not (tmp_path / "t.yaml").exists()


def test_a_budget_mismatch_refuses_only_runs_still_to_train(tmp_path: Path, capsys, one_thread,
                                                            tuned_csq: Path) -> None:
    """Reading a stored record applies no setting: once a run exists, a later search at another
    budget does not block regenerating the table from it, but any run still to train is refused."""
    setting = tuned_csq
    run = ["run", "--methods", "csq", "--bits", "16", "--protocol", "tuned", *FAST,
           "--results", str(tmp_path / "results")]
    assert main(run) == 0  # at its budget: trained
    setting.write_text(setting.read_text().replace("epochs: 1", "epochs: 2"))
    capsys.readouterr()
    assert main(run) == 0  # the record exists: nothing is trained, a note says why
    assert "every record exists (1)" in capsys.readouterr().out
    assert main([*run, "--seeds", "1"]) == 2  # a new seed would train with mismatched values
    assert "searched at 16 bits/2 epochs" in capsys.readouterr().err
    assert main([*run, "--force"]) == 2  # retraining is training


def test_a_replay_rewrites_nothing(tmp_path: Path, monkeypatch, one_thread) -> None:
    """`make reproduce` replays the committed search: the tuned file must stay byte-identical
    (no new date, no new commit), or a reproduction would dirty the clone."""
    monkeypatch.setenv("BENCH_TUNED_DIR", str(tmp_path / "tuned"))
    setting = tmp_path / "setting.yaml"
    command = ["tune", "--methods", "csq", "--trials", "2", "--bits", "16", *FAST,
               "--results", str(tmp_path / "results"), "--output", str(setting)]
    assert main(command) == 0
    text = setting.read_text()
    date = yaml.safe_load(text)["methods"]["csq"]["date"]
    setting.write_text(text.replace(date, "2000-01-01T00:00:00Z"))  # as if searched long ago
    before = setting.read_bytes()
    assert main(command) == 0
    assert setting.read_bytes() == before
    assert main([*command[:4], "3", *command[5:]]) == 0  # one more trial: a new outcome is written
    assert yaml.safe_load(setting.read_text())["methods"]["csq"]["trials"] == 3


def test_a_failed_check_searches_at_that_length_too(tmp_path: Path, monkeypatch, one_thread) -> None:
    """Rule R4's "otherwise search at that length too": a check forced to fail at 8 bits makes
    the command run the same search there (same trials and budget) and write an entry of its
    own, which `--protocol tuned` then uses at 8 bits; a check that holds adds no search."""
    import bench.tuning.transfer as transfer

    monkeypatch.setenv("BENCH_TUNED_DIR", str(tmp_path / "tuned"))
    setting = tmp_path / "tuned" / "synthetic.yaml"
    results = tmp_path / "results"
    command = ["tune", "--methods", "csq", "--trials", "2", "--bits", "16", *FAST, "--results", str(results),
               "--output", str(setting), "--transfer-to", "8"]
    monkeypatch.setattr(transfer, "judge", lambda scores: {**judge(scores), "within_spread": True})
    assert main(command) == 0
    assert isinstance(yaml.safe_load(setting.read_text())["methods"]["csq"], dict)  # one entry: no search
    monkeypatch.setattr(transfer, "judge", lambda scores: {**judge(scores), "within_spread": False})
    assert main(command) == 0
    entries = yaml.safe_load(setting.read_text())["methods"]["csq"]
    assert [(e["bits"], e["epochs"], e["trials"]) for e in entries] == [(8, 1, 2), (16, 1, 2)]
    assert entries[1]["transfer"][8]["within_spread"] is False and "transfer" not in entries[0]
    assert entries[0]["study"].startswith("synthetic-csq-8b-1e-")
    run = ["run", "--methods", "csq", "--bits", "8", "--protocol", "tuned", *FAST,
           "--results", str(tmp_path / "runs"), "--dry-run"]
    assert main(run) == 0


def test_a_search_after_a_failed_check_carries_the_checked_configurations(tmp_path: Path, monkeypatch,
                                                                         one_thread) -> None:
    """The search at a length where the check failed must be able to reach what it replaces: its
    ranges hold the checked round's (lr widened to 0.03 at 16 bits here, while 8 bits has no
    round), and the check's top configurations are trials of it, scored from the check's seed-0
    records (nothing retrained), beside its own equal budget of searched trials."""
    import optuna

    import bench.tuning.transfer as transfer

    monkeypatch.setenv("BENCH_TUNED_DIR", str(tmp_path / "tuned"))
    setting = tmp_path / "tuned" / "synthetic.yaml"
    setting.parent.mkdir(parents=True)
    setting.write_text(yaml.safe_dump({"dataset": "synthetic", "methods": {}, "widened": {
        "16b-1e": {"ranges": {"lr": ["log", 1e-4, 0.03]}, "trials": 3, "after": "a test"}}}))
    results = tmp_path / "results"
    command = ["tune", "--methods", "csq", "--trials", "3", "--bits", "16", *FAST, "--results", str(results),
               "--output", str(setting), "--transfer-to", "8"]
    monkeypatch.setattr(transfer, "judge", lambda scores: {**judge(scores), "within_spread": False})
    assert main(command) == 0
    own, searched = yaml.safe_load(setting.read_text())["methods"]["csq"]
    assert (own["bits"], searched["bits"]) == (8, 16)
    assert own["search_space"]["lr"] == ["log", 1e-4, 0.03]  # the 16-bit round's range
    assert own["round_space"]["lr"] == ["log", 1e-4, 0.01]  # 8 bits' own (shared): its edges count
    assert own["carried"]["from"] == searched["study"] and own["trials"] == 3
    checked = searched["transfer"][8]["configurations"]
    storage = f"sqlite:///{results / 'tuning' / own['study']}.db"
    study = optuna.load_study(study_name=own["study"], storage=storage)
    carried = [t for t in study.trials if "carried_from" in t.user_attrs]
    assert [t.params for t in carried] == [c["values"] for c in checked]
    assert [t.user_attrs["run_id"] for t in carried] == [c["run_ids"][0] for c in checked]
    assert [t.value for t in carried] == pytest.approx([c["val_mAP"][0] for c in checked], abs=1e-6)
    assert own["carried"]["trials"] == [t.number for t in carried]
    assert len([t for t in study.trials if "carried_from" not in t.user_attrs]) == 3
    assert study.trials[0].user_attrs.get("default") is True  # trial 0 stays the default
    assert own["best_val_mAP"] == pytest.approx(max(t.value for t in study.trials), abs=1e-6)
    before = setting.read_bytes()
    records = sorted((results / "tuning" / "runs").rglob("*.json.gz"))
    assert main(command) == 0  # a replay adds no trial, trains nothing, rewrites nothing
    assert setting.read_bytes() == before
    assert sorted((results / "tuning" / "runs").rglob("*.json.gz")) == records
    assert len(optuna.load_study(study_name=own["study"], storage=storage).trials) == len(study.trials)
    # A later command searching at 8 bits directly (more trials, say) is that check's search too.
    assert main([*command[:4], "4", "--bits", "8", *command[7:-2]]) == 0
    own = yaml.safe_load(setting.read_text())["methods"]["csq"][0]
    assert own["bits"] == 8 and own["trials"] == 4 and own["carried"]["from"] == searched["study"]
    again = optuna.load_study(study_name=own["study"], storage=storage)
    assert len([t for t in again.trials if "carried_from" in t.user_attrs]) == 3  # not carried twice


def test_fidelity_lists_an_own_search_that_cannot_reach_the_checked_values(tmp_path: Path) -> None:
    """A failed check from 32 to 16 bits asks a 16-bit search that holds the 32-bit ranges and
    carries the checked configurations; missing either, or the search itself, is a gap."""
    from bench.tuning.fidelity import own_search_gaps

    checked = ("  - {bits: 32, epochs: 30, trials: 8, study: s32, values: {lr: 0.02},\n"
               "     search_space: {lr: [log, 0.0001, 0.03]},\n"
               "     transfer: {16: {within_spread: false, configurations: [{values: {lr: 0.02}}]}}}\n")

    def gaps(own: str) -> list[str]:
        (tmp_path / "synthetic.yaml").write_text("dataset: synthetic\nmethods:\n  csq:\n" + checked + own)
        return own_search_gaps(tmp_path)

    ranges = "search_space: {lr: [log, 0.0001, 0.03]}"
    assert gaps(f"  - {{bits: 16, epochs: 30, trials: 8, values: {{lr: 0.01}}, {ranges},\n"
                "     carried: {from: s32, trials: [8]}}\n") == []
    assert gaps("  - {bits: 16, epochs: 30, trials: 8, values: {lr: 0.001},\n"
                "     search_space: {lr: [log, 0.0001, 0.003]}}\n") == [
        "synthetic csq 16b-30e: searched after the failed check from 32 bits on ranges that exclude "
        "its lr and without its top configurations carried"]
    assert gaps(f"  - {{bits: 16, epochs: 60, trials: 8, values: {{lr: 0.01}}, {ranges}}}\n") == [
        "synthetic csq 16b-30e: the check from 32 bits failed and there is no search at 16 bits"]
