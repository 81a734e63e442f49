"""The numbers the README quotes, as the report computes them (reports/numbers.json), and the
seeds-for-power table (reports/power.csv).

README.md is rendered from docs/README.template.md by `python -m bench readme`, which fills
each `{{key}}` from numbers.json: a hand-typed number cannot drift from the records. Values
are strings formatted as the README shows them."""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Sequence

from bench.report.analysis import Analysis, MainTable
from bench.report.claims import ClaimResult
from bench.report.grading import power_rows
from bench.report.stats import Stat
from bench.report.tables import chance_value
from bench.report.util import FLOOR_METHOD, fmt_p, metric_points

CARD_SHORT = {"fashion-mnist": "FM", "fashion-mnist-multi": "multi", "fashion-mnist-pairs": "pairs"}
POWER_COLUMNS = ("claim", "card", "bits", "comparison", "key", "n", "delta", "sd", "power_now", "n80")


def card_key(card: str) -> str:
    return CARD_SHORT.get(card, re.sub(r"[^a-z0-9]+", "-", card.lower()).strip("-"))


def table_tag(analysis: Analysis, table: MainTable) -> str:
    """"" for a card's primary table, else its setting as a slug (e.g. harmonised-epochs-60)."""
    if analysis.is_primary(table.scope):
        return ""
    label = analysis.scope_label(table.scope).split(" · ", 1)[-1]
    return re.sub(r"[^a-z0-9]+", "-", label.lower().replace(" protocol", "")).strip("-") + "."


def _method_key(method: str) -> str:
    return "floor" if method == FLOOR_METHOD else method


def _signed(value: float, digits: int = 2) -> str:
    return "n/a" if math.isnan(value) else f"{value:+.{digits}f}"


def _plain(value: float, digits: int = 2) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def table_numbers(analysis: Analysis) -> dict[str, str]:
    """`table.<card>.[<setting>.]<method>.<bits>` = "mean ± sd (n)" of every complete cell,
    `.mean` the mean alone, and `chance` per bit length."""
    out: dict[str, str] = {}
    for scope, table in analysis.main.items():
        prefix = f"table.{card_key(scope.dataset)}.{table_tag(analysis, table)}"
        for (method, bits), cell in table.cells.items():
            if not cell.complete:
                continue
            stat: Stat = cell.stat(metric_points("mAP"))
            key = f"{prefix}{_method_key(method)}.{bits}"
            spread = f" ± {stat.std:.2f}" if stat.n > 1 else ""
            out[key] = f"{stat.mean:.2f}{spread} ({stat.n})"
            out[key + ".mean"] = _plain(stat.mean)
        for bits in table.bits:
            value = chance_value(table, bits, "mAP")
            if not math.isnan(value):
                out[f"{prefix}chance.{bits}"] = _plain(value)
    return out


def claim_numbers(verdicts: Sequence[ClaimResult]) -> dict[str, str]:
    """Grades, IUT p, power and every family comparison of every claim."""
    out: dict[str, str] = {}
    for v in verdicts:
        base = f"claim.{v.id}"
        out[f"{base}.grade"] = v.label
        for g in v.by_card:
            card = f"{base}.{card_key(g.card)}"
            out[f"{card}.grade"] = g.label
            out[f"{card}.iut_p"] = fmt_p(g.iut_p)
            out[f"{card}.family_size"] = str(len(g.family))
            out[f"{card}.n80"] = ("unattainable" if math.isinf(g.n80) else
                                  "n/a" if math.isnan(g.n80) else str(int(g.n80)))
        for c in v.comparisons:
            if not c.in_family:
                continue
            key = f"cmp.{v.id}.{card_key(c.card)}.{c.extra.get('key', 'cell')}.{c.bits}"
            digits = 3 if c.unit == "Spearman ρ" else 2
            if not math.isnan(c.ratio):
                out[f"{key}.ratio"] = f"{c.ratio:.3f}"
                continue
            out[f"{key}.diff"] = _signed(c.difference, digits)
            out[f"{key}.low"] = _signed(c.low, digits)
            out[f"{key}.high"] = _signed(c.high, digits)
            out[f"{key}.a"] = _plain(c.a, digits)
            out[f"{key}.p_for"] = fmt_p(c.p_for)
            out[f"{key}.p_holm"] = fmt_p(c.p_holm)
    return out


def report_numbers(analysis: Analysis, verdicts: Sequence[ClaimResult]) -> dict[str, str]:
    """Every key the README template may use, sorted."""
    numbers = {**table_numbers(analysis), **claim_numbers(verdicts)}
    return dict(sorted(numbers.items()))


def power_csv(verdicts: Sequence[ClaimResult]) -> str:
    """One row per counted family cell: observed delta and sd, power now, seeds for 80 %."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=POWER_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for v in verdicts:
        for row in power_rows(v.id, v.comparisons):
            writer.writerow({**row, "card": card_key(str(row["card"]))})
    return buffer.getvalue()
