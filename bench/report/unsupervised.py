"""The unsupervised regime's tables (issue 31): runs whose training saw no labels, each scope in a
table of its own after the main comparison, never among the supervised tables and never in a
claim's family (`bench.report.frame.claims_frame` leaves them out). Two reference rows are set
apart below the methods: the best supervised method of the card's primary table at each code
length (what labels buy on the same card and evaluator), and chance."""

from __future__ import annotations

import math

from bench.report.analysis import Analysis, MainTable
from bench.report.document import Doc
from bench.report.tables import (
    CHANCE_LABEL,
    _best,
    _method_cell,
    _unknowns,
    cell_text,
    chance_cells,
    chance_how,
    reconstruction_notes,
)
from bench.report.util import (
    REFERENCE_METHODS,
    card_info,
    get,
    method_name,
    metric_points,
    precision_metric,
)

SECTION = "Unsupervised regime"


def supervised_reference(analysis: Analysis, table: MainTable, bits: int, key: str = "mAP") -> str:
    """The best hashing method of the card's primary (supervised) table at `bits` by `key`, with
    its cell."""
    scope = analysis.primary.get(table.scope.dataset)
    if scope is None:
        return "no supervised table"
    primary = analysis.main[scope]
    getter = metric_points(key)
    cells = [(c.stat(getter).mean, m, c) for m in primary.methods if m not in REFERENCE_METHODS
             and (c := primary.complete(m, bits)) is not None]
    cells = [x for x in cells if not math.isnan(x[0])]
    if not cells:
        return "not measured"
    _, method, cell = max(cells, key=lambda x: (x[0], x[1]))
    return f"{method_name(method)}: {cell_text(cell, key)}"


def unsupervised_table(doc: Doc, analysis: Analysis, table: MainTable, key: str = "mAP") -> None:
    getter = metric_points(key)
    best = _best(table, getter)
    header = ["method", *(f"{b} bits (n={len(table.expected[b])})" for b in table.bits)]
    rows, classes = [], []
    for method in table.methods:
        marked = " (reconstruction)" if _unknowns(table, method) else ""
        rows.append([method_name(method) + marked,
                     *(_method_cell(table, method, b, key, best) for b in table.bits)])
        classes.append("")
    primary = analysis.primary.get(table.scope.dataset)
    rows.append([f"*supervised reference ({analysis.scope_label(primary) if primary else 'none'})*",
                 *(supervised_reference(analysis, table, b, key) for b in table.bits)])
    rows.append([CHANCE_LABEL, *chance_cells(table, key)])
    classes += ["ref", "ref"]
    doc.table(header, rows, classes)


def unsupervised_section(doc: Doc, analysis: Analysis) -> None:
    if not analysis.unsupervised:
        return
    doc.h(2, SECTION)
    doc.p("Methods that never read a training label (`supervised = False`: their loss gets labels of "
          "shape [B, 0], `labels_of` is refused, no class centers; training views come from the run's "
          "seeded augmentation) and reference rows that fit without labels and do not train (LSH, "
          "ITQ). The checkpoint is the last epoch's (validation mAP needs labels), or the fitted "
          "method; the evaluator is the same and scores against the card's labels. These tables are "
          "not supervised tables: no claim's family contains them.")
    for scope, table in analysis.unsupervised.items():
        title = card_info(scope.dataset).get("title") or scope.dataset
        doc.h(3, f"{title}: {analysis.scope_label(scope)}")
        rules = sorted({str(get(r, "selection", "rule", default="best validation mAP"))
                        for r in table.records()})
        doc.p(f"mAP in percent, mean over seeds [95 % t interval]; **bold** = best per bit length. "
              f"Selection: {'; '.join(rules)}.")
        unsupervised_table(doc, analysis, table)
        if (precision := precision_metric(table.records())) is not None:
            key, title = precision
            doc.p(f"**{title}** (the card's second headline metric), in percent, same layout.")
            unsupervised_table(doc, analysis, table, key)
        doc.bullets([f"Chance: random ±1 codes on this query set and database ({chance_how(table)}).",
                     "Supervised reference: the best hashing method of the card's primary table at "
                     "that length (trained with labels; another budget or protocol may apply).",
                     *reconstruction_notes(table)])
