"""Each v3 grade beside the v2 grade it replaces, with one sentence on what changed it.

Verdicts v2 pooled every table of a card into one Holm family per claim and called a claim
"consistent" when every comparison favoured it; v3 grades one family per card (its designated
table) by an intersection-union test (shared/specs/verdicts-v3.md, sections 1 and 3). A
reader who saw a v2 grade needs to know whether a new grade reflects new evidence or a new
rule, so the report keeps the v2 grades (results/grades-v2.json, extracted from the last v2
report) and explains every change from two sources: the claim's rule change (`v3_change` in
bench/claims.yaml) and the counts of what each version graded."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.errors import UserError
from bench.report.claims import ClaimResult
from bench.report.document import Doc
from bench.report.numbers import card_key
from bench.report.util import plural
from bench.report.verdicts import NOT_MEASURABLE

HISTORY_FILE = "grades-v2.json"
SECTION = "Grades v2 → v3"


@dataclass(frozen=True)
class GradeChange:
    """One claim on one card: the v3 grade, the v2 grade, and why they differ (or not)."""

    claim: str
    card: str
    v3: str
    v2: str
    why: str

    @property
    def changed(self) -> bool:
        return self.v3.removesuffix(" (provisional)") != self.v2


def load_history(results_dir: Path) -> dict[str, Any] | None:
    """The v2 grades under results_dir, or None when the file is absent (a results folder of
    one's own has no v2 history); a file that is there but unreadable is an error."""
    path = Path(results_dir) / HISTORY_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        claims = data["claims"]
        for entry in claims.values():
            for card in entry["cards"].values():
                str(card["grade"]), int(card["comparisons"]), int(card["tables"])
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise UserError(f"{HISTORY_FILE}: not a v2 grade file ({error}); expected "
                        "claims.<id>.cards.<card> with grade, comparisons and tables") from None
    return data


def _why(grade_v3: str, family: int, table: str, old: dict[str, Any], rule: str) -> str:
    """A sentence on the change: the rule that differs, then what each version graded."""
    counts = (f"v2 pooled {plural(int(old['comparisons']), 'comparison')} from "
              f"{plural(int(old['tables']), 'table')}; v3 grades ")
    counts += (f"the {plural(family, 'cell')} of {table}" if family else
               "no cell (nothing counted on this card)")
    if grade_v3.removesuffix(" (provisional)") == old["grade"]:
        return f"Same grade. {counts}."
    return f"{rule.rstrip('.')}. {counts}." if rule else f"{counts}."


def grade_changes(verdicts: Sequence[ClaimResult], history: dict[str, Any] | None,
                  claims: Sequence[dict]) -> list[GradeChange]:
    """Every (claim, card) that v2 or v3 measured and v2 graded, in the verdicts' order; empty
    without a history."""
    if not history:
        return []
    rules = {str(c.get("id")): " ".join(str(c.get("v3_change", "")).split()) for c in claims}
    out = []
    for v in verdicts:
        old_claim = history["claims"].get(v.id)
        if not old_claim:
            continue
        by_card = {g.card: g for g in v.by_card}
        for card, old in sorted(old_claim["cards"].items()):
            grade = by_card.get(card)
            label = grade.label if grade is not None else NOT_MEASURABLE
            if label == NOT_MEASURABLE and old["grade"] == NOT_MEASURABLE:
                continue  # measured by neither version: nothing to set side by side
            family = len(grade.family) if grade is not None else 0
            table = grade.table if grade is not None else ""
            out.append(GradeChange(v.id, card, label, str(old["grade"]),
                                   _why(label, family, table, old, rules.get(v.id, ""))))
    return out


def history_section(doc: Doc, changes: Sequence[GradeChange], history: dict[str, Any] | None) -> None:
    """The table of v2 and v3 grades per claim and card (nothing without a history)."""
    if not changes or not history:
        return
    doc.h(2, SECTION)
    changed = sum(c.changed for c in changes)
    doc.p(f"Each grade of verdicts v3 beside the verdicts v2 grade it replaces ({changed} of "
          f"{len(changes)} changed). v2 grades: results/{HISTORY_FILE}, taken from the report at commit "
          f"{history.get('commit', '?')}. v2 pooled every table of a card into one Holm family and "
          "graded 'consistent' when every comparison favoured the claim; v3 grades the card's "
          "designated table alone (see the design above).")
    doc.table(("claim", "card", "v3", "v2", "what changed it"),
              ((c.claim, c.card, f"**{c.v3}**", c.v2, c.why) for c in changes))


def history_numbers(changes: Sequence[GradeChange]) -> dict[str, str]:
    """`claim.<id>.<card>.grade_v2` and `.change` for the README."""
    out: dict[str, str] = {}
    for c in changes:
        base = f"claim.{c.claim}.{card_key(c.card)}"
        out[f"{base}.grade_v2"] = c.v2
        out[f"{base}.change"] = c.why
    return out
