"""The paper's checkable claims (bench/claims.yaml), each a short function over the tidy frame
of counted runs (bench.report.frame.claims_frame) that returns its comparisons; grading is
shared (bench.report.verdicts)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.errors import UserError
from bench.report.frame import without_keys
from bench.report.semantics import fmt_rho, semantics_of_cell
from bench.report.stats import ALPHA
from bench.report.util import CLAIMS_FILE, method_name, read_yaml
from bench.report.verdicts import (
    CI_SEEDS,
    Checked,
    Comparison,
    compare,
    comparison_line,
    grade,
    regime_of,
    with_holm,
)

REASSIGN_KEYS = ("reassign", "reassign_every", "reassign_warmup")
DEFAULT_PAPER_REGIME = ("ResNet-34 ImageNet-pretrained; Stanford Cars (196 classes) and NABirds (555 "
                        "classes), fine-grained single-label, and MS-COCO (80 labels, multi-label); 300 "
                        "epochs single-label / 30 multi-label")


def _main(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame.variant == ""]


def _cells(rows: pd.DataFrame, *keys: str) -> list[tuple[tuple, pd.DataFrame]]:
    if rows.empty:
        return []
    return [((k,) if not isinstance(k, tuple) else k, g) for k, g in rows.groupby(list(keys), sort=True)]


def _with(rows: pd.DataFrame, predicate: Callable[[dict], bool]) -> pd.DataFrame:
    """The runs whose variant settings satisfy `predicate`."""
    return rows[np.fromiter((predicate(s) for s in rows.settings), dtype=bool, count=len(rows))]


def beats_baselines(frame: pd.DataFrame, p: dict) -> Checked:
    """CRH against each baseline, per table and bit length, paired on common seeds."""
    out = Checked(empty="no table has CRH and a baseline at the same bit length")
    main = _main(frame)
    for (table, bits), crh in _cells(main[main.method == "crh"], "table", "bits"):
        for baseline in p.get("baselines", []):
            other = main[(main.table == table) & (main.bits == bits) & (main.method == baseline)]
            if len(other):
                out.comparisons.append(compare(
                    crh, other, p.get("metric", "mAP"), what=f"CRH vs {method_name(baseline)}",
                    min_seeds=p["min_seeds"], headline=bool(crh.primary.iloc[0]), paper=p.get("paper", "")))
    gains = [c.relative for c in out.comparisons if c.counted and not math.isnan(c.relative)]
    if gains:
        out.extra = f"largest relative gain {max(gains):+.1f} % (paper: up to +6.6 %)"
    return out


def reassignment_gain(frame: pd.DataFrame, p: dict) -> Checked:
    """CRH with its default reassignment against reassign=never, all else equal."""
    out = Checked(empty="no CRH runs with the default reassignment and with reassign=never, all else equal")
    crh = frame[frame.method == "crh"].assign(
        context=lambda f: [without_keys(s, REASSIGN_KEYS) for s in f.settings])
    default = _with(crh, lambda s: not any(k in s for k in REASSIGN_KEYS))
    never = _with(crh, lambda s: s.get("reassign") == "never")
    for (table, bits, context), off in _cells(never, "table", "bits", "context"):
        on = default[(default.table == table) & (default.bits == bits) & (default.context == context)]
        if len(on):
            what = "reassignment vs never" + ("" if context == "{}" else f" ({context})")
            out.comparisons.append(compare(on, off, p.get("metric", "mAP"), what=what,
                                           min_seeds=p["min_seeds"],
                                           headline=bool(on.primary.iloc[0]) and context == "{}",
                                           paper=p.get("paper", ""), relative=False))
    gains = [c.difference for c in out.comparisons if c.counted]
    if gains:
        low, high = p.get("paper_range", [math.nan, math.nan])
        span = f"gain {gains[0]:+.2f}" if len(gains) == 1 else f"gains {min(gains):+.2f} to {max(gains):+.2f}"
        out.extra = f"{span} points (paper {low:+.2f} to {high:+.2f})"
    return out


def multi_head(frame: pd.DataFrame, p: dict) -> Checked:
    """CRH with several heads (the default rule where it gives H > 1) against one head."""
    out = Checked(empty="no CRH runs with one head and with several heads, all else equal")
    crh = frame[frame.method == "crh"].assign(
        context=lambda f: [without_keys(s, ("heads",)) for s in f.settings])
    for (_table, _bits, context), rows in _cells(crh, "table", "bits", "context"):
        single, multi = rows[rows.heads == 1], rows[rows.heads > 1]
        if not len(single) or not len(multi):
            continue
        # The default head count when it is above one, else the multi-head setting with most seeds.
        ranked = sorted(multi.groupby("group"), key=lambda kv: ("heads" in kv[1].settings.iloc[0],
                                                                -len(kv[1]), kv[1].heads.iloc[0]))
        chosen = ranked[0][1]
        what = f"H={int(chosen.heads.iloc[0])} vs H=1" + ("" if context == "{}" else f" ({context})")
        out.comparisons.append(compare(chosen, single, p.get("metric", "mAP"), what=what,
                                       min_seeds=p["min_seeds"], paper=p.get("paper", ""), relative=False,
                                       headline=bool(chosen.primary.iloc[0]) and context == "{}"))
    return out


def center_semantics(frame: pd.DataFrame, p: dict) -> Checked:
    """Spearman correlation of CRH's center similarity with an independent class similarity,
    tested against random center-to-class assignments (permutation test); contrasts listed."""
    out = Checked(empty="no CRH cell with stored centers and an independent class similarity")
    main = _main(frame)
    for (table, bits), crh in _cells(main[main.method == "crh"], "table", "bits"):
        in_table = frame[frame.table == table]
        cell = semantics_of_cell(crh, in_table, "CRH")
        if cell.result is None:
            out.notes.append(f"{table} · {bits} bits: CRH centers not testable: {cell.note}")
            continue
        result, stat = cell.result, cell.stat
        failed = sorted(set(crh.failed_seeds.iloc[0]))
        low = high = math.nan
        if stat.n >= 2:
            shift = stat.mean - result.null_mean
            low, high = shift - stat.half_width, shift + stat.half_width
        counted = stat.n >= p["min_seeds"] and not failed
        note = "" if counted else (f"seed(s) {failed} failed: not counted" if failed
                                   else f"{stat.n} run(s): not counted (needs {p['min_seeds']})")
        out.comparisons.append(Comparison(
            f"{table} · {bits} bits", "CRH centers vs random assignment", str(crh.card.iloc[0]), int(bits),
            result.n, cell.seeds, result.observed, result.null_mean, result.observed - result.null_mean,
            low, high, CI_SEEDS + f"; permutation p over {result.permutations} assignments", result.p,
            bool(crh.primary.iloc[0]), counted, note, p.get("paper", ""), "Spearman ρ",
            regime=regime_of(crh)))
        out.notes.append(f"{table} · {bits} bits: class similarity from {cell.source_text()}")
        for method, label in (("csq", "CSQ"), ("shc", "SHC")):
            rows = main[(main.table == table) & (main.bits == bits) & (main.method == method)]
            if len(rows):
                out.notes.append(f"{table} · {bits} bits: contrast (not counted), {label} ρ = "
                                 f"{fmt_rho(semantics_of_cell(rows, in_table, label))}")
    return out


def two_stage_cost(frame: pd.DataFrame, p: dict) -> Checked:
    """Training seconds (set-up + epochs + hooks) of SHC against CRH, paired on seeds."""
    two = p.get("two_stage", "shc")
    out = Checked(empty=f"no table has both {method_name(two)} and CRH at the same bit length")
    main = _main(frame)
    for (table, bits), crh in _cells(main[main.method == "crh"], "table", "bits"):
        other = main[(main.table == table) & (main.bits == bits) & (main.method == two)]
        if len(other):
            out.comparisons.append(compare(other, crh, "cost", what=f"{method_name(two)} vs CRH seconds",
                                           min_seeds=p["min_seeds"], headline=bool(crh.primary.iloc[0]),
                                           paper=p.get("paper", ""), unit="s"))
    ratios = [1 + c.relative / 100 for c in out.comparisons if c.counted and not math.isnan(c.relative)]
    if ratios:
        out.extra = f"cost ratio x{min(ratios):.2f} to x{max(ratios):.2f}; wall time depends on the machine"
    return out


CHECKS: dict[str, Callable[[pd.DataFrame, dict], Checked]] = {
    "beats_baselines": beats_baselines,
    "reassignment_gain": reassignment_gain,
    "multi_head": multi_head,
    "center_semantics": center_semantics,
    "two_stage_cost": two_stage_cost,
}


@dataclass(frozen=True)
class ClaimResult:
    id: str
    claim: str
    source: str
    how: str
    verdict: str
    summary: str
    comparisons: tuple[Comparison, ...]
    notes: tuple[str, ...]
    regime: tuple[str, ...]
    paper_regime: str
    by_card: tuple[tuple[str, str, str], ...] = ()  # (card, grade, reason): the same rule per card

    @property
    def evidence(self) -> tuple[str, ...]:
        return tuple(comparison_line(c) for c in self.comparisons) + self.notes

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "claim": self.claim, "verdict": self.verdict, "summary": self.summary,
                "source": self.source, "alpha": ALPHA,
                "correction": "Holm over the claim's counted comparisons",
                "comparisons": [c.to_dict() for c in self.comparisons], "notes": list(self.notes),
                "regime": {"ours": list(self.regime), "paper": self.paper_regime},
                "by_card": {card: {"verdict": verdict, "summary": summary}
                            for card, verdict, summary in self.by_card}}


def evaluate_claims(frame: pd.DataFrame, claims: Sequence[dict]) -> list[ClaimResult]:
    results = []
    measured_cards = set(frame["card"]) if not frame.empty else set()
    for claim in claims:
        params = {"min_seeds": 2, "headline_min_seeds": 5, **dict(claim.get("params") or {})}
        check = CHECKS.get(str(claim.get("check")))
        checked = (check(frame, params) if check is not None
                   else Checked(empty=f"unknown check '{claim.get('check')}'"))
        comparisons = with_holm(checked.comparisons)
        empty = "no complete run of the current code" if frame.empty else checked.empty
        verdict, summary = grade(comparisons, int(params["headline_min_seeds"]), empty)
        if checked.extra and comparisons:
            summary += f"; {checked.extra}"
        counted = [c for c in comparisons if c.counted] or comparisons
        regime = tuple(sorted({r for c in counted for r in c.regime}))
        # The same grade per dataset card, on that card's comparisons (p-values keep the
        # claim-wide Holm adjustment, so a card's grade is never looser than the claim's rule).
        cards = sorted(measured_cards | {c.card for c in comparisons})
        by_card = tuple((card, *grade([c for c in comparisons if c.card == card],
                                      int(params["headline_min_seeds"]), f"nothing to compare on {card}"))
                        for card in cards)
        results.append(ClaimResult(str(claim.get("id")), str(claim.get("claim", "")),
                                   str(claim.get("source", "")),
                                   " ".join(str(claim.get("how", "")).split()), verdict, summary,
                                   tuple(comparisons), tuple(checked.notes), regime,
                                   str(claim.get("paper_regime") or DEFAULT_PAPER_REGIME), by_card))
    return results


def load_claims(path: Path = CLAIMS_FILE) -> list[dict]:
    data = read_yaml(path)
    claims = data.get("claims") if isinstance(data, dict) else None
    if not isinstance(claims, list) or not all(isinstance(c, dict) and "id" in c and "check" in c
                                               for c in claims):
        raise UserError(f"{path}: expected 'claims:' as a list of mappings with 'id' and 'check'")
    unknown = sorted({str(c["check"]) for c in claims} - set(CHECKS))
    if unknown:
        raise UserError(f"{path}: unknown check '{unknown[0]}'; valid checks: {', '.join(sorted(CHECKS))}")
    regime = data.get("paper_regime")
    return [{**c, "paper_regime": c.get("paper_regime", regime)} for c in claims]
