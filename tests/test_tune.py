"""`bench tune`: equal trials per method, validation only, resumable, and a written setting.

Every trial trains tiny_cnn on the synthetic card for one epoch (about a second)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from bench.cli import main
from bench.runs.records import read_record

REPO = Path(__file__).resolve().parent.parent
FAST = ["--dataset", "synthetic", "--epochs", "1", "--bits", "16", "--device", "cpu", "--quiet"]


@pytest.fixture(autouse=True)
def tuned_dir(tmp_path, monkeypatch):
    """Never write into the repository's bench/tuned/."""
    folder = tmp_path / "tuned"
    monkeypatch.setenv("BENCH_TUNED_DIR", str(folder))
    return folder


def tune(results: Path, trials: int, *extra: str) -> int:
    return main(["tune", "--methods", "csq", "--trials", str(trials), *FAST, "--results", str(results),
                 *extra])


def records(results: Path) -> dict[str, dict]:
    folder = results / "tuning" / "runs" / "synthetic" / "csq"
    return {p.name: read_record(p) for p in sorted(folder.glob("*.json.gz"))}


def study_id() -> str:
    from bench.tuning.tune import search_space, study_name

    return study_name("synthetic", "csq", 16, 1, search_space("csq"))


def study(results: Path):
    return named_study(results, study_id())


def named_study(results: Path, name: str):
    import optuna

    return optuna.load_study(study_name=name, storage=f"sqlite:///{results / 'tuning' / (name + '.db')}")


def searched(record: dict) -> tuple[float, float]:
    return (record["config"]["lr"], record["config"]["lambda_q"])


def test_tune_resumes_scores_validation_only_and_writes_the_setting(tmp_path, tuned_dir, one_thread):
    results = tmp_path / "results"
    assert tune(results, 2, "--commit") == 0
    first = records(results)
    assert len(first) == 2
    assert tune(results, 3, "--commit") == 0  # one more trial, the first two reused from the study
    after = records(results)
    assert len(after) == 3 and set(first) <= set(after)
    db = results / "tuning" / f"{study_id()}.db"
    assert study(results).user_attrs["budget_trials"] == 3  # what unwritten_studies reads
    import sqlite3

    with sqlite3.connect(db) as connection:  # as a study made before the budget was recorded
        connection.execute("DELETE FROM study_user_attributes")
    stored = db.read_bytes()
    assert tune(results, 3) == 0  # nothing left to do
    assert records(results).keys() == after.keys()
    assert db.read_bytes() == stored  # a replay writes nothing into the study

    from optuna.trial import TrialState

    trials = study(results).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    by_values = {searched(r): r for r in after.values()}
    for trial in trials:  # the objective is the record's validation mAP, never its test mAP
        record = by_values[(trial.params["lr"], trial.params["lambda_q"])]
        assert trial.value == record["selection"]["best_val_mAP"]
        assert record["spec"]["protocol"] == "harmonised" and record["spec"]["seed"] == 0
    assert any(r["selection"]["best_val_mAP"] != r["metrics"]["mAP"] for r in after.values())
    # Trial 0 is the harmonised default.
    assert (trials[0].params["lr"], trials[0].params["lambda_q"]) == (1e-3, 1e-4)

    best = None
    for record in after.values():  # a literal arg-max over the validation scores
        if best is None or record["selection"]["best_val_mAP"] > best["selection"]["best_val_mAP"]:
            best = record
    setting = yaml.safe_load((tuned_dir / "synthetic.yaml").read_text())
    entry = setting["methods"]["csq"]
    assert setting["dataset"] == "synthetic"
    assert (entry["values"]["lr"], entry["values"]["lambda_q"]) == searched(best)
    assert entry["best_run_id"] == best["run_id"]
    assert entry["trials"] == 3 and entry["bits"] == 16 and entry["epochs"] == 1
    assert entry["study"] == study_id() and study_id().startswith("synthetic-csq-16b-1e-")
    assert entry["search_space"]["lambda_q"] == ["log", 1e-5, 1.0]
    assert entry["knobs"] == 2 and entry["edge_hits"] is not None
    default = next(r for r in after.values() if searched(r) == (1e-3, 1e-4))
    assert entry["default_val_mAP"] == round(default["selection"]["best_val_mAP"], 6)

    # `run --protocol tuned` now trains with exactly those values and names the file.
    assert main(["run", "--methods", "csq", "--protocol", "tuned", "--bits", "16", "--dataset",
                 "synthetic", "--epochs", "1", "--device", "cpu", "--quiet", "--results", str(results)]) == 0
    from bench.report.groups import variant_of
    from bench.runs.records import load_records

    tables, _ = load_records(results)  # what the report reads: the tuned run, no trial
    assert [r["spec"]["protocol"] for r in tables] == ["tuned"]
    tuned = tables[0]
    assert searched(tuned) == searched(best)
    assert tuned["config"]["tuned_setting"]["file"] == str(tuned_dir / "synthetic.yaml")
    assert tuned["config"]["tuned_setting"]["values"] == entry["values"]
    # The tuned values are the run's baseline, not a variant; a change on top of them is one.
    assert variant_of(tuned) == ()
    changed = {**tuned, "config": {**tuned["config"], "lambda_q": 0.5}}
    assert [k for k, _ in variant_of(changed)] == ["lambda_q"]


def test_a_trial_left_running_is_finished_with_its_own_values(tmp_path, one_thread):
    """A tuner killed mid-trial leaves the trial RUNNING in the study: the next call trains
    those values (no new trial), and the study ends as an uninterrupted one would."""
    from optuna.trial import TrialState

    from bench.tuning.tune import search_space, suggest

    interrupted, straight = tmp_path / "interrupted", tmp_path / "straight"
    assert tune(interrupted, 2) == 0
    assert tune(straight, 3) == 0
    left = study(interrupted)
    import optuna

    left.sampler = optuna.samplers.TPESampler(seed=(0 * 1_000_003 + 2) % 2**31, n_startup_trials=5)
    stale = left.ask()
    values = suggest(stale, search_space("csq"))  # then the process "dies"
    assert tune(interrupted, 3) == 0
    trials = study(interrupted).trials
    assert len(trials) == 3 and [t.state for t in trials] == [TrialState.COMPLETE] * 3
    assert trials[2].params == values
    assert [t.params for t in trials] == [t.params for t in study(straight).trials]


def test_tune_killed_by_a_signal_resumes(tmp_path, tuned_dir):
    results = tmp_path / "results"
    command = [sys.executable, "-m", "bench", "tune", "--methods", "csq", "--trials", "3", *FAST,
               "--results", str(results)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    folder = results / "tuning" / "runs" / "synthetic" / "csq"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None and not list(folder.glob("*.json.gz")):
        time.sleep(0.2)
    assert process.poll() is None, process.stderr.read().decode()
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (tuned_dir / "synthetic.yaml").exists()
    assert tune(results, 3, "--commit") == 0

    from optuna.trial import TrialState

    complete = [t for t in study(results).trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 3
    assert {(t.params["lr"], t.params["lambda_q"]) for t in complete} == {searched(r) for r in
                                                                           records(results).values()}
    assert yaml.safe_load((tuned_dir / "synthetic.yaml").read_text())["methods"]["csq"]["trials"] == 3


def test_without_a_named_file_the_committed_setting_is_left_alone(tmp_path, tuned_dir, one_thread, capsys):
    committed = tuned_dir / "synthetic.yaml"
    tuned_dir.mkdir()
    committed.write_text("dataset: synthetic\nmethods:\n  csq:\n    values: {lr: 0.002}\n")
    before = committed.read_bytes()
    results = tmp_path / "results"
    assert tune(results, 1) == 0
    assert committed.read_bytes() == before  # a study never rewrites the committed file unasked
    beside = results / "tuning" / "synthetic.yaml"
    assert yaml.safe_load(beside.read_text())["methods"]["csq"]["trials"] == 1
    out = capsys.readouterr().out
    assert f"tuned setting written: {beside}" in out and "--commit" in out
    # the count printed is the one run, and a count below R5's is said, not silently replaced
    assert "1 trials each" in out and "warning: --trials 1 is below R5's 12" in out
    assert main(["tune", "--methods", "csq", "--trials", "1", *FAST, "--results", str(results),
                 "--commit", "--output", str(tmp_path / "x.yaml")]) == 2  # one or the other


def test_output_flag_and_merge_keep_other_methods(tmp_path, one_thread):
    results, output = tmp_path / "results", tmp_path / "elsewhere.yaml"
    output.write_text("dataset: synthetic\nmethods:\n  crh:\n    values: {lr: 0.002}\n")
    assert tune(results, 1, "--output", str(output)) == 0
    setting = yaml.safe_load(output.read_text())
    assert setting["methods"]["crh"] == {"values": {"lr": 0.002}}
    assert setting["methods"]["csq"]["trials"] == 1
    assert setting["methods"]["csq"]["values"] == {"lr": 1e-3, "lambda_q": 1e-4}  # the default trial


@pytest.mark.parametrize(("flags", "expected"), [
    (["--methods", "csq", "--trials", "0"], "--trials '0' is not valid; give a positive integer"),
    (["--methods", "csq", "--trials", "-2"], "--trials '-2' is not valid"),
    (["--methods", "csq", "--trials", "many"], "--trials 'many' is not valid"),
    (["--methods", "csq,nope", "--trials", "2"], "unknown method 'nope'; valid methods:"),
    (["--methods", "csq", "--trials", "2", "--dataset", "mnist"], "unknown dataset 'mnist'"),
    (["--methods", "csq", "--trials", "2", "--bits", "16,32"], "tuning uses one code length"),
    (["--methods", "csq", "--trials", "2", "--seed", "-1"], "--seed '-1' is not valid"),
    (["--methods", "csq", "--trials", "2", "--epochs", "0"], "--epochs '0' is not valid"),
    (["--methods", "csq,csq", "--trials", "2"], "give distinct names"),
])
def test_bad_tune_input_is_one_line_and_exit_2(capsys, tmp_path, flags, expected):
    results = tmp_path / "results"
    code = main(["tune", *flags, "--results", str(results), "--output", str(tmp_path / "t.yaml")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and expected in err[0], err
    assert not results.exists() and not (tmp_path / "t.yaml").exists()


def test_jobs_search_methods_side_by_side_and_choose_the_same(tmp_path, tuned_dir, one_thread):
    """--jobs runs studies side by side, each proposing one trial at a time: the trials each
    method tries, and what it chooses, are those of a --jobs 1 search."""
    def search(folder: Path, jobs: str) -> dict:
        setting = folder / "t.yaml"
        assert main(["tune", "--methods", "csq,dpn", "--trials", "3", *FAST, "--results", str(folder),
                     "--output", str(setting), "--jobs", jobs]) == 0
        methods = yaml.safe_load(setting.read_text())["methods"]
        return {name: (entry["values"], entry["best_run_id"]) for name, entry in methods.items()}

    one, two = search(tmp_path / "one", "1"), search(tmp_path / "two", "2")
    assert one == two and set(one) == {"csq", "dpn"}
    names = lambda folder: sorted(p.name for p in (folder / "tuning" / "runs").rglob("*.json.gz"))  # noqa: E731
    assert names(tmp_path / "one") == names(tmp_path / "two")


def test_a_study_never_proposes_a_batch(tmp_path, tuned_dir, monkeypatch):
    """With --jobs 2 and one method, the study still runs one trial at a time (a batch would be
    proposed before its first member's score is known, so the choice would depend on --jobs)."""
    import bench.tuning.tune

    seen = []

    def fake_tune(method, request, options, log=print):
        seen.append(request.jobs)
        raise bench.tuning.tune.TuningAborted("stop here")

    monkeypatch.setattr(bench.tuning.tune, "tune_method", fake_tune)
    assert main(["tune", "--methods", "csq", "--trials", "9", *FAST, "--results", str(tmp_path),
                 "--output", str(tmp_path / "t.yaml"), "--jobs", "2"]) == 1
    assert seen == [1]


def test_a_widened_range_keeps_the_search_and_adds_the_extra_trials(tmp_path, monkeypatch, one_thread):
    """After an edge hit the range is widened: the new study (another name, its ranges in its
    digest) starts from the narrower study's finished trials, default first, and trains only
    the extra ones; a space that does not contain the old one starts afresh."""
    from bench.tuning.tune import search_space, study_name
    from methods import get_method

    results = tmp_path / "results"
    assert tune(results, 3) == 0
    narrow = study(results)
    before = records(results)
    csq = get_method("csq")
    wider = {**search_space("csq"), "lambda_q": ("log", 1e-6, 3.0)}
    monkeypatch.setattr(csq, "search_space", wider)
    assert tune(results, 4, "--output", str(tmp_path / "wide.yaml")) == 0
    wide_id = study_name("synthetic", "csq", 16, 1, wider)
    assert wide_id != narrow.study_name
    wide = named_study(results, wide_id)
    assert len(wide.trials) == 4
    for old, new in zip(narrow.trials, wide.trials[:3], strict=True):
        assert (new.params, new.value) == (old.params, old.value)
        assert new.distributions["lambda_q"].low == 1e-6 and new.distributions["lambda_q"].high == 3.0
        assert new.user_attrs["inherited_from"] == f"{narrow.study_name}#{old.number}"
    assert wide.trials[0].user_attrs.get("default") is True
    after = records(results)
    assert len(after) == 4 and set(before) <= set(after)  # one new trial trained, three reused
    entry = yaml.safe_load((tmp_path / "wide.yaml").read_text())["methods"]["csq"]
    assert entry["widened_from"] == narrow.study_name and entry["trials"] == 4

    narrower = {**search_space("csq"), "lambda_q": ("log", 1e-4, 1e-2)}  # not a widening
    monkeypatch.setattr(csq, "search_space", narrower)
    assert tune(results, 1, "--output", str(tmp_path / "narrow.yaml")) == 0
    fresh_id = study_name("synthetic", "csq", 16, 1, narrower)
    fresh = named_study(results, fresh_id)
    assert len(fresh.trials) == 1 and "inherited_from" not in fresh.trials[0].user_attrs
    assert "widened_from" not in yaml.safe_load((tmp_path / "narrow.yaml").read_text())["methods"]["csq"]


def test_each_methods_entry_is_written_when_its_search_ends(tmp_path, tuned_dir, one_thread, monkeypatch):
    """A command for two methods cut off during the second (here by an interrupt) has written the
    first one's entry already; rerun, it replays the first without changing its entry."""
    import bench.commands.tune as tune_command

    real = tune_command.search_one

    def cut_off_at_dpn(method, *args, **kwargs):
        if method == "dpn":
            raise KeyboardInterrupt
        return real(method, *args, **kwargs)

    monkeypatch.setattr(tune_command, "search_one", cut_off_at_dpn)
    results = tmp_path / "results"
    assert main(["tune", "--methods", "csq,dpn", "--trials", "2", *FAST, "--results", str(results),
                 "--commit"]) == 130
    written = (tuned_dir / "synthetic.yaml").read_text()
    assert "csq:" in written and "dpn:" not in written
    monkeypatch.setattr(tune_command, "search_one", real)
    assert tune(results, 2, "--commit") == 0
    assert (tuned_dir / "synthetic.yaml").read_text() == written


def test_a_study_held_by_another_process_is_left_to_it_and_the_rest_goes_on(tmp_path, tuned_dir, one_thread,
                                                                           capsys):
    """Two processes sharing a round's methods (or one round's check needing a study another
    round searches) must not stop each other: the study's holder keeps it, the other command
    skips that method, searches the rest and says so."""
    import fcntl

    results = tmp_path / "results"
    lock = results / "tuning" / f"{study_id()}.lock"
    lock.parent.mkdir(parents=True)
    with open(lock, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert main(["tune", "--methods", "csq,dpn", "--trials", "1", *FAST, "--results", str(results),
                     "--commit"]) == 0
    out = capsys.readouterr().out
    assert "csq: skipped here" in out and "skipped csq:" in out
    written = yaml.safe_load((tuned_dir / "synthetic.yaml").read_text())["methods"]
    assert "dpn" in written and "csq" not in written
    assert not (results / "tuning" / f"{study_id()}.db").exists()
    assert main(["tune", "--methods", "csq", "--trials", "1", *FAST, "--results", str(results),
                 "--commit"]) == 0  # the lock released: the method searches as usual
    assert "csq" in yaml.safe_load((tuned_dir / "synthetic.yaml").read_text())["methods"]


def test_failed_checks_are_written_before_the_own_searches_so_another_process_can_share_them(
        tmp_path, tuned_dir, one_thread, capsys, monkeypatch):
    """A method whose check fails at two lengths owes two own searches, one after the other in
    its command. Its entry, with the failed checks, is on file before the first starts, so a second
    process can take the other length (`--bits L` carries the check from the file); the first
    then finds that study held and leaves it."""
    import bench.tuning.transfer as transfer
    import bench.tuning.tune as tune_module

    monkeypatch.setattr(transfer, "judge", lambda scores: {  # every check fails
        "means": [0.0] * len(scores), "best": 0, "gap": 1.0, "spread": 0.0, "within_spread": False})
    real = tune_module.tune_method
    seen_on_file: list[dict] = []

    def held_elsewhere(method, request, options, log=print):
        if request.bits == 16:
            return real(method, request, options, log=log)
        seen_on_file.append(yaml.safe_load((tuned_dir / "synthetic.yaml").read_text())["methods"]["csq"])
        raise tune_module.StudyBusy("another `bench tune` is running study X (its lock X.lock is held)")

    monkeypatch.setattr(tune_module, "tune_method", held_elsewhere)
    results = tmp_path / "results"
    assert tune(results, 2, "--transfer-to", "32,64", "--commit") == 0
    out = capsys.readouterr().out
    assert "csq: its 32-bit search skipped here" in out and "csq: its 64-bit search skipped here" in out
    assert len(seen_on_file) == 2
    assert {b: v["within_spread"] for b, v in seen_on_file[0]["transfer"].items()} == {32: False, 64: False}
    monkeypatch.setattr(tune_module, "tune_method", real)
    at_64 = [flag if flag != "16" else "64" for flag in FAST]
    assert main(["tune", "--methods", "csq", "--trials", "2", *at_64, "--results", str(results),
                 "--commit"]) == 0
    assert "csq: the check from" in capsys.readouterr().out  # the second process carried it
    written = yaml.safe_load((tuned_dir / "synthetic.yaml").read_text())["methods"]["csq"]
    assert sorted(e["bits"] for e in written) == [16, 64]
