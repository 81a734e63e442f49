"""Which records count, grouped into comparable tables: the analysis every part of the report
reads.

Only complete records written by the current code (`code.results_version ==
bench.RESULTS_VERSION`) enter the numbers. Records from older code, failed runs, corrupt files
and cells whose seed set is incomplete are listed in "Data quality" and kept out. Each dataset
card's *primary* table is its main table with the most complete cells (the headline
comparisons of a claim are made there); other main tables (longer schedules, other
protocols) are shown after it. Tables of runs whose training saw no labels (the unsupervised
regime) are kept apart (`Analysis.unsupervised`): never a card's primary table, never in the
claims' frame."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench import RESULTS_VERSION
from bench.report.ablations import CrhAblations, build_crh_ablations
from bench.report.groups import (
    Cell,
    Group,
    Scope,
    expected_seed_set,
    scope_of,
    variant_of,
)
from bench.report.stats import Stat
from bench.report.util import get, jsonable, method_sort_key, record_version, seed_of
from bench.runs.spec import PER_SEED, config_identity

# Issue 32: a row added after the paper's comparison enters a table with at least this many of
# the table's seeds, marked as such (its cells are shown on the seeds they have).
ADDED_ROW_MIN_SEEDS = 5


@dataclass
class MainTable:
    scope: Scope
    expected: dict[int, tuple[int, ...]]  # bits -> seeds every cell of that bit length should have
    cells: dict[tuple[str, int], Cell]
    only_failed: dict[tuple[str, int], tuple[int, ...]] = field(default_factory=dict)

    @property
    def methods(self) -> list[str]:
        return sorted({m for m, _ in self.cells} | {m for m, _ in self.only_failed}, key=method_sort_key)

    @property
    def bits(self) -> list[int]:
        return sorted({b for _, b in self.cells} | {b for _, b in self.only_failed})

    def cell(self, method: str, bits: int) -> Cell | None:
        return self.cells.get((method, bits))

    def complete(self, method: str, bits: int) -> Cell | None:
        cell = self.cells.get((method, bits))
        return cell if cell is not None and cell.complete else None

    def records(self) -> list[dict]:
        return [r for c in self.cells.values() for r in c.group.runs.values()]

    def fewer_seeds(self, method: str, bits: int) -> Cell | None:
        """The cell judged on the expected seeds it has, when it lacks some but has at least
        ADDED_ROW_MIN_SEEDS (None otherwise, and for a complete cell). Only a row added after the
        paper's comparison is shown this way (the caller decides which rows those are): its mean
        is over other seeds than the rest of its column's, so it is marked with its n and never
        bolded, ranked or graded."""
        cell = self.cells.get((method, bits))
        if cell is None or cell.complete:
            return None
        have = tuple(s for s in cell.expected if s in cell.group.runs)
        return Cell(cell.group, have) if len(have) >= ADDED_ROW_MIN_SEEDS else None


# Settings that only change how long (and how often validated) a schedule runs: two main tables
# that differ in nothing else show whether the shorter schedule had converged.
SCHEDULE_KEYS = ("epochs", "eval_every")


@dataclass(frozen=True)
class ScheduleComparison:
    """One method x bit length measured under a shorter and a longer schedule, on the seeds
    both have (the longer schedule is usually run on fewer seeds)."""

    short: Cell
    long: Cell
    seeds: tuple[int, ...]

    @property
    def method(self) -> str:
        return self.short.group.method

    @property
    def bits(self) -> int:
        return self.short.group.bits

    def epochs(self, cell: Cell) -> int:
        return cell.group.scope.epochs

    def mean(self, cell: Cell, getter: Callable[[dict], float]) -> float:
        return Stat.of(cell.group.values(getter, self.seeds).values()).mean

    def gain(self, getter: Callable[[dict], float]) -> float:
        return self.mean(self.long, getter) - self.mean(self.short, getter)

    def long_best_epochs(self) -> list[Any]:
        return [get(self.long.group.runs[s], "selection", "best_epoch") for s in self.seeds]


@dataclass
class Analysis:
    included: list[dict]
    older: list[dict]
    failed: list[dict]
    problems: list[str]
    groups: list[Group]
    conflicts: list[tuple[Group, Group]]  # (left out, kept)
    main: dict[Scope, MainTable]
    crh: dict[Scope, CrhAblations]
    multi_digest: set[str]
    primary: dict[str, Scope] = field(default_factory=dict)  # dataset card -> its primary table
    results_version: Any = RESULTS_VERSION  # the version treated as current code
    unsupervised: dict[Scope, MainTable] = field(default_factory=dict)  # apart from `main`

    @property
    def scopes(self) -> list[Scope]:
        return sorted({g.scope for g in self.groups})

    def scope_label(self, scope: Scope) -> str:
        return scope.describe(with_digest=scope.dataset in self.multi_digest)

    def groups_in(self, scope: Scope) -> list[Group]:
        return [g for g in self.groups if g.scope == scope]

    def is_primary(self, scope: Scope) -> bool:
        return self.primary.get(scope.dataset) == scope

    def cards(self) -> list[str]:
        return sorted(self.primary)


def _schedule_free(scope: Scope) -> tuple:
    return (scope.dataset, scope.protocol, scope.digest,
            tuple((k, v) for k, v in scope.settings if k not in SCHEDULE_KEYS))


def schedule_comparisons(analysis: Analysis) -> list[ScheduleComparison]:
    """Main-table cells whose scopes differ only in the schedule (epoch count, validation
    cadence), paired on common seeds, shorter schedule first."""
    out = []
    scopes = sorted(analysis.main, key=lambda s: (_schedule_free(s), s.epochs, s))
    for i, short_scope in enumerate(scopes):
        for long_scope in scopes[i + 1:]:
            if (_schedule_free(long_scope) != _schedule_free(short_scope)
                    or long_scope.epochs <= short_scope.epochs):
                continue
            short_table, long_table = analysis.main[short_scope], analysis.main[long_scope]
            for key, long_cell in sorted(long_table.cells.items(),
                                         key=lambda kv: (method_sort_key(kv[0][0]), kv[0][1])):
                short_cell = short_table.cells.get(key)
                if short_cell is None:
                    continue
                common = tuple(sorted(set(short_cell.group.runs) & set(long_cell.group.runs)))
                if common:
                    out.append(ScheduleComparison(short_cell, long_cell, common))
    return out


def _record_sort_key(record: dict) -> tuple:
    return (str(record.get("run_id", "")), str(record.get("_path", "")))


def _sort_records(records: Sequence[dict], problems: list[str], results_version: Any
                  ) -> tuple[list[dict], list[dict], list[dict]]:
    included, older, failed = [], [], []
    for record in sorted(records, key=_record_sort_key):
        spec = record.get("spec")
        if not isinstance(spec, dict) or any(spec.get(k) is None for k in ("dataset", "method", "bits")):
            where = record.get("_path") or record.get("run_id")
            problems.append(f"{where}: spec lacks dataset, method or bits")
        elif record_version(record) != results_version:
            older.append(record)
        elif record.get("status") != "complete" or not isinstance(record.get("metrics"), dict):
            failed.append(record)
        else:
            included.append(record)
    return included, older, failed


def _group(included: list[dict], current: Callable[[Group], bool] | None = None,
           ) -> tuple[list[Group], list[tuple[Group, Group]]]:
    by_key: dict[tuple, Group] = {}
    for record in included:
        spec = record["spec"]
        scope = scope_of(record)
        # The configuration as the run id sees it: provenance (which version of the tuned file
        # supplied the values) never splits runs of one configuration.
        key = (scope, spec["method"], int(spec["bits"]), variant_of(record),
               jsonable(config_identity(record.get("config") or {})))
        group = by_key.setdefault(key, Group(scope, spec["method"], int(spec["bits"]), key[3], key[4]))
        group.runs.setdefault(seed_of(record), record)
    # Two configurations with the same scope/method/bits/variant (a training setting changed
    # without an override, or a later search changed a method's tuned values): keep the one with
    # more seeds, on a tie the one at the values the tuned file applies now (`current`), so a cell
    # being rerun at new values keeps its complete runs until the new ones are as many; list the other.
    kept: dict[tuple, Group] = {}
    conflicts: list[tuple[Group, Group]] = []
    for group in sorted(by_key.values(), key=lambda g: (g.sort_key()[:4], -len(g.runs),
                                                        not (current and current(g)), g.config_key)):
        slot = (group.scope, group.method, group.bits, group.variant)
        if slot in kept:
            conflicts.append((group, kept[slot]))
        else:
            kept[slot] = group
    return sorted(kept.values(), key=Group.sort_key), conflicts


def _failed_key(scope: Scope, method: Any, bits: int, variant: tuple) -> tuple:
    # Failed runs carry no split digest, so they are matched on everything else.
    return (scope.dataset, scope.protocol, scope.settings, method, bits, variant)


PROTOCOL_PREFERENCE = {"tuned": 2, "harmonised": 1, "native": 0}
_DECLARED: dict[str, tuple[str, int, bool] | None] = {}


def declared_table(dataset: str) -> tuple[str, int, bool] | None:
    """(protocol, epochs, per-seed split) of the table the card names as its primary (`table:`,
    an experiment with no other setting, on split 0 or each seed on its own split), or None: no
    such key, or a card or experiment this code cannot read."""
    if dataset not in _DECLARED:
        from bench.data.loading import load_card
        from bench.errors import UserError
        from bench.runs.spec import card_protocol
        from bench.sweeps.experiments import load_experiment

        try:
            card = load_card(dataset)
            experiment = load_experiment(card.table) if card.table else None
        except UserError:
            experiment = None
        epochs = (experiment.settings.get("epochs") or card.schedule.get("epochs")) if experiment else None
        plain = experiment is not None and set(experiment.settings) <= {"epochs"} and not experiment.parts \
            and experiment.split_seed in (0, PER_SEED) and experiment.backbone is None
        _DECLARED[dataset] = ((experiment.protocol or card_protocol(card), int(epochs),
                               experiment.split_seed == PER_SEED) if plain and epochs else None)
    return _DECLARED[dataset]


def _is_declared(scope: Scope) -> bool:
    """The scope is the card's declared table: its protocol, epochs and split rule, and no other
    setting but the search budget of tuned values searched at the table's own epochs."""
    declared = declared_table(scope.dataset)
    if declared is None or (scope.protocol, scope.epochs) != declared[:2]:
        return False
    settings = dict(scope.settings)
    if "search_epochs" in settings and int(json.loads(settings.pop("search_epochs"))) != scope.epochs:
        return False
    return set(settings) == ({"epochs", "split"} if declared[2] else {"epochs"})


def _primary_rank(table: MainTable) -> tuple:
    """A card's headline table: the one its card names (`table:`), so that rows run in
    another table only (CgAT beside its bases under another protocol) cannot take the headline;
    then the most complete cells; among equally complete tables the tuned protocol (every
    method at its own searched values) over harmonised over native, then more runs in complete
    cells (seeds x cells), then the fewest extra settings."""
    cells = table.cells.values()
    return (_is_declared(table.scope), sum(c.complete for c in cells),
            PROTOCOL_PREFERENCE.get(table.scope.protocol, -1), sum(len(c.used) for c in cells),
            -len(table.scope.settings))


def analyze(records: Sequence[dict], problems: Sequence[str] = (),
            results_version: Any = RESULTS_VERSION, current: Callable[[Group], bool] | None = None,
            ) -> Analysis:
    """Sort records into what counts and what is shown apart, and group what counts (`current`:
    whether a group of tuned runs applied the values its card's tuned file applies now)."""
    problems = list(problems)
    included, older, failed = _sort_records(records, problems, results_version)
    groups, conflicts = _group(included, current)

    failed_seeds: dict[tuple, set[int]] = {}
    for record in failed:
        spec = record["spec"]
        key = _failed_key(scope_of(record), spec.get("method"), int(spec.get("bits", 0)), variant_of(record))
        failed_seeds.setdefault(key, set()).add(seed_of(record))
    for group in groups:
        key = _failed_key(group.scope, group.method, group.bits, group.variant)
        group.failed_seeds = tuple(sorted(failed_seeds.get(key, set()) - set(group.runs)))

    digests: dict[str, set[str]] = {}
    for group in groups:
        if not group.scope.per_seed:  # per-seed tables are told apart by split=per-seed
            digests.setdefault(group.scope.dataset, set()).add(group.scope.digest)
    multi_digest = {d for d, values in digests.items() if len(values) > 1}

    main: dict[Scope, MainTable] = {}
    unsupervised: dict[Scope, MainTable] = {}
    crh: dict[Scope, CrhAblations] = {}
    for scope in sorted({g.scope for g in groups}):
        in_scope = [g for g in groups if g.scope == scope]
        main_groups = [g for g in in_scope if not g.variant]
        if main_groups:
            # Seeds are paired within a bit length, so each bit length has its own seed set.
            expected = {bits: expected_seed_set([g.attempted for g in main_groups if g.bits == bits])
                        for bits in sorted({g.bits for g in main_groups})}
            cells = {(g.method, g.bits): Cell(g, expected[g.bits]) for g in main_groups}
            only_failed = {(k[3], k[4]): tuple(sorted(v)) for k, v in failed_seeds.items()
                           if k[:3] == (scope.dataset, scope.protocol, scope.settings) and not k[5]
                           and (k[3], k[4]) not in cells}
            (unsupervised if scope.unsupervised else main)[scope] = MainTable(scope, expected, cells,
                                                                                only_failed)
        ablations = build_crh_ablations(scope, in_scope)
        if ablations is not None:
            crh[scope] = ablations
    primary: dict[str, Scope] = {}
    for scope in main:
        best = primary.get(scope.dataset)
        if best is None or _primary_rank(main[scope]) > _primary_rank(main[best]):
            primary[scope.dataset] = scope
    return Analysis(included, older, failed, problems, groups, conflicts, main, crh, multi_digest, primary,
                    results_version, unsupervised)
