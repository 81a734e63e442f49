"""Searches run past the tuned files (bench.tuning.unwritten): a study is written when an entry
at its budget names it and counts every finished trial, or names it as the study it widened or
carried from; any other study is unwritten when it finished a trial after every entry at its
budget was written, and of several at one budget only the newest is listed."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from bench.tuning.unwritten import parse_study, study_trials, unwritten_studies

CARDS = ["fashion-mnist", "fashion-mnist-multi"]
METHODS = ["crh", "classify-then-hash", "hash"]


@pytest.mark.parametrize("name, parsed", [
    ("fashion-mnist-multi-classify-then-hash-16b-30e-b9c545",
     ("fashion-mnist-multi", "classify-then-hash", 16, 30)),
    ("fashion-mnist-crh-32b-60e-601672", ("fashion-mnist", "crh", 32, 60)),
    ("fashion-mnist-crh-32b", None),  # a v1 study: no epoch budget in its name
    ("fashion-mnist-crh-32b-60e-6016", None),
])
def test_study_names_parse_with_hyphens_in_card_and_method(name: str, parsed) -> None:
    assert parse_study(name, CARDS, METHODS) == parsed


def study(tuning: Path, name: str, trials: int, finished: str | None = None,
          budget: int | None = None) -> None:
    """A study of `trials` finished trials, the finish times set to `finished` when given, and
    the budget `bench tune` records when given."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    created = optuna.create_study(study_name=name, storage=f"sqlite:///{tuning / name}.db",
                                  direction="maximize")
    if budget is not None:
        created.set_user_attr("budget_trials", budget)
    for value in range(trials):
        created.add_trial(optuna.trial.create_trial(
            params={"lr": 0.001}, distributions={"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2)},
            value=float(value)))
    if finished is not None:
        with sqlite3.connect(tuning / f"{name}.db") as connection:
            connection.execute("UPDATE trials SET datetime_complete = ?", (finished,))


def entry(study_name: str, trials: int, date: str, bits: int = 16, **more: object) -> str:
    extra = "".join(f"    {key}: {value}\n" for key, value in more.items())
    return (f"  - values: {{lr: 0.001}}\n    bits: {bits}\n    epochs: 1\n    trials: {trials}\n"
            f"    study: {study_name}\n    date: '{date}'\n{extra}")


def test_written_extended_replaced_and_new_studies(tmp_path: Path) -> None:
    tuning, tuned = tmp_path / "tuning", tmp_path / "tuned"
    tuning.mkdir()
    tuned.mkdir()
    study(tuning, "synthetic-csq-16b-1e-aaaaaa", 5, "2026-12-01 10:00:01")  # written: named, all 5 counted
    study(tuning, "synthetic-csq-32b-1e-aaaaaa", 6, "2026-12-01 10:00:00", budget=9)  # past its entry
    study(tuning, "synthetic-csq-64b-1e-aaaaaa", 4, "2026-11-30 09:00:00")  # replaced before the entry
    study(tuning, "synthetic-csq-64b-1e-bbbbbb", 4, "2026-12-01 09:00:00")  # the entry's, written
    study(tuning, "synthetic-dpn-16b-1e-cccccc", 3, "2026-12-02 09:00:00")  # no entry at all
    study(tuning, "synthetic-dpn-16b-1e-dddddd", 2, "2026-12-02 08:00:00")  # ... and an older one
    study(tuning, "synthetic-dpn-32b-1e-eeeeee", 3, "2026-12-01 07:00:00")  # a carried source
    (tuned / "synthetic.yaml").write_text(
        "dataset: synthetic\nmethods:\n  csq:\n"
        + entry("synthetic-csq-16b-1e-aaaaaa", 5, "2026-12-01T10:00:00Z")
        + entry("synthetic-csq-32b-1e-aaaaaa", 5, "2026-12-01T09:59:00Z", bits=32)
        + entry("synthetic-csq-64b-1e-bbbbbb", 4, "2026-12-01T09:00:10Z", bits=64)
        + "  dpn:\n" + entry("synthetic-dpn-64b-1e-ffffff", 3, "2026-11-01T00:00:00Z", bits=64,
                              carried="{from: synthetic-dpn-32b-1e-eeeeee, trials: [3]}"))
    found = [u.cells() for u in unwritten_studies(tuning, tuned)]
    assert found == [
        ("synthetic", "csq", "32 bits, 1 epochs", "`synthetic-csq-32b-1e-aaaaaa`", "6 of 9",
         "2026-12-01 10:00"),
        ("synthetic", "dpn", "16 bits, 1 epochs", "`synthetic-dpn-16b-1e-cccccc`", "3", "2026-12-02 09:00"),
    ]


def test_fidelity_lists_the_searches_past_the_file_under_their_rounds(tmp_path, monkeypatch, capsys) -> None:
    """CSQ's 32-bit lr at the top asks for a widened 32-bit round; a search at that budget has
    run past the file, so fidelity says so under the command and lists the search."""
    import bench.tuning.unwritten as unwritten
    from bench.tuning.fidelity import main as fidelity

    tuned = tmp_path / "tuned"
    tuned.mkdir()
    (tuned / "synthetic.yaml").write_text(
        "dataset: synthetic\nmethods:\n  csq: {values: {lr: 0.0099}, bits: 32, epochs: 1, trials: 8, "
        "search_space: {lr: [log, 0.0001, 0.01]}}\n")
    monkeypatch.setenv("BENCH_TUNED_DIR", str(tuned))
    running = unwritten.Unwritten("synthetic", "dpn", 32, 1, "synthetic-dpn-32b-1e-abcdef", 5,
                                  "2026-12-06 09:00", 12)
    monkeypatch.setattr(unwritten, "unwritten_studies", lambda *args, **kwargs: [running])
    fidelity()
    out = capsys.readouterr().out.splitlines()
    command = next(i for i, line in enumerate(out) if "--dataset synthetic --bits 32 --epochs 1" in line)
    assert "searches at 32 bits/1 epochs on synthetic have run past the tuned file" in out[command + 1]
    listed = "  synthetic dpn 32 bits/1 epochs: synthetic-dpn-32b-1e-abcdef, 5 finished trials"
    assert listed in "\n".join(out)
    assert any(line.startswith("1 searches run but not yet in a tuned file") for line in out)


def leave_hot_journal(database: Path) -> None:
    """Kill a writer in the middle of a transaction that has already spilled pages into the
    database file: what a search stopped by SIGKILL while Optuna writes leaves behind."""
    writer = (
        "import os, sqlite3, sys\n"
        "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "c.execute('PRAGMA cache_size = 1')\n"
        "c.execute('BEGIN IMMEDIATE')\n"
        "c.execute('CREATE TABLE filler (x BLOB)')\n"
        "c.executemany('INSERT INTO filler VALUES (?)', [(os.urandom(2000),) for _ in range(300)])\n"
        "c.execute(\"UPDATE trials SET state = 'FAIL'\")\n"
        "os._exit(0)\n")
    subprocess.run([sys.executable, "-c", writer, str(database)], check=True)


def test_a_study_left_with_a_hot_journal_reads_as_committed_and_stays_untouched(tmp_path: Path) -> None:
    tuning = tmp_path / "tuning"
    tuning.mkdir()
    study(tuning, "synthetic-csq-16b-1e-aaaaaa", 4, "2026-12-01 10:00:01", budget=6)
    database = tuning / "synthetic-csq-16b-1e-aaaaaa.db"
    leave_hot_journal(database)
    journal = database.with_name(database.name + "-journal")
    assert journal.exists() and journal.stat().st_size > 0
    before = (database.read_bytes(), journal.read_bytes())
    # The interrupted transaction (every trial marked failed) is rolled back in the reading.
    assert study_trials(database) == (4, "2026-12-01 10:00:01", 6)
    assert (database.read_bytes(), journal.read_bytes()) == before  # a reader writes nothing
