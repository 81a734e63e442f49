"""Short codes (issue 29): how each method holds up below the main tables' 16 bits.

RSLH ("Reinforcing Short-Length Hashing", arXiv 2004.11511) is about very short codes: how
much of what longer codes retrieve they keep, and how to keep more. RSLH itself is blocked on
its sources (no method section or code could be read), so the suite measures the claim's
subject instead: the `short-codes` experiments run every method that allows them at 8 and 12
bits under the same protocol, split and seeds as a table's 16-64-bit cells, so the short lengths
join that table. This section shows every supervised table that holds such lengths, with the
loss from 16 bits to the shortest length paired by seed (same split, initialisation seed and
data order), and the same curve as a figure."""

from __future__ import annotations

import math

from bench.report.analysis import Analysis, MainTable
from bench.report.document import Doc, FigurePlan
from bench.report.figures import draw_headline
from bench.report.stats import Stat
from bench.report.tables import (
    CHANCE_LABEL,
    DAGGER_NOTE,
    FLOOR_LABEL,
    _best,
    _method_cell,
    _unknowns,
    chance_cells,
    interval,
    reconstruction_notes,
    table_series,
)
from bench.report.util import (
    FLOOR_METHOD,
    REFERENCE_METHODS,
    card_info,
    fmt_signed,
    method_name,
    metric_points,
)

SECTION = "Short codes"
MAIN_SHORTEST = 16  # the main tables' shortest code length: lengths below it are "short"


def short_tables(analysis: Analysis) -> list[MainTable]:
    """The supervised tables with at least one complete cell below MAIN_SHORTEST bits."""
    return [table for table in analysis.main.values()
            if any(bits < MAIN_SHORTEST and cell.complete for (_, bits), cell in table.cells.items())]


def short_methods(table: MainTable) -> list[str]:
    """The table's methods with a cell (complete or not) below MAIN_SHORTEST bits: a row without
    one would say nothing about short codes."""
    short = {method for method, bits in (*table.cells, *table.only_failed) if bits < MAIN_SHORTEST}
    return [m for m in table.methods if m in short]


def paired_loss(table: MainTable, method: str, short: int, key: str = "mAP") -> Stat | None:
    """mAP at `short` bits minus mAP at MAIN_SHORTEST bits, per seed both cells hold (each seed
    is the same split, initialisation and data order at both lengths), as a Stat in points;
    None when either cell is incomplete or no seed is shared."""
    low, base = table.complete(method, short), table.complete(method, MAIN_SHORTEST)
    if low is None or base is None:
        return None
    getter = metric_points(key)
    at_low, at_base = low.values(getter), base.values(getter)
    shared = sorted(set(at_low) & set(at_base))
    return Stat.of(at_low[s] - at_base[s] for s in shared) if shared else None


def loss_text(stat: Stat | None) -> str:
    if stat is None or stat.n == 0 or math.isnan(stat.mean):
        return "–"
    if stat.n < 2:
        return f"{fmt_signed(stat.mean)} (one seed)"
    half = stat.half_width
    return f"{fmt_signed(stat.mean)} [{fmt_signed(stat.mean - half)}, {fmt_signed(stat.mean + half)}]"


def short_codes_table(doc: Doc, table: MainTable, shown: list[str], key: str = "mAP") -> None:
    """Rows for `shown` (the methods with a short cell), hashing methods first, then the floor
    and chance, as in every main table."""
    best = _best(table, metric_points(key))
    short = min(table.bits)
    compare = MAIN_SHORTEST in table.bits and short < MAIN_SHORTEST
    header = ["method", *(f"{b} bits (n={len(table.expected[b])})" for b in table.bits),
              *([f"{short} − {MAIN_SHORTEST} bits (paired)"] if compare else [])]
    ordered = [m for m in shown if m not in REFERENCE_METHODS] + [m for m in shown if m in REFERENCE_METHODS]
    rows, classes = [], []
    for method in ordered:
        marked = " (reconstruction)" if _unknowns(table, method) else ""
        rows.append([FLOOR_LABEL if method == FLOOR_METHOD else method_name(method) + marked,
                     *(_method_cell(table, method, b, key, best) for b in table.bits),
                     *([loss_text(paired_loss(table, method, short, key))] if compare else [])])
        classes.append("ref" if method in REFERENCE_METHODS else "")
    rows.append([CHANCE_LABEL, *chance_cells(table, key), *(["–"] if compare else [])])
    classes.append("ref")
    doc.table(header, rows, classes)


def short_codes_figure(doc: Doc, analysis: Analysis, table: MainTable, shown: list[str]) -> None:
    title = str(card_info(table.scope.dataset).get("title") or table.scope.dataset)
    panels = [(f"{title}\n{analysis.scope_label(table.scope).split(' · ', 1)[1]}", tuple(table.bits),
               tuple(table_series(table, shown)))]
    doc.figure(FigurePlan(f"short-codes-{table.scope.slug}", (8.4, 4.2), draw_headline(panels), panels),
               "mAP (%) against code length, short lengths beside the table's 16-64 bits (same protocol, "
               "split and seeds), mean over seeds with 95 % intervals; dashed grey: the classify-then-hash "
               "floor; dotted: chance.")


def short_codes_section(doc: Doc, analysis: Analysis) -> None:
    tables = short_tables(analysis)
    if not tables:
        return
    doc.h(2, SECTION)
    doc.p("RSLH (arXiv 2004.11511) is about very short codes: how much of what longer codes retrieve "
          "they keep. RSLH itself could not be implemented (only its abstract and introduction are "
          "readable; no code was found), so `python -m bench run --experiment short-codes` measures "
          "the claim's subject instead: every method that allows them at 8 and 12 bits, under the "
          "protocol, split and seeds of a table's 16-64-bit cells. A method missing at a length refuses "
          "it (LBHash needs whole code bytes: 8 bits only).")
    for table in tables:
        title = card_info(table.scope.dataset).get("title") or table.scope.dataset
        doc.h(3, f"{title}: {analysis.scope_label(table.scope)}")
        short = min(table.bits)
        doc.p(f"mAP in percent, mean over seeds [95 % t interval]; **bold** = best hashing method per bit "
              f"length. Last column: mAP at {short} bits minus mAP at {MAIN_SHORTEST} bits, per seed "
              f"(the same split, initialisation and data order at both lengths), mean [95 % t interval] "
              f"in points.")
        shown = short_methods(table)
        short_codes_table(doc, table, shown)
        short_codes_figure(doc, analysis, table, shown)
        notes = []
        if any(interval(c, "mAP")[3] == "bootstrap" for (m, _), c in table.cells.items()
               if c.complete and m in shown):
            notes.append(DAGGER_NOTE)
        if waiting := [method_name(m) for m in table.methods if m not in shown]:
            notes.append(f"In this table's 16-64-bit cells but not run below {MAIN_SHORTEST} bits: "
                         f"{', '.join(waiting)}.")
        doc.bullets(notes + reconstruction_notes(table))
