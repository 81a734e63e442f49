"""The paper's checkable claims (bench/claims.yaml), each a short function over the tidy frame
of counted runs (bench.report.frame.claims_frame) that returns its comparisons; grading is
shared (bench.report.grading, verdicts v3)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.data.cards import read_yaml
from bench.errors import UserError
from bench.report.frame import without_keys
from bench.report.grading import CardGrade, grade_card, overall, with_families
from bench.report.semantics import fmt_rho, semantics_of_cell
from bench.report.stats import ALPHA
from bench.report.timing import timing_details, timing_numbers
from bench.report.util import CLAIMS_FILE, FLOOR_METHOD, method_name
from bench.report.verdicts import (
    Checked,
    Comparison,
    compare,
    comparison_line,
    regime_of,
)
from bench.runs.spec import PER_SEED, split_of
from bench.training.work import record_work

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
    metric = p.get("metric", "mAP")
    for (table, bits), crh in _cells(main[main.method == "crh"], "table", "bits"):
        floor = main[(main.table == table) & (main.bits == bits) & (main.method == FLOOR_METHOD)]
        floor_mean = float(floor[metric].mean()) if len(floor) else math.nan
        for baseline in p.get("baselines", []):
            other = main[(main.table == table) & (main.bits == bits) & (main.method == baseline)]
            if len(other):
                # The relative gain only against a credible competitor: above the floor.
                credible = not math.isnan(floor_mean) and float(other[metric].mean()) > floor_mean
                c = compare(crh, other, metric, what=f"CRH vs {method_name(baseline)}",
                            min_seeds=p["min_seeds"], headline=bool(crh.primary.iloc[0]),
                            paper=p.get("paper", ""), relative=credible)
                c.extra["key"] = baseline
                out.comparisons.append(c)
    gains = [c.relative for c in out.comparisons if c.counted and not math.isnan(c.relative)]
    if gains:
        out.extra = (f"largest relative gain over a baseline above the classify-then-hash floor "
                     f"{max(gains):+.1f} % (paper: up to +6.6 %)")
    return out


def reassignment_gain(frame: pd.DataFrame, p: dict) -> Checked:
    """CRH with its default reassignment against reassign=never, all else equal."""
    out = Checked(empty="no CRH runs with the default reassignment and with reassign=never, all else equal")
    crh = frame[frame.method == "crh"].assign(
        context=lambda f: [without_keys(s, REASSIGN_KEYS) for s in f.settings])
    default = _with(crh, lambda s: not any(k in s for k in REASSIGN_KEYS))
    never = _with(crh, lambda s: s.get("reassign") == "never")
    low, high = (float(v) for v in p.get("paper_range", [0.0, math.nan]))
    for (table, bits, context), off in _cells(never, "table", "bits", "context"):
        on = default[(default.table == table) & (default.bits == bits) & (default.context == context)]
        if len(on):
            what = "reassignment vs never" + ("" if context == "{}" else f" ({context})")
            out.comparisons.append(compare(on, off, p.get("metric", "mAP"), what=what,
                                           min_seeds=p["min_seeds"],
                                           headline=bool(on.primary.iloc[0]) and context == "{}",
                                           paper=p.get("paper", ""), relative=False, null=low, upper=high,
                                           defaults=context == "{}"))
    gains = [c.difference for c in out.comparisons if c.counted]
    if gains:
        span = f"gain {gains[0]:+.2f}" if len(gains) == 1 else f"gains {min(gains):+.2f} to {max(gains):+.2f}"
        out.extra = f"{span} points (paper {low:+.2f} to {high:+.2f})"
    return out


def range_position(c: Comparison, high: float) -> str:
    """Where a magnitude estimate sits against the paper's range [null, high]: below, inside,
    or above (above only when H0 gain <= high is rejected)."""
    if c.difference < c.null:
        return "below the paper's range"
    if not math.isnan(c.p_above) and c.p_above < ALPHA:
        return "above the paper's range"
    return "inside the paper's range" if c.difference <= high else "above the paper's range (not significant)"


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
                                       headline=bool(chosen.primary.iloc[0]) and context == "{}",
                                       defaults=context == "{}"))
    return out


def center_semantics(frame: pd.DataFrame, p: dict) -> Checked:
    """Spearman correlation of CRH's center similarity with an independent class similarity,
    graded over seeds: a one-sided ttest_1samp of each run's rho minus its permutation-null
    mean (the per-run Mantel p is shown, not graded); contrasts listed."""
    out = Checked(empty="no CRH cell with stored centers and an independent class similarity")
    main = _main(frame)
    for (table, bits), crh in _cells(main[main.method == "crh"], "table", "bits"):
        in_table = frame[frame.table == table]
        cell = semantics_of_cell(crh, in_table, "CRH")
        if cell.result is None:
            out.notes.append(f"{table} · {bits} bits: CRH centers not testable: {cell.note}")
            continue
        result = cell.result
        test = result.test
        failed = sorted(set(crh.failed_seeds.iloc[0]))
        counted = result.n >= p["min_seeds"] and not failed
        note = "" if counted else (f"seed(s) {failed} failed: not counted" if failed
                                   else f"{result.n} run(s): not counted (needs {p['min_seeds']})")
        run_p = ", ".join(f"{x:.4f}" for x in result.run_p)
        out.comparisons.append(Comparison(
            f"{table} · {bits} bits", "CRH centers vs random assignment", str(crh.card.iloc[0]), int(bits),
            result.n, cell.seeds, result.observed, result.null_mean, test.mean_diff, test.low, test.high,
            f"t over seeds of rho minus its permutation-null mean; per-run Mantel p over "
            f"{result.permutations} assignments: {run_p} (not graded)",
            test.p, bool(crh.primary.iloc[0]), counted, note, p.get("paper", ""), "Spearman ρ",
            regime=regime_of(crh), table=str(table), p_for=test.p_greater, p_against=test.p_less,
            lcb=test.lcb, sd=test.sd, extra={"mantel_p_per_run": [round(x, 6) for x in result.run_p],
                                             "permutations": result.permutations}))
        out.notes.append(f"{table} · {bits} bits: class similarity from {cell.source_text()}")
        card = str(crh.card.iloc[0])
        for method, label in (("csq", "CSQ"), ("shc", "SHC"), ("hclm", "HCLM")):
            rows = main[(main.table == table) & (main.bits == bits) & (main.method == method)]
            if len(rows):
                contrast = semantics_of_cell(rows, in_table, label)
                out.notes.append(f"{table} · {bits} bits: contrast (not counted), {label} ρ = "
                                 f"{fmt_rho(contrast)}")
                if contrast.result is not None and bool(crh.primary.iloc[0]):
                    out.details.setdefault("numbers", {})[f"{_card_short(card)}.{method}.{bits}.rho"] = (
                        f"{contrast.result.observed:.2f}")
    return out


CARD_SHORT = {"fashion-mnist": "FM", "fashion-mnist-multi": "multi", "fashion-mnist-pairs": "pairs"}


def _card_short(card: str) -> str:
    return CARD_SHORT.get(card, card)


def _shares(rows: pd.DataFrame) -> dict[str, float]:
    """Each stage's share of the runs' counted work, in percent."""
    works = [record_work(r) for r in rows.record]
    works = [w for w in works if w is not None and w.get("stages")]
    if not works:
        return {}
    from bench.training.work import stage_flops

    names = sorted({s for w in works for s in w["stages"]})
    return {name: float(np.mean([stage_flops(w["stages"][name]) / w["total_flops"] * 100
                                 for w in works if name in w["stages"]])) for name in names}


def _work(rows: pd.DataFrame) -> float:
    values = [w["total_flops"] for w in (record_work(r) for r in rows.record) if w is not None]
    return float(np.mean(values)) if len(values) == len(rows) and values else math.nan


def two_stage_cost(frame: pd.DataFrame, p: dict) -> Checked:
    """Counted work (network FLOPs per stage plus CPU stages, bench/training/work.py) of SHC against
    CRH per table and bit length; graded on the ratio. Isolated timing (`bench perf cost`) is
    the secondary figure; committed wall times were measured under load and are context."""
    two = p.get("two_stage", "shc")
    out = Checked(empty=f"no table has both {method_name(two)} and CRH at the same bit length", rule="ratio")
    main = _main(frame)
    walls = []
    for (table, bits), crh in _cells(main[main.method == "crh"], "table", "bits"):
        other = main[(main.table == table) & (main.bits == bits) & (main.method == two)]
        if not len(other):
            continue
        w_two, w_crh = _work(other), _work(crh)
        ratio = w_two / w_crh if w_crh else math.nan
        counted = not math.isnan(ratio)
        out.comparisons.append(Comparison(
            f"{table} · {bits} bits", f"{method_name(two)} vs CRH counted work", str(crh.card.iloc[0]),
            int(bits), min(len(other), len(crh)), tuple(sorted(set(other.seed) & set(crh.seed))),
            w_two / 1e12, w_crh / 1e12, (w_two - w_crh) / 1e12, math.nan, math.nan, "counted (no sampling)",
            math.nan, bool(crh.primary.iloc[0]), counted, "" if counted else "not counted: no work count",
            p.get("paper", ""), "TFLOPs", regime=regime_of(pd.concat([other, crh])), table=str(table),
            ratio=ratio, extra={"shares": {**{f"{two}_{k}": v for k, v in _shares(other).items()},
                                           **{f"crh_{k}": v for k, v in _shares(crh).items()}}}))
        walls.append(float(other.cost.mean() / crh.cost.mean()))
    if walls:
        out.notes.append(f"context only: committed wall-time ratios x{min(walls):.2f} to x{max(walls):.2f}, "
                         "measured under load (not graded)")
    timing = p.get("_timing") or timing_details(())
    out.details["timing"] = timing
    out.details["numbers"] = timing_numbers(timing)
    return out


CHECKS: dict[str, Callable[[pd.DataFrame, dict], Checked]] = {
    "beats_baselines": beats_baselines,
    "reassignment_gain": reassignment_gain,
    "multi_head": multi_head,
    "center_semantics": center_semantics,
    "two_stage_cost": two_stage_cost,
}


DESIGN = ("family = claim x card x designated table; one-sided t over seeds; a conjunction graded by the "
          "intersection-union test (IUT p = largest one-sided p of the family); 'contradicted' uses Holm "
          "over the family; other tables are also measured, not graded")
SPLIT_FIXED = "seed (init + data order), split fixed ({split})"
PER_SEED_SPLIT = "seed (init + data order + split)"
MIXED_SPLIT = ("seed (init + data order, and the split in the per-seed tables; "
               "elsewhere split fixed ({split}))")


def replication_unit(frame: pd.DataFrame) -> str:
    """What one seed replicates: the split too where a run drew its split from its seed
    (split_seed: per-seed); when the report holds both kinds of table, it says so, naming the
    fixed splits (a per-seed run's split seed is its seed, not a fixed split)."""
    if frame.empty:
        return SPLIT_FIXED.format(split=0)
    per_seed = [split_of(r["spec"]) == PER_SEED for r in frame.record]
    if all(per_seed):
        return PER_SEED_SPLIT
    fixed = [r for r, own in zip(frame.record, per_seed, strict=True) if not own]
    pairs = {(int(r["spec"].get("seed", 0)), int(r["spec"].get("split_seed", 0))) for r in fixed}
    splits = "/".join(map(str, sorted({s for _, s in pairs})))
    if any(per_seed):
        return MIXED_SPLIT.format(split=splits)
    if all(seed == split for seed, split in pairs) and len({s for _, s in pairs}) > 1:
        return PER_SEED_SPLIT  # records from before split_rule was recorded
    return SPLIT_FIXED.format(split=splits)


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
    by_card: tuple[CardGrade, ...] = ()  # the same rule per card, on the card's family
    provisional: bool = False
    replication: str = SPLIT_FIXED.format(split=0)
    details: tuple[tuple[str, Any], ...] = ()

    @property
    def evidence(self) -> tuple[str, ...]:
        return tuple(comparison_line(c) for c in self.comparisons) + self.notes

    @property
    def label(self) -> str:
        return self.verdict + (" (provisional)" if self.provisional else "")

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "claim": self.claim, "verdict": self.verdict, "summary": self.summary,
                "provisional": self.provisional, "source": self.source, "alpha": ALPHA,
                "design": DESIGN,
                "replication_unit": self.replication,
                "comparisons": [c.to_dict() for c in self.comparisons], "notes": list(self.notes),
                "regime": {"ours": list(self.regime), "paper": self.paper_regime},
                "by_card": {g.card: g.to_dict() for g in self.by_card}, **dict(self.details)}


def evaluate_claims(frame: pd.DataFrame, claims: Sequence[dict],
                    timing: dict[str, Any] | None = None) -> list[ClaimResult]:
    """Every claim graded on `frame`; `timing` (bench.report.timing.timing_details) is shown
    beside the cost claim's counted-work grade."""
    results = []
    measured_cards = set(frame["card"]) if not frame.empty else set()
    unit = replication_unit(frame)
    for claim in claims:
        params = {"min_seeds": 2, **dict(claim.get("params") or {}), "_timing": timing}
        check = CHECKS.get(str(claim.get("check")))
        checked = (check(frame, params) if check is not None
                   else Checked(empty=f"unknown check '{claim.get('check')}'"))
        comparisons = with_families(checked.comparisons)
        empty = "no complete run of the current code" if frame.empty else checked.empty
        cards = sorted(measured_cards | {c.card for c in comparisons})
        by_card = tuple(grade_card(card, [c for c in comparisons if c.card == card], checked.rule,
                                   f"nothing to compare on {card}" if comparisons else empty)
                        for card in cards)
        if claim.get("check") == "reassignment_gain":
            high = float((params.get("paper_range") or [0, math.nan])[1])
            by_card = tuple(_with_range(g, comparisons, high) for g in by_card)
        verdict, summary, provisional = overall(by_card, empty)
        if not comparisons:
            summary = empty
        if checked.extra and comparisons:
            summary += f"; {checked.extra}"
        counted = [c for c in comparisons if c.counted] or comparisons
        regime = tuple(sorted({r for c in counted for r in c.regime}))
        results.append(ClaimResult(str(claim.get("id")), str(claim.get("claim", "")),
                                   str(claim.get("source", "")),
                                   " ".join(str(claim.get("how", "")).split()), verdict, summary,
                                   tuple(comparisons), tuple(checked.notes), regime,
                                   str(claim.get("paper_regime") or DEFAULT_PAPER_REGIME), by_card,
                                   provisional, unit, tuple(sorted(checked.details.items()))))
    return results


def _with_range(grade: CardGrade, comparisons: Sequence[Comparison], high: float) -> CardGrade:
    """A magnitude claim's card reason names where its family's estimates sit."""
    family = [c for c in comparisons if c.card == grade.card and c.in_family and c.counted]
    if not family:
        return grade
    places = sorted({range_position(c, high) for c in family})
    gains = "; ".join(f"{c.bits} bits {c.difference:+.2f} (90 % CI {_ci90_text(c)})"
                      for c in sorted(family, key=lambda c: c.bits))
    return replace(grade, reason=f"{grade.reason}; gains {gains}: {' and '.join(places)}")


def ci90(c: Comparison) -> tuple[float, float]:
    """The two-sided 90 % t-interval of the paired gain: the interval whose ends are the two
    one-sided 5 % tests the range grade makes (below the paper's low end, above its high end)."""
    from scipy import stats

    if c.n < 2 or not math.isfinite(c.sd):
        return math.nan, math.nan
    half = float(stats.t.ppf(0.95, c.n - 1)) * c.sd / math.sqrt(c.n)
    return c.difference - half, c.difference + half


def _ci90_text(c: Comparison) -> str:
    low, high = ci90(c)
    return "n/a" if math.isnan(low) else f"{low:+.2f} to {high:+.2f}"


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
