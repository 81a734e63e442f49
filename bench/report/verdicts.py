"""Comparisons of a claim (verdicts v3, shared/specs/verdicts-v3.md; grading in
bench/report/grading.py).

A claim check returns comparisons; each says how far the claim's side is ahead of the other
(difference = claim side - other side) with a 95 % interval, the one-sided p of each
direction against the claim's null value (0, or the paper's lower bound for a magnitude
claim), n and the seeds needed for 80 % power.

A comparison is *counted* when both sides have at least `min_seeds` common seeds and no seed
failed on either side (a diverged run must not drop out silently); the others are listed
with the reason. A one-seed comparison shows a bootstrap interval over queries when the
records hold per-query AP, labelled as such: it measures query noise, not seed noise, and is
never counted."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from bench.report.stats import ALPHA, paired_test, query_bootstrap_ci, seeds_for_power, shifted_test
from bench.report.util import fmt_ci, fmt_p, fmt_signed, per_query_ap, plural

SUPPORTED = "supported"
CONSISTENT = "consistent, not significant"
MIXED = "mixed"
CONTRADICTED = "contradicted"
NOT_MEASURABLE = "not measurable"
GRADES = (SUPPORTED, CONSISTENT, MIXED, CONTRADICTED, NOT_MEASURABLE)

CI_SEEDS = "paired t over seeds"
CI_BOOTSTRAP = "bootstrap over queries (one seed: query noise only)"
NO_PER_QUERY = "one seed, no per-query data: no interval"


@dataclass(frozen=True)
class Comparison:
    """One comparison of a claim: `a` is the claim's side, `b` the other; difference = a - b.
    `null` is the value the claim must exceed (0, or a magnitude claim's lower bound);
    p_for tests H0 difference <= null, p_against H0 difference >= null (one-sided t over
    seeds); p_holm is p_against adjusted by Holm over the card's family (grading.py)."""

    where: str
    what: str
    card: str
    bits: int
    n: int
    seeds: tuple[int, ...]
    a: float
    b: float
    difference: float
    low: float
    high: float
    interval: str
    p: float
    headline: bool
    counted: bool
    note: str = ""
    paper: str = ""
    unit: str = "points"
    relative: float = math.nan          # difference / b in percent (credible baselines only)
    regime: tuple[str, ...] = ()
    p_holm: float = math.nan
    table: str = ""
    defaults: bool = True               # the claim's default settings (no extra context)
    null: float = 0.0
    p_for: float = math.nan
    p_against: float = math.nan
    lcb: float = math.nan               # one-sided 95 % lower bound of the difference
    sd: float = math.nan                # SD of the per-seed differences
    p_above: float = math.nan           # magnitude claims: H0 difference <= upper bound
    ratio: float = math.nan             # work claims: a / b
    in_family: bool = False
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def favours(self) -> bool:
        if not math.isnan(self.ratio):
            return self.ratio > 1
        return self.difference > self.null if self.null else self.difference > 0

    @property
    def significant(self) -> bool:
        """Significant for the claim (one-sided p_for < alpha, no adjustment: IUT)."""
        return not math.isnan(self.p_for) and self.p_for < ALPHA

    @property
    def significant_against(self) -> bool:
        return not math.isnan(self.p_holm) and self.p_holm < ALPHA

    @property
    def n80(self) -> float:
        """Seeds for 80 % power at the observed effect (difference - null) and sd."""
        return seeds_for_power(self.difference - self.null, self.sd)

    def ci_text(self) -> str:
        return fmt_ci(self.low, self.high, signed=True)

    def to_dict(self) -> dict[str, Any]:
        def clean(value: float) -> float | None:
            return None if math.isnan(value) or math.isinf(value) else round(float(value), 6)

        return {"where": self.where, "comparison": self.what, "card": self.card, "bits": self.bits,
                "n": self.n, "seeds": list(self.seeds), "ours_claim_side": clean(self.a),
                "ours_other_side": clean(self.b), "difference": clean(self.difference),
                "ci95": [clean(self.low), clean(self.high)], "interval": self.interval,
                "p_raw": clean(self.p), "p_for": clean(self.p_for), "p_against": clean(self.p_against),
                "p_holm": clean(self.p_holm), "lcb95": clean(self.lcb), "null": self.null,
                "n80": "unattainable" if math.isinf(self.n80) else clean(self.n80), "unit": self.unit,
                "relative_percent": clean(self.relative), "headline": self.headline, "counted": self.counted,
                "in_family": self.in_family, "table": self.table, "favours_claim": bool(self.favours),
                "significant": self.significant, "significant_against_after_holm": self.significant_against,
                "note": self.note, "paper": self.paper,
                **({"work_ratio": clean(self.ratio)} if not math.isnan(self.ratio) else {}),
                **({"p_above_range": clean(self.p_above)} if not math.isnan(self.p_above) else {}),
                **self.extra}


@dataclass
class Checked:
    """What a claim check found: its comparisons, extra evidence lines, and why nothing could
    be measured when that is so. `rule` is "t" (graded by tests over seeds) or "ratio"
    (graded on a deterministic ratio, the cost claim)."""

    comparisons: list[Comparison] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    empty: str = "no complete comparison in the records"
    extra: str = ""  # one clause for the summary (e.g. the largest gain against the paper's)
    rule: str = "t"
    details: dict[str, Any] = field(default_factory=dict)


def regime_of(rows: pd.DataFrame) -> tuple[str, ...]:
    """One line per dataset card: classes, labels, backbone, start, budgets and protocols."""
    out = []
    for card, runs in rows.groupby("card", sort=True):
        first = runs.iloc[0]
        kind = "multi-label" if first.multi_label else "single-label"
        backbones = "/".join(sorted(set(runs.backbone)))
        start = "/".join(sorted({"ImageNet-pretrained" if p else "from scratch" for p in runs.pretrained}))
        epochs = "/".join(str(e) for e in sorted(set(runs.epochs)))
        protocols = "/".join(sorted(set(runs.protocol)))
        out.append(f"{card}: {first.classes} classes, {kind}; {backbones} {start}; {epochs} epochs; "
                   f"{protocols} protocol")
    return tuple(out)


def compare(a: pd.DataFrame, b: pd.DataFrame, column: str, *, what: str, min_seeds: int, headline: bool,
            paper: str = "", unit: str = "points", relative: bool = True, null: float = 0.0,
            upper: float = math.nan, defaults: bool = True) -> Comparison:
    """Pair the runs of two groups on their common seeds and compare `column` (a - b) against
    `null` (and, for a magnitude claim, against `upper`)."""
    first_a, first_b = a.iloc[0], b.iloc[0]
    where = f"{first_a.table} · {first_a.bits} bits"
    seeds = tuple(sorted(set(a.seed) & set(b.seed)))
    failed = sorted((set(first_a.failed_seeds) & set(b.seed)) | (set(first_b.failed_seeds) & set(a.seed)))
    va, vb = dict(zip(a.seed, a[column], strict=True)), dict(zip(b.seed, b[column], strict=True))
    test = paired_test({s: va[s] for s in seeds}, {s: vb[s] for s in seeds})
    shifted = shifted_test([va[s] - vb[s] for s in seeds], null) if null else test
    mean_a = float(np.mean([va[s] for s in seeds])) if seeds else math.nan
    mean_b = float(np.mean([vb[s] for s in seeds])) if seeds else math.nan
    low, high, interval = test.low, test.high, CI_SEEDS
    if len(seeds) == 1:
        low, high, interval = _query_bootstrap(a, b, seeds[0], column, where + what)
    if failed:
        counted, note = False, f"not counted: seed(s) {', '.join(map(str, failed))} failed on one side"
    elif len(seeds) < min_seeds:
        counted, note = False, f"not counted: {plural(len(seeds), 'common seed')}, needs {min_seeds}"
    else:
        counted, note = True, test.note
    diffs = [va[s] - vb[s] for s in seeds]
    above = shifted_test(diffs, upper).p_greater if not math.isnan(upper) else math.nan
    diff = mean_a - mean_b
    rel = diff / mean_b * 100 if relative and mean_b else math.nan
    return Comparison(where, what, str(first_a.card), int(first_a.bits), len(seeds), seeds, mean_a, mean_b,
                      diff, low, high, interval, test.p, headline, counted, note, paper, unit, rel,
                      regime_of(pd.concat([a, b])), table=str(first_a.table), defaults=defaults, null=null,
                      p_for=shifted.p_greater, p_against=shifted.p_less, lcb=shifted.lcb, sd=test.sd,
                      p_above=above)


def _query_bootstrap(a: pd.DataFrame, b: pd.DataFrame, seed: int, column: str, label: str
                     ) -> tuple[float, float, str]:
    """One common seed: a paired bootstrap over queries of the per-query AP difference."""
    if column not in ("mAP",):
        return math.nan, math.nan, "one seed: no interval"
    ra = a[a.seed == seed].iloc[0].record
    rb = b[b.seed == seed].iloc[0].record
    qa, qb = per_query_ap(ra), per_query_ap(rb)
    if qa is None or qb is None or len(qa) != len(qb):
        return math.nan, math.nan, NO_PER_QUERY
    low, high = query_bootstrap_ci((qa - qb) * 100, label)
    return low, high, CI_BOOTSTRAP


def _digits(c: Comparison) -> int:
    return 3 if c.unit == "Spearman ρ" else 2


def difference_text(c: Comparison) -> str:
    """"+1.89 [-1.13, +4.92] (+2.4 %)": the difference, its 95 % interval (marked † when it is a
    bootstrap over queries) or why there is none, and the relative difference."""
    if not math.isnan(c.ratio):
        return f"x{c.ratio:.3f}"
    digits = _digits(c)
    text = fmt_signed(c.difference, digits)
    if not math.isnan(c.low):
        text += " " + fmt_ci(c.low, c.high, digits, signed=True) + ("†" if c.interval == CI_BOOTSTRAP else "")
    elif c.n == 1:
        text += " (" + (c.interval if c.interval != CI_SEEDS else "one seed: no interval") + ")"
    if not math.isnan(c.relative):
        text += f" ({c.relative:+.1f} %)"
    return text


def n80_text(value: float) -> str:
    """Seeds for 80 % power as shown beside a grade."""
    if math.isnan(value):
        return "n/a"
    return "unattainable (estimate against the claim)" if math.isinf(value) else f"{int(value)}"


def comparison_line(c: Comparison) -> str:
    """One evidence line: where, what, the two sides, the difference with its interval and p."""
    digits = _digits(c)
    sides = f"{c.a:.{digits}f} vs {c.b:.{digits}f}" if not math.isnan(c.a) else "n/a"
    if not math.isnan(c.ratio):
        return f"{c.where}: {c.what} {sides} {c.unit}: ratio x{c.ratio:.3f}"
    interval = f"95 % CI {fmt_ci(c.low, c.high, digits, signed=True)} ({c.interval})"
    family = "family member; " if c.in_family else "also measured (not graded); "
    status = "" if c.counted else f" — {c.note}"
    null = f" against {c.null:+.2f}" if c.null else ""
    return (f"{c.where}: {c.what} {sides}: {fmt_signed(c.difference, digits)} {c.unit}, {interval}; "
            f"{family}one-sided p{null} for={fmt_p(c.p_for)}, against={fmt_p(c.p_against)}, "
            f"Holm p against={fmt_p(c.p_holm)}, n={c.n}, seeds for 80 % power={n80_text(c.n80)}{status}")
