"""Variant rows: a method of a main table run with one of its own settings changed.

Some questions are about one baseline's setting rather than about the comparison: does
HashNet's 16-bit collapse come from its alpha (the authors' 10/K against a re-implementation's
0.1)? What did SHC's v2 settings (a five-epoch stage 1) give? Such runs share the table's card,
protocol and budget and differ from a row in the method's own settings, so they are shown
under the table, beside the row they vary, and never enter a comparison or a verdict. CRH's
variants are its ablations and have their own section."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from bench.report.analysis import Analysis, MainTable
from bench.report.document import Doc
from bench.report.groups import Cell, Variant, describe_variant
from bench.report.stats import Stat
from bench.report.util import fmt_seeds, fmt_signed, method_name, method_sort_key, metric_points

ABLATED = ("crh",)  # methods whose variants the ablation section shows


@dataclass(frozen=True)
class VariantRow:
    method: str
    variant: Variant
    cells: dict[int, Cell]  # bits -> the variant's cell, judged on the table's seeds

    @property
    def label(self) -> str:
        return describe_variant(self.variant)

    @property
    def slug(self) -> str:
        """The variant as a numbers.json key part, e.g. alpha=10/K -> alpha-10-k."""
        return re.sub(r"[^a-z0-9]+", "-", self.label.lower()).strip("-")


def variant_rows(analysis: Analysis, table: MainTable) -> list[VariantRow]:
    """Every non-default configuration of a table's methods in the table's scope."""
    by_row: dict[tuple[str, Variant], dict[int, Cell]] = {}
    for group in analysis.groups_in(table.scope):
        if not group.variant or group.method in ABLATED or group.bits not in table.expected:
            continue
        row = by_row.setdefault((group.method, group.variant), {})
        row[group.bits] = Cell(group, table.expected[group.bits])
    order = sorted(by_row, key=lambda key: (method_sort_key(key[0]), describe_variant(key[1])))
    return [VariantRow(method, variant, dict(sorted(by_row[(method, variant)].items())))
            for method, variant in order]


def _difference(row: VariantRow, table: MainTable, bits: int) -> str:
    """Variant minus the row's defaults, in points, paired over the seeds both have."""
    cell, base = row.cells.get(bits), table.complete(row.method, bits)
    if cell is None or base is None or not cell.complete:
        return "–"
    getter = metric_points("mAP")
    ours, theirs = cell.values(getter), base.values(getter)
    common = sorted(set(ours) & set(theirs))
    if not common:
        return "–"
    diff = Stat.of(ours[s] - theirs[s] for s in common)
    return fmt_signed(diff.mean) if not math.isnan(diff.mean) else "–"


def variant_section(doc: Doc, analysis: Analysis, table: MainTable) -> None:
    """The table's variant rows with their difference from the row they vary (none: nothing)."""
    rows = variant_rows(analysis, table)
    if not rows:
        return
    getter = metric_points("mAP")
    doc.p("*Variant rows* (a method with one of its own settings changed, same card, protocol and budget; "
          "shown beside the row it varies, never compared or graded): mAP mean ± sd (n) "
          "over seeds, and variant − defaults in points, paired on common seeds:")
    out = []
    for row in rows:
        for bits in table.bits:
            cell = row.cells.get(bits)
            if cell is None:
                continue
            value = cell.stat(getter).text() if cell.complete else (
                f"{cell.status_text()} (provisional {cell.provisional(getter).text()})")
            out.append((method_name(row.method), row.label, bits, value, _difference(row, table, bits),
                        fmt_seeds(cell.group.seeds)))
    doc.table(("method", "setting", "bits", "mAP", "− defaults", "seeds"), out)


def variant_numbers(analysis: Analysis, table: MainTable, prefix: str) -> dict[str, str]:
    """`<prefix><method>.<variant slug>.<bits>` = "mean ± sd (n)", `.mean` and `.diff` (variant
    minus the row's defaults) for every complete variant cell."""
    out: dict[str, str] = {}
    getter = metric_points("mAP")
    for row in variant_rows(analysis, table):
        for bits, cell in row.cells.items():
            if not cell.complete:
                continue
            stat = cell.stat(getter)
            key = f"{prefix}{row.method}.{row.slug}.{bits}"
            out[key] = stat.cell_text()
            out[key + ".mean"] = f"{stat.mean:.2f}"
            out[key + ".diff"] = _difference(row, table, bits)
    return out
