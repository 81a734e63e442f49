"""Where each method ranks in a card's primary table, beside the card's other tuned tables at
the same epoch budget.

Why: the fidelity issue's searches (each method at its table's budget, on shared ranges) exist
to give every method a fair setting, and the question a reader asks of them is whether they
changed the order of the methods, not only their numbers. A rank is a statistic of noisy
means, so each comes with a 90 % percentile bootstrap interval: the table's seeds are resampled
together (a seed is one split, one initialisation and one data order for every method, so the
resample keeps the methods paired) and the methods ranked again in each resample. Descriptive,
never graded: the verdicts test the differences themselves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from bench.report.analysis import Analysis, MainTable
from bench.report.document import Doc
from bench.report.stats import stable_seed
from bench.report.util import REFERENCE_METHODS, method_name, method_sort_key, metric_points

RESAMPLES = 2000
LEVEL = 0.90
MIN_SEEDS = 3  # fewer seeds give no interval worth printing (the bootstrap of 2 draws 3 patterns)
# Means are rounded to this many decimals (in points) before ranking: CPUs with other vector
# widths sum in another order, and an exact tie must not break one way on one machine and the
# other way on the next. Tied means share the better rank ("min" ranking).
TIE_DECIMALS = 9


@dataclass(frozen=True)
class Ranked:
    """One method's rank (1 = highest mean mAP) in one column, with its bootstrap interval."""

    method: str
    mean: float
    rank: int
    low: int | None  # None: too few seeds for an interval
    high: int | None

    def apart_from(self, other: Ranked) -> bool:
        """Whether the two intervals share no rank (both must exist)."""
        if None in (self.low, self.high, other.low, other.high):
            return False
        return bool(self.high < other.low or other.high < self.low)  # type: ignore[operator]

    def text(self) -> str:
        if self.low is None or self.high is None:
            return str(self.rank)
        spread = str(self.low) if self.low == self.high else f"{self.low}–{self.high}"
        return f"{self.rank} [{spread}]"


def _ranks(means: np.ndarray, axis: int = 0) -> np.ndarray:
    return stats.rankdata(-np.round(means, TIE_DECIMALS), method="min", axis=axis)


def ranked_methods(table: MainTable, bits: int) -> set[str]:
    """The hashing methods with a complete cell at `bits` (reference rows are never ranked)."""
    return {m for (m, b), c in table.cells.items() if b == bits and c.complete and m not in REFERENCE_METHODS}


def column_ranks(table: MainTable, bits: int, methods: set[str]) -> list[Ranked]:
    """`methods` (each with a complete cell at `bits`) by rank; [] with fewer than two. The
    resampling is seeded from the table, the length and the methods ranked, as every random
    draw of the report is seeded from a label."""
    cells = {m: c for (m, b), c in table.cells.items() if b == bits and m in methods and c.complete}
    if len(cells) < 2:
        return []
    names = sorted(cells)
    seeds = table.expected[bits]
    getter = metric_points("mAP")
    values = np.array([[getter(cells[m].group.runs[s]) for s in seeds] for m in names], dtype=np.float64)
    means = values.mean(axis=1)
    ranks = _ranks(means)
    if len(seeds) >= MIN_SEEDS:
        def statistic(*samples: np.ndarray, axis: int = -1) -> np.ndarray:
            return _ranks(np.stack([s.mean(axis=axis) for s in samples])).astype(np.float64)

        result = stats.bootstrap(tuple(values), statistic, paired=True, vectorized=True,
                                 n_resamples=RESAMPLES, confidence_level=LEVEL, method="percentile",
                                 rng=np.random.default_rng(stable_seed(f"rank|{table.scope}|{bits}|{names}")))
        lows = [math.floor(v) for v in result.confidence_interval.low]
        highs = [math.ceil(v) for v in result.confidence_interval.high]
    else:
        lows = highs = [None] * len(names)
    rows = [Ranked(m, float(means[i]), int(ranks[i]), lows[i], highs[i]) for i, m in enumerate(names)]
    return sorted(rows, key=lambda r: (r.rank, r.method))


def comparable(analysis: Analysis, card: str) -> list[MainTable]:
    """The card's other tuned tables at its primary table's epoch budget (the primary itself
    tuned): the tables whose order the primary's searches may have changed."""
    primary = analysis.primary.get(card)
    if primary is None or primary.protocol != "tuned":
        return []
    return [table for scope, table in analysis.main.items()
            if scope.dataset == card and scope != primary and scope.protocol == "tuned"
            and scope.epochs == primary.epochs and not scope.unsupervised]


@dataclass(frozen=True)
class Ranking:
    """A card's primary table ranked beside one other table: per common bit length, the ranks
    here (primary) and there (other), both over the methods the two tables share."""

    other: MainTable
    columns: tuple[tuple[int, dict[str, Ranked], dict[str, Ranked]], ...]


def rankings(analysis: Analysis, card: str) -> list[Ranking]:
    """One Ranking per comparable table with at least one length where two methods are shared."""
    out = []
    for other in comparable(analysis, card):  # none unless the card has a primary table
        primary = analysis.main[analysis.primary[card]]
        columns = []
        for bits in sorted(set(primary.bits) & set(other.bits)):
            shared = ranked_methods(primary, bits) & ranked_methods(other, bits)
            if len(shared) >= 2:
                columns.append((bits, {r.method: r for r in column_ranks(primary, bits, shared)},
                                {r.method: r for r in column_ranks(other, bits, shared)}))
        if columns:
            out.append(Ranking(other, tuple(columns)))
    return out


def ranking_section(doc: Doc, analysis: Analysis, card: str) -> None:
    """For each comparable table: one row per method, its rank here and there per common bit
    length, and the moves, marking those whose intervals do not overlap."""
    for ranking in rankings(analysis, card):
        columns = ranking.columns
        label = analysis.scope_label(ranking.other.scope)
        doc.h(4, f"Ranking beside {label}")
        doc.p(f"Rank by mean mAP (1 = best) among the hashing methods with a complete cell in both "
              f"tables at that length, with its {LEVEL * 100:.0f} % bootstrap interval over the table's "
              f"seeds ({RESAMPLES} resamples of the seeds, the methods kept paired; no interval under "
              f"{MIN_SEEDS} seeds). *Here*: this card's primary table; *there*: {label}. Descriptive: "
              "the verdicts test the differences.")
        first = columns[0][1]
        methods = sorted({m for _, here, _there in columns for m in here},
                         key=lambda m: (first[m].rank if m in first else len(first) + 1, method_sort_key(m)))
        header = ["method"]
        for bits, _, _ in columns:
            header += [f"{bits} bits here", f"{bits} bits there"]
        rows = []
        moves = []
        for method in methods:
            row = [method_name(method)]
            for bits, here, there in columns:
                a, b = here.get(method), there.get(method)
                row += [a.text() if a else "–", b.text() if b else "–"]
                if a and b and a.rank != b.rank:
                    moves.append(f"{method_name(method)} at {bits} bits: {b.rank} there, {a.rank} here"
                                 + (" (intervals apart)" if a.apart_from(b) else ""))
            rows.append(tuple(row))
        doc.table(tuple(header), rows)
        doc.p("Moves: " + ("; ".join(moves) if moves else "none: every method keeps its rank") + ".")
