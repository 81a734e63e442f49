"""The numbers the README quotes, as the report computes them (reports/numbers.json), and the
seeds-for-power table (reports/power.csv).

README.md is rendered from docs/README.template.md (and each docs/<page>.md from
docs/templates/<page>.md) by `python -m bench readme`, which fills each `{{key}}` from
numbers.json: a hand-typed number cannot drift from the records. Values
are strings formatted as the README shows them."""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Sequence
from typing import Any

from bench.report.analysis import Analysis, MainTable
from bench.report.claims import CARD_SHORT, ClaimResult
from bench.report.grading import power_rows
from bench.report.groups import Cell, Scope
from bench.report.ranking import rankings
from bench.report.stats import ALPHA, Stat, equivalence_test, holm_adjusted, paired_test
from bench.report.tables import chance_value, shown_cell
from bench.report.unsupervised import supervised_reference
from bench.report.util import (
    FLOOR_METHOD,
    fmt_p,
    get,
    method_name,
    metric_points,
    num,
    on_gpu,
    precision_metric,
)
from bench.report.variants import variant_numbers
from bench.runs.spec import PER_SEED

EQUIVALENCE_MARGIN = 0.5  # mAP points (spec section 4: the CI gate's floor, under a third of 1.76)
POWER_COLUMNS = ("claim", "card", "bits", "comparison", "key", "n", "delta", "sd", "power_now", "n80")


def card_key(card: str) -> str:
    return CARD_SHORT.get(card, re.sub(r"[^a-z0-9]+", "-", card.lower()).strip("-"))


def table_tag(analysis: Analysis, table: MainTable) -> str:
    """"" for a card's primary table, else its setting as a slug (e.g. harmonised-epochs-60)."""
    return scope_tag(analysis, table.scope)


def scope_tag(analysis: Analysis, scope: Scope) -> str:
    """table_tag for any scope, one with no main table too (an ablation-only scope)."""
    if analysis.is_primary(scope):
        return ""
    return _setting_slug(analysis.scope_label(scope).split(" · ", 1)[-1]) + "."


PER_SEED_LABEL = f"split={PER_SEED}"  # how Scope.describe names a table whose seeds each have a split


def _setting_slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", label.lower().replace(" protocol", "")).strip("-")


def _method_key(method: str) -> str:
    return "floor" if method == FLOOR_METHOD else method


def _signed(value: float, digits: int = 2) -> str:
    return "n/a" if math.isnan(value) else f"{value:+.{digits}f}"


def _plain(value: float, digits: int = 2) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def _unsupervised_tag(analysis: Analysis, table: MainTable) -> str:
    """"unsupervised." for a card's one unsupervised table; with several, their settings too."""
    same_card = [s for s in analysis.unsupervised if s.dataset == table.scope.dataset]
    return "unsupervised." if len(same_card) == 1 else "unsupervised." + table_tag(analysis, table)


def table_numbers(analysis: Analysis) -> dict[str, str]:
    """`table.<card>.[<setting>.]<method>.<bits>` = "mean ± sd (n)" of every complete cell,
    `.mean` the mean alone, `.p_at_k` the card's precision@k where it has one, and `chance` per
    bit length; the unsupervised regime's tables under `table.<card>.unsupervised.`."""
    out: dict[str, str] = {}
    tables = [(t, f"table.{card_key(s.dataset)}.{table_tag(analysis, t)}", True)
              for s, t in analysis.main.items()]
    tables += [(t, f"table.{card_key(s.dataset)}.{_unsupervised_tag(analysis, t)}", False)
               for s, t in analysis.unsupervised.items()]
    for table, prefix, supervised in tables:
        precision = precision_metric(table.records())
        for method, bits in table.cells:  # an added row's cell on fewer seeds shows its n
            if (cell := shown_cell(table, method, bits)) is None:
                continue
            stat: Stat = cell.stat(metric_points("mAP"))
            key = f"{prefix}{_method_key(method)}.{bits}"
            out[key] = stat.cell_text()
            out[key + ".mean"] = _plain(stat.mean)
            if precision is not None:
                out[key + ".p_at_k"] = cell.stat(metric_points(precision[0])).cell_text()
        listed = [*table.methods, *(m for m in _table_methods(table.scope.dataset) if supervised
                                    and m not in table.methods)]
        for method in listed:  # cells without complete records (or a row the table lacks) say so
            for bits in table.bits:
                key = f"{prefix}{_method_key(method)}.{bits}"
                if key not in out:
                    cell = table.cell(method, bits)
                    out[key] = out[key + ".mean"] = "not run" if cell is None else "incomplete"
                    if precision is not None:
                        out[key + ".p_at_k"] = out[key]
        if supervised:
            out.update(variant_numbers(analysis, table, prefix))
        counted = [r for cell in table.cells.values() if cell.complete for r in cell.records()]
        out[f"{prefix}runs"] = str(len(counted))
        seconds = [num(get(r, "timings", "total")) for r in counted]
        out[f"{prefix}run_hours"] = _plain(sum(s for s in seconds if not math.isnan(s)) / 3600, 1)
        for bits in table.bits:
            means = [(table.complete(m, bits).stat(metric_points("mAP")).mean, m) for m in table.methods
                     if m != FLOOR_METHOD and table.complete(m, bits) is not None]
            if means:
                out[f"{prefix}best.{bits}"] = method_name(max(means)[1])
            value = chance_value(table, bits, "mAP")
            if not math.isnan(value):
                out[f"{prefix}chance.{bits}"] = _plain(value)
            if precision is not None and not math.isnan(value := chance_value(table, bits, precision[0])):
                out[f"{prefix}chance.{bits}.p_at_k"] = _plain(value)
            if not supervised:  # what labels buy: the best of the card's supervised primary table
                out[f"{prefix}reference.{bits}"] = supervised_reference(analysis, table, bits)
                if precision is not None:
                    out[f"{prefix}reference.{bits}.p_at_k"] = supervised_reference(analysis, table, bits,
                                                                                  precision[0])
    return out


def _table_methods(dataset: str) -> list[str]:
    """The rows the card's primary table lists (its experiment's methods), so that a row with
    no current records still has keys ("not run") instead of breaking the README."""
    from bench.data.loading import load_card
    from bench.errors import UserError
    from bench.sweeps.experiments import load_experiment

    try:
        card = load_card(dataset)
        return list(load_experiment(card.table).methods) if card.table else []
    except UserError:
        return []


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower().replace("*", "")).strip("-")


def ablation_numbers(analysis: Analysis) -> dict[str, str]:
    """`ablation.<card>.[<setting>.]<dimension>.<setting>[.<context>].<bits>` = "mean ± sd" of
    every CRH ablation point, plus a TOST phrase for each point against the dimension's
    default (`.vs_default`, section 4: a phrase of no difference only where TOST passes)."""
    out: dict[str, str] = {}
    for scope, ablations in analysis.crh.items():
        tag = scope_tag(analysis, scope)
        for dim, panels in ablations.panels.items():
            for panel in panels:
                context = f".{_slug(panel.context)}" if panel.context else ""
                default = next((pt for pt in panel.points if pt.is_default), None)
                never = next((pt for pt in panel.points if pt.label.rstrip("*") == "never"), None)
                for point in panel.points:
                    stat = point.cell.stat(metric_points("mAP"))
                    key = (f"ablation.{card_key(scope.dataset)}.{tag}{_slug(dim)}.{_slug(point.label)}"
                           f"{context}.{panel.bits}")
                    out[key] = f"{stat.mean:.2f} ± {stat.std:.2f}" if stat.n > 1 else f"{stat.mean:.2f}"
                    out[key + ".mean"] = _plain(stat.mean)
                    if default is not None and point is not default:
                        out[key + ".vs_default"] = _tost_phrase(point.cell, default.cell)
                    if never is not None and point is not never:
                        out[key + ".vs_never"] = _tost_phrase(point.cell, never.cell)
    return out


def _tost_phrase(cell: Cell, default: Cell) -> str:
    """"level within ±0.5 points (TOST p 0.004, n=3)" when the equivalence test passes; the
    signed difference when a paired t finds one; else "no significant difference (n=3)"."""
    values, base = cell.group.runs, default.group.runs
    seeds = sorted(set(cell.used) & set(default.used))
    a = [metric_points("mAP")(values[s]) for s in seeds]
    b = [metric_points("mAP")(base[s]) for s in seeds]
    result = equivalence_test(a, b, EQUIVALENCE_MARGIN)
    if result.shown:
        return (f"level within ±{EQUIVALENCE_MARGIN} points (TOST p {fmt_p(result.p)}, "
                f"n={result.n})")
    test = paired_test(dict(enumerate(a)), dict(enumerate(b)))
    if not math.isnan(test.p) and test.p < ALPHA:
        return f"{test.mean_diff:+.2f} points (p {fmt_p(test.p)}, n={test.n})"
    return f"no significant difference (n={result.n})"


NONINFERIORITY_MARGIN = 0.5  # mAP points: the CI gate's floor, under a third of the paper's smallest effect


def bit_lengths_in_words(bits: Any) -> str:
    """Distinct bit lengths in ascending order as prose: "16 bits", "16 and 32 bits",
    "16, 32 and 64 bits", or "no length"."""
    lengths = [str(b) for b in sorted(set(bits))]
    if not lengths:
        return "no length"
    listed = lengths[0] if len(lengths) == 1 else ", ".join(lengths[:-1]) + " and " + lengths[-1]
    return f"{listed} bits"


def noninferiority_p(c: Any) -> float:
    """One-sided p of H0: mean paired difference <= -margin (CRH worse than the rival by at
    least 0.5 points), from the cell's mean, seed SD and n: ttest_1samp(d, -0.5) in closed form."""
    from scipy import stats

    if c.n < 2 or not math.isfinite(c.sd) or c.sd <= 0:
        return math.nan
    t = (c.difference + NONINFERIORITY_MARGIN) / (c.sd / math.sqrt(c.n))
    return float(stats.t.sf(t, c.n - 1))


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
            family = [c for c in v.comparisons if c.card == g.card and c.in_family and c.counted]
            # Unadjusted one-sided tests are the IUT's own decisions for the conjunction; how
            # many cells stand one by one under family-wise control is the Holm count.
            out[f"{card}.n_significant"] = str(sum(c.significant for c in family))
            holm_for = holm_adjusted([c.p_for for c in family])
            out[f"{card}.n_significant_holm"] = str(sum(p < ALPHA for p in holm_for if not math.isnan(p)))
            out[f"{card}.n_against_holm"] = str(sum(c.significant_against for c in family))
            # The lengths in words, so that a sentence naming them is generated, not typed.
            out[f"{card}.against_holm_bits"] = bit_lengths_in_words(
                c.bits for c in family if c.significant_against)
            if v.id == "crh-beats-baselines" and family:
                # Non-inferiority at the 0.5-point margin (verdicts-v3 section 4): reported, never
                # a grade; Holm over the family.
                adjusted = holm_adjusted([noninferiority_p(c) for c in family])
                out[f"{card}.n_noninferior_holm"] = str(sum(p < ALPHA for p in adjusted if not math.isnan(p)))
            out[f"{card}.n_favour"] = str(sum(c.favours for c in family))
            out[f"{card}.n_cells"] = str(len(family))
            out[f"{card}.n"] = "/".join(map(str, g.n)) or "0"
        for c in v.comparisons:
            if c.in_family:
                tag = ""
            elif PER_SEED_LABEL in c.table:
                # Reproduction v3's per-seed tables, quoted while their card still declares the
                # v2 table: keyed by their setting as table_tag keys their cells.
                tag = _setting_slug(c.table.split(" · ", 1)[-1]) + "."
            else:
                continue
            key = f"cmp.{v.id}.{card_key(c.card)}.{tag}{c.extra.get('key', 'cell')}.{c.bits}"
            digits = 3 if c.unit == "Spearman ρ" else 2
            if not math.isnan(c.ratio):
                out[f"{key}.ratio"] = f"{c.ratio:.3f}"
                for name, share in c.extra.get("shares", {}).items():
                    out[f"{key}.share.{name}"] = f"{share:.2f}"
                continue
            out[f"{key}.diff"] = _signed(c.difference, digits)
            out[f"{key}.low"] = _signed(c.low, digits)
            out[f"{key}.high"] = _signed(c.high, digits)
            out[f"{key}.a"] = _plain(c.a, digits)
            out[f"{key}.p_for"] = fmt_p(c.p_for)
            out[f"{key}.p_holm"] = fmt_p(c.p_holm)
    return out


def environment_numbers(analysis: Analysis) -> dict[str, str]:
    """`env.<cpu|cuda>.runs|python|torch`: what the counted runs ran on, so the README names
    the versions of a lent machine's image from its records, not from memory (several
    versions are joined by " / "); `env.cpu.models`: each CPU and instruction set with its
    counted runs."""
    by_kind: dict[str, list[dict]] = {}
    for record in analysis.included:
        by_kind.setdefault("cuda" if on_gpu(record) else "cpu", []).append(record)
    out: dict[str, str] = {}
    for kind, records in sorted(by_kind.items()):
        out[f"env.{kind}.runs"] = str(len(records))
        for key in ("python", "torch"):
            out[f"env.{kind}.{key}"] = " / ".join(sorted({str(get(r, "environment", key)) for r in records}))
    cpus: dict[str, int] = {}  # the CPUs the machine here has been, by counted CPU runs
    for record in by_kind.get("cpu", []):
        name = [str(get(record, "environment", key, default="") or "") for key in ("cpu", "cpu_capability")]
        label = f"{name[0] or 'CPU not recorded'} ({name[1]})" if name[1] else (name[0] or "CPU not recorded")
        cpus[label] = cpus.get(label, 0) + 1
    if cpus:
        out["env.cpu.models"] = "; ".join(f"{label}: {count} run{'' if count == 1 else 's'}"
                                          for label, count in sorted(cpus.items()))
    return out


def ranking_numbers(analysis: Analysis) -> dict[str, str]:
    """`rank.<card>.<other table's setting>.<method>.<bits>.here` and `.there`: the method's rank
    with its bootstrap interval ("2 [1–3]") in the card's primary table and in that other tuned
    table at the same budget, over the methods both have (bench.report.ranking)."""
    out: dict[str, str] = {}
    for card in analysis.cards():
        for ranking in rankings(analysis, card):
            prefix = f"rank.{card_key(card)}.{scope_tag(analysis, ranking.other.scope)}"
            for bits, here, there in ranking.columns:
                for method, ranked in here.items():
                    out[f"{prefix}{_method_key(method)}.{bits}.here"] = ranked.text()
                    out[f"{prefix}{_method_key(method)}.{bits}.there"] = there[method].text()
    return out


def report_numbers(analysis: Analysis, verdicts: Sequence[ClaimResult]) -> dict[str, str]:
    """Every key the README template may use, sorted."""
    numbers = {**table_numbers(analysis), **ablation_numbers(analysis), **claim_numbers(verdicts),
               **environment_numbers(analysis), **ranking_numbers(analysis)}
    for v in verdicts:
        for name, value in dict(v.details).get("numbers", {}).items():
            numbers[f"claim.{v.id}.{name}"] = value
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
