"""Graded verdicts (shared/specs/fair-comparison.md, section 5).

A claim check returns comparisons; each says how far the claim's side is ahead of the other
(positive favours the claim) with a 95 % interval, a raw p and n. Holm's correction runs over
the claim's counted comparisons, and the grade follows:

- supported: every counted comparison favours the claim, and every headline comparison is
  significant after Holm (alpha 0.05) with at least `headline_min_seeds` seeds;
- consistent, not significant: every comparison favours the claim, not all headline ones
  are significant (or they rest on too few seeds);
- mixed: comparisons disagree, none significantly against;
- contradicted: at least one comparison significantly against after Holm;
- not measurable: no comparison could be counted.

A comparison is *counted* when both sides have at least `min_seeds` common seeds and no seed
failed on either side (a diverged run must not drop out silently); the others are listed
with the reason. A one-seed comparison shows a bootstrap interval over queries when the
records hold per-query AP, labelled as such: it measures query noise, not seed noise, and is
never counted."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from bench.report.stats import ALPHA, bootstrap_mean_ci, holm, paired_test
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
    """One comparison of a claim: `a` is the claim's side, `b` the other; difference = a - b."""

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
    relative: float = math.nan          # difference / b in percent (where meaningful)
    regime: tuple[str, ...] = ()
    p_holm: float = math.nan

    @property
    def favours(self) -> bool:
        return self.difference > 0

    @property
    def significant(self) -> bool:
        return not math.isnan(self.p_holm) and self.p_holm < ALPHA

    def ci_text(self) -> str:
        return fmt_ci(self.low, self.high, signed=True)

    def to_dict(self) -> dict[str, Any]:
        def clean(value: float) -> float | None:
            return None if math.isnan(value) else round(float(value), 6)

        return {"where": self.where, "comparison": self.what, "card": self.card, "bits": self.bits,
                "n": self.n, "seeds": list(self.seeds), "ours_claim_side": clean(self.a),
                "ours_other_side": clean(self.b), "difference": clean(self.difference),
                "ci95": [clean(self.low), clean(self.high)], "interval": self.interval,
                "p_raw": clean(self.p), "p_holm": clean(self.p_holm), "unit": self.unit,
                "relative_percent": clean(self.relative), "headline": self.headline, "counted": self.counted,
                "favours_claim": bool(self.favours), "significant_after_holm": self.significant,
                "note": self.note, "paper": self.paper}


@dataclass
class Checked:
    """What a claim check found: its comparisons, extra evidence lines, and why nothing could
    be measured when that is so."""

    comparisons: list[Comparison] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    empty: str = "no complete comparison in the records"
    extra: str = ""  # one clause for the summary (e.g. the largest gain against the paper's)


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
            paper: str = "", unit: str = "points", relative: bool = True) -> Comparison:
    """Pair the runs of two groups on their common seeds and compare `column` (a - b)."""
    first_a, first_b = a.iloc[0], b.iloc[0]
    where = f"{first_a.table} · {first_a.bits} bits"
    seeds = tuple(sorted(set(a.seed) & set(b.seed)))
    failed = sorted((set(first_a.failed_seeds) & set(b.seed)) | (set(first_b.failed_seeds) & set(a.seed)))
    va, vb = dict(zip(a.seed, a[column], strict=True)), dict(zip(b.seed, b[column], strict=True))
    test = paired_test({s: va[s] for s in seeds}, {s: vb[s] for s in seeds})
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
    diff = mean_a - mean_b
    rel = diff / mean_b * 100 if relative and mean_b else math.nan
    return Comparison(where, what, str(first_a.card), int(first_a.bits), len(seeds), seeds, mean_a, mean_b,
                      diff, low, high, interval, test.p, headline, counted, note, paper, unit, rel,
                      regime_of(pd.concat([a, b])))


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
    low, high = bootstrap_mean_ci((qa - qb) * 100, label)
    return low, high, CI_BOOTSTRAP


def with_holm(comparisons: Sequence[Comparison]) -> list[Comparison]:
    """Holm over the claim's counted comparisons that have a p-value."""
    family = [c.p if c.counted else math.nan for c in comparisons]
    return [replace(c, p_holm=p) for c, p in zip(comparisons, holm(family), strict=True)]


def _all(count: int) -> str:
    return "the one comparison favours" if count == 1 else f"all {count} comparisons favour"


def grade(comparisons: Sequence[Comparison], headline_min_seeds: int, empty: str) -> tuple[str, str]:
    """(grade, one-line reason) for Holm-adjusted comparisons."""
    counted = [c for c in comparisons if c.counted]
    if not counted:
        if not comparisons:
            return NOT_MEASURABLE, empty
        reasons = sorted({c.note.removeprefix("not counted: ") for c in comparisons})
        return NOT_MEASURABLE, (f"{plural(len(comparisons), 'comparison')} listed, none counted "
                                f"({'; '.join(reasons)})")
    favour = sum(c.favours for c in counted)
    significant = sum(c.significant and c.favours for c in counted)
    sig_text = f"{significant} of {len(counted)} significant after Holm"
    n_text = "n = " + "/".join(map(str, sorted({c.n for c in counted})))
    against = sorted((c for c in counted if c.significant and not c.favours), key=lambda c: c.p_holm)
    if against:
        worst = against[0]
        return CONTRADICTED, (f"{plural(len(against), 'comparison')} significantly against the claim "
                              "after Holm "
                              f"({worst.what}, {worst.where}: {fmt_signed(worst.difference)} {worst.unit}, "
                              f"Holm p={fmt_p(worst.p_holm)}); {favour} of {len(counted)} favour it; "
                              f"{n_text}")
    if favour == len(counted):
        headline = [c for c in counted if c.headline] or counted
        few = [c for c in headline if c.n < headline_min_seeds]
        if all(c.significant for c in headline) and not few:
            return SUPPORTED, (f"{_all(len(counted))} the claim; the {len(headline)} headline one(s) "
                               f"significant after Holm; {n_text}")
        reason = f"{_all(len(counted))} the claim; {sig_text}; {n_text}"
        if all(c.significant for c in headline) and few:
            reason += (f"; significant, but 'supported' needs at least {headline_min_seeds} seeds in the "
                       "headline cells")
        return CONSISTENT, reason
    return MIXED, (f"{favour} of {len(counted)} comparisons favour the claim, {len(counted) - favour} "
                   f"{'does' if len(counted) - favour == 1 else 'do'} not (none significantly against); "
                   f"{sig_text}; {n_text}")


def difference_text(c: Comparison) -> str:
    """"+1.89 [-1.13, +4.92] (+2.4 %)": the difference, its 95 % interval (marked † when it is a
    bootstrap over queries) or why there is none, and the relative difference."""
    digits = 3 if c.unit == "Spearman ρ" else 2
    text = fmt_signed(c.difference, digits)
    if not math.isnan(c.low):
        text += " " + fmt_ci(c.low, c.high, digits, signed=True) + ("†" if c.interval == CI_BOOTSTRAP else "")
    elif c.n == 1:
        text += " (" + (c.interval if c.interval != CI_SEEDS else "one seed: no interval") + ")"
    if not math.isnan(c.relative):
        text += f" ({c.relative:+.1f} %)"
    return text


def comparison_line(c: Comparison) -> str:
    """One evidence line: where, what, the two sides, the difference with its interval and p."""
    digits = 3 if c.unit == "Spearman ρ" else 2
    sides = f"{c.a:.{digits}f} vs {c.b:.{digits}f}" if not math.isnan(c.a) else "n/a"
    interval = f"95 % CI {fmt_ci(c.low, c.high, digits, signed=True)} ({c.interval})"
    head = "headline; " if c.headline else ""
    status = "" if c.counted else f" — {c.note}"
    return (f"{c.where}: {c.what} {sides}: {fmt_signed(c.difference, digits)} {c.unit}, {interval}; "
            f"{head}p={fmt_p(c.p)}, Holm p={fmt_p(c.p_holm)}, n={c.n}{status}")
