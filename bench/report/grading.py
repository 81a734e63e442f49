"""Card and claim grades of verdicts v3 (shared/specs/verdicts-v3.md, section 1).

A claim is graded per dataset card on one *family*: the claim's default-settings comparisons
in the card's designated table (its primary table; when that has none of the claim's
comparisons, the table with the most counted ones). Comparisons in other tables are "also
measured" and never graded. A conjunction ("at every bit length") is an intersection-union
test: it rejects when every cell rejects, so its p is the largest one-sided p of the family,
without adjustment. "Contradicted" needs a Holm-adjusted p against the claim <= .05. A
decisive result resting on fewer than `min_decisive` seeds stays at the weaker grade and is
marked provisional. The claim's overall grade is the weakest card grade."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from bench.report.stats import ALPHA, holm_adjusted, power_at
from bench.report.util import fmt_p, fmt_signed, plural
from bench.report.verdicts import (
    CONSISTENT,
    CONTRADICTED,
    MIXED,
    NOT_MEASURABLE,
    SUPPORTED,
    Comparison,
    n80_text,
)

MIN_DECISIVE = 5
RATIO_MARGIN = 1.05  # the work ratio a cost difference must reach (section 5)
WEAKNESS = {CONTRADICTED: 0, MIXED: 1, CONSISTENT: 2, SUPPORTED: 3}


@dataclass(frozen=True)
class CardGrade:
    """One card's grade with what it rests on."""

    card: str
    grade: str
    reason: str
    table: str = ""
    family: tuple[str, ...] = ()
    iut_p: float = math.nan
    power: float = math.nan        # joint power of the family at its current n
    n80: float = math.nan          # seeds for 80 % power in the hardest cell
    provisional: bool = False
    n: tuple[int, ...] = ()

    @property
    def label(self) -> str:
        return self.grade + (" (provisional)" if self.provisional else "")

    @property
    def power_text(self) -> str:
        parts = []
        if not math.isnan(self.power):
            parts.append(f"power {self.power:.2f} at n={'/'.join(map(str, self.n))}")
        if math.isinf(self.n80):
            parts.append("80 % power unattainable (an estimate against the claim)")
        elif not math.isnan(self.n80):
            parts.append(f"80 % power at {n80_text(self.n80)} seeds")
        return "; ".join(parts) or "n/a"

    def to_dict(self) -> dict[str, Any]:
        def clean(value: float) -> float | str | None:
            if math.isinf(value):
                return "unattainable"
            return None if math.isnan(value) else round(float(value), 6)

        return {"verdict": self.grade, "summary": self.reason, "provisional": self.provisional,
                "designated_table": self.table, "family": list(self.family), "family_size": len(self.family),
                "iut_p": clean(self.iut_p), "power": clean(self.power), "n80": clean(self.n80),
                "n": list(self.n)}


def designated_table(comparisons: Sequence[Comparison]) -> str:
    """The card's primary table if it holds a default comparison of the claim, else the table
    with the most counted default comparisons (ties: the first by name)."""
    defaults = [c for c in comparisons if c.defaults]
    primary = sorted({c.table for c in defaults if c.headline})
    if primary:
        return primary[0]
    counts: dict[str, int] = {}
    for c in defaults:
        counts[c.table] = counts.get(c.table, 0) + int(c.counted)
    return min(counts, key=lambda t: (-counts[t], t)) if counts else ""


def with_families(comparisons: Sequence[Comparison]) -> list[Comparison]:
    """Mark each card's family and Holm-adjust p_against within it (others keep NaN)."""
    out = list(comparisons)
    for card in sorted({c.card for c in comparisons}):
        table = designated_table([c for c in comparisons if c.card == card])
        members = [i for i, c in enumerate(out) if c.card == card and c.defaults and c.table == table]
        adjusted = holm_adjusted([out[i].p_against if out[i].counted else math.nan for i in members])
        for i, p in zip(members, adjusted, strict=True):
            out[i] = replace(out[i], in_family=True, p_holm=p)
    return out


def _n_text(cells: Sequence[Comparison]) -> str:
    return "n = " + "/".join(map(str, sorted({c.n for c in cells})))


def grade_card(card: str, comparisons: Sequence[Comparison], rule: str = "t",
               empty: str = "") -> CardGrade:
    """The card's grade from its family (comparisons already passed through with_families)."""
    family = [c for c in comparisons if c.card == card and c.in_family]
    names = tuple(f"{c.what} · {c.bits} bits" for c in family)
    table = family[0].table if family else ""
    counted = [c for c in family if c.counted]
    if not counted:
        if not comparisons:
            return CardGrade(card, NOT_MEASURABLE, empty or f"nothing to compare on {card}")
        reasons = sorted({c.note.removeprefix("not counted: ") for c in comparisons if c.note})
        return CardGrade(card, NOT_MEASURABLE, f"{plural(len(comparisons), 'comparison')} listed, none "
                         f"counted ({'; '.join(reasons) or 'no family'})", table, names)
    if rule == "ratio":
        return _grade_ratio(card, family, table, names)
    ns = tuple(sorted({c.n for c in counted}))
    iut_p = max(c.p_for for c in counted) if all(not math.isnan(c.p_for) for c in counted) else math.nan
    if len(counted) < len(family):
        iut_p = math.nan  # a cell that cannot be tested cannot reject
    powers = [power_at(c.difference - c.null, c.sd, c.n) for c in counted]
    joint = float(np.prod(powers)) if powers and all(not math.isnan(p) for p in powers) else math.nan
    needs = [c.n80 for c in counted if not math.isnan(c.n80)]
    n80 = max(needs) if needs else math.nan
    few = min(ns) < MIN_DECISIVE
    base = dict(table=table, family=names, iut_p=iut_p, power=joint, n80=n80, n=ns)
    favour = sum(c.favours for c in counted)
    against = sorted((c for c in counted if c.significant_against), key=lambda c: c.p_holm)
    tail = (f"family of {len(family)} in {table}; IUT p={fmt_p(iut_p)}; {_n_text(counted)}; "
            f"{favour} of {len(counted)} estimates favour the claim")
    if len(counted) < len(family):
        tail += (f"; {plural(len(family) - len(counted), 'family cell')} not counted, so the "
                 "intersection-union test cannot reject")
    if against and not few:
        worst = against[0]
        text = (f"{plural(len(against), 'cell')} significantly against the claim after Holm "
                f"({worst.what}, {worst.bits} bits: {fmt_signed(worst.difference)} {worst.unit}, "
                f"Holm p={fmt_p(worst.p_holm)}); {tail}")
        return CardGrade(card, CONTRADICTED, text, **base)
    rejects = not math.isnan(iut_p) and iut_p < ALPHA
    if rejects and not few:
        return CardGrade(card, SUPPORTED, f"every cell rejects its null (IUT); {tail}", **base)
    provisional = (rejects or bool(against)) and few
    note = ""
    if provisional and against:
        worst = against[0]
        note = (f"; against the claim after Holm ({worst.what}, {worst.bits} bits, Holm p="
                f"{fmt_p(worst.p_holm)}) but n < {MIN_DECISIVE}: provisional")
    elif provisional:
        note = f"; every cell rejects, but n < {MIN_DECISIVE}: provisional"
    grade = CONSISTENT if favour == len(counted) else MIXED
    return CardGrade(card, grade, tail + note, provisional=provisional, **base)


def _grade_ratio(card: str, family: Sequence[Comparison], table: str, names: tuple[str, ...]) -> CardGrade:
    """Counted work: supported when every cell's ratio >= 1.05, contradicted when any is
    <= 1/1.05, else mixed (deterministic counts: no test, no power)."""
    ratios = [c.ratio for c in family if c.counted and not math.isnan(c.ratio)]
    if not ratios:
        return CardGrade(card, NOT_MEASURABLE, "no cell with counted work on both sides", table, names)
    low, high = f"x{min(ratios):.3f}", f"x{max(ratios):.3f}"
    span = f"work ratio {low}" + ("" if low == high else f" to {high}")
    text = f"{span} over {plural(len(ratios), 'cell')} in {table}"
    if all(r >= RATIO_MARGIN for r in ratios):
        grade = SUPPORTED
    elif any(r <= 1 / RATIO_MARGIN for r in ratios):
        grade = CONTRADICTED
    else:
        grade = MIXED
    return CardGrade(card, grade, f"{text} (supported at >= x{RATIO_MARGIN})", table, names)


def overall(cards: Sequence[CardGrade], empty: str) -> tuple[str, str, bool]:
    """(grade, reason, provisional): the weakest measurable card grade."""
    measured = [c for c in cards if c.grade != NOT_MEASURABLE]
    if not measured:
        reasons = "; ".join(f"{c.card}: {c.reason}" for c in cards) or empty
        return NOT_MEASURABLE, reasons, False
    weakest = min(WEAKNESS[c.grade] for c in measured)
    grade = next(g for g, w in WEAKNESS.items() if w == weakest)
    at = [c for c in measured if c.grade == grade]
    reason = "; ".join(f"{c.card}: {c.label}" for c in measured)
    return grade, f"weakest card grade ({reason})", any(c.provisional for c in at)


def power_rows(claim: str, comparisons: Sequence[Comparison]) -> list[dict[str, Any]]:
    """Rows of reports/power.csv: one per counted family cell with a t test."""
    rows = []
    for c in comparisons:
        if not (c.in_family and c.counted and math.isnan(c.ratio)):
            continue
        n80 = c.n80
        rows.append({"claim": claim, "card": c.card, "bits": c.bits, "comparison": c.what,
                     "key": c.extra.get("key", c.what), "n": c.n, "delta": round(c.difference - c.null, 4),
                     "sd": None if math.isnan(c.sd) else round(c.sd, 4),
                     "power_now": None if math.isnan(p := power_at(c.difference - c.null, c.sd, c.n))
                     else round(p, 4),
                     "n80": "unattainable" if math.isinf(n80) else (None if math.isnan(n80) else int(n80))})
    return rows
