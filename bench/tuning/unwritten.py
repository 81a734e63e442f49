"""Searches that have run but are not yet written into a tuned file.

`bench tune` writes a method's entries when its searches and transfer checks end, and a
method's part of a widened round on these CPUs can take several sittings, so for days the
committed studies (results/tuning/*.db) hold trials that no tuned file mentions (and commands
that ran before entries were written per method left whole rounds so). Without this list, a
reader of the tuned file sees the previous round, and `python -m bench.tuning.fidelity`
suggests a next round for edge hits that the round under way already widens.

A study is written when an entry at its budget names it as its study and counts all its
finished trials (searched and carried), or when an entry names it as the study it widened or
the one its carried configurations came from. Any other study counts as unwritten when its
last finished trial is newer than every entry of that method at its bit length and epoch
budget in the card's tuned file (an entry is dated when it is written, after its trials; to
the second): an older one is a study a later round replaced.

Dates compare Optuna's finish time of a trial (the machine's local time, UTC on every machine
this project ran on) with an entry's `date` (UTC)."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import sqlite3
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.runs.spec import entry_budget, load_tuned, tuned_dir
from bench.tuning.tune import BUDGET_ATTR

BUDGET_SUFFIX = re.compile(r"^(?P<bits>\d+)b-(?P<epochs>\d+)e-[0-9a-f]{6}$")


@dataclass(frozen=True)
class Unwritten:
    card: str
    method: str
    bits: int
    epochs: int
    study: str
    complete: int  # finished trials
    last: str  # the last one's finish time, to the minute
    budget: int | None = None  # the searched trials its round gives, when the study records it

    def cells(self) -> tuple[str, ...]:
        done = f"{self.complete} of {self.budget}" if self.budget else str(self.complete)
        return (self.card, self.method, f"{self.bits} bits, {self.epochs} epochs", f"`{self.study}`",
                done, self.last)


def parse_study(name: str, cards: list[str], methods: list[str]) -> tuple[str, str, int, int] | None:
    """(card, method, bits, epochs) of a study named by `bench.tuning.tune.study_name`; None for
    a name of another form (the v1 studies have no epoch budget). Card and method names hold
    hyphens, so the longest card that leaves a known method before the budget wins."""
    for card in sorted(cards, key=len, reverse=True):
        for method in sorted(methods, key=len, reverse=True):
            prefix = f"{card}-{method}-"
            if name.startswith(prefix) and (match := BUDGET_SUFFIX.match(name[len(prefix):])):
                return card, method, int(match["bits"]), int(match["epochs"])
    return None


def study_trials(path: Path) -> tuple[int, str, int | None]:
    """(finished trials, the last finish time, the budget `bench tune` recorded, if any) of one
    Optuna SQLite study, read-only: the file may be one a running search writes.

    A search killed while Optuna writes leaves a hot journal beside the study, which SQLite
    rolls back on the next write access only; a read-only connection then refuses to read. The
    study is then read from a scratch copy of both files, where the rollback happens, so that
    reading never changes the study that the next `bench tune` resumes (and rolls back itself)."""
    try:
        return _read_study(f"{path.resolve().as_uri()}?mode=ro")
    except sqlite3.OperationalError:
        journal = path.with_name(f"{path.name}-journal")
        if not journal.exists():
            raise
        with tempfile.TemporaryDirectory() as scratch:
            copy = Path(scratch) / path.name
            shutil.copyfile(path, copy)
            shutil.copyfile(journal, copy.with_name(journal.name))
            return _read_study(copy.as_uri())


def _read_study(uri: str) -> tuple[int, str, int | None]:
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as connection:
        count, last = connection.execute(
            "SELECT COUNT(*), MAX(datetime_complete) FROM trials WHERE state = 'COMPLETE'").fetchone()
        budget = connection.execute("SELECT value_json FROM study_user_attributes WHERE key = ?",
                                    (BUDGET_ATTR,)).fetchone()
    return int(count), str(last or ""), int(json.loads(budget[0])) if budget else None


def _sources(entry: dict[str, Any]) -> set[str]:
    """The earlier studies an entry names: the one it widened, the one its carried came from
    (its own study is judged by date: trials added after the entry was written are unwritten)."""
    carried = entry.get("carried") or {}
    return {str(name) for name in (entry.get("widened_from"), carried.get("from")) if name}


def _trials(entry: dict[str, Any]) -> int:
    """The finished trials an entry counts: its searched budget and the configurations carried."""
    return int(entry.get("trials") or 0) + len((entry.get("carried") or {}).get("trials") or ())


def unwritten_studies(tuning: Path, folder: Path | None = None) -> list[Unwritten]:
    """The study under `tuning` (results/tuning) not yet written into a tuned file under
    `folder` (bench/tuned) for each card, method and budget that has one: the newest, when
    several are (a study replaced before its round was written stays on disk, unread)."""
    from bench.data.cards import available_datasets
    from methods import available_methods

    folder = Path(folder) if folder is not None else tuned_dir()
    cards, methods = available_datasets(), available_methods()
    entries: dict[str, dict[str, list[dict[str, Any]]]] = {}
    found: dict[tuple[str, str, int, int], Unwritten] = {}
    for path in sorted(Path(tuning).glob("*.db")):
        parsed = parse_study(path.stem, cards, methods)
        if parsed is None:
            continue
        card, method, bits, epochs = parsed
        if card not in entries:
            setting = load_tuned(card, folder / f"{card}.yaml")
            entries[card] = {m: setting.entries(m) for m in setting.methods} if setting else {}
        at_budget = [e for e in entries[card].get(method, []) if entry_budget(e) == (bits, epochs)]
        if any(path.stem in _sources(e) for e in entries[card].get(method, [])):
            continue
        complete, last, budget = study_trials(path)
        if any(e.get("study") == path.stem and _trials(e) >= complete for e in at_budget):
            continue  # written, every finished trial counted
        written = max((str(e.get("date") or "") for e in at_budget), default="")
        if last and last.replace(" ", "T")[:19] > written.rstrip("Z")[:19]:
            study = Unwritten(card, method, bits, epochs, path.stem, complete, last[:16], budget)
            if parsed not in found or found[parsed].last < study.last:
                found[parsed] = study
    return [found[key] for key in sorted(found)]
