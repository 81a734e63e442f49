"""The top of the report (verdict table, headline figure) and the main comparison tables, each
with two reference rows set apart from the methods: the classify-then-hash floor and chance.

Cells show the mean over the table's seeds with its 95 % t interval. A one-seed cell shows a
bootstrap interval over queries when the record holds per-query AP (marked †: query noise
only), else says that it has no per-query data."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

from bench.evaluation.chance import chance_from_record, chance_precision_within_radius
from bench.report.analysis import ADDED_ROW_MIN_SEEDS, Analysis, MainTable
from bench.report.claims import ClaimResult, load_claims
from bench.report.document import Doc, FigurePlan
from bench.report.figures import Series, draw_headline
from bench.report.grading import CardGrade
from bench.report.groups import Cell
from bench.report.ranking import ranking_section
from bench.report.stats import query_bootstrap_ci
from bench.report.util import (
    FLOOR_METHOD,
    MAIN_METRICS,
    PRECISION_AT_K,
    REFERENCE_METHODS,
    card_info,
    fmt_p,
    fmt_seeds,
    fmt_signed,
    get,
    method_name,
    metric_points,
    on_gpu,
    per_query_ap,
    plural,
    precision_metric,
    reconstruction_unknowns,
    short,
)
from bench.report.variants import variant_section
from bench.report.verdicts import CI_BOOTSTRAP, NOT_MEASURABLE, difference_text, n80_text

FLOOR_NAME, CHANCE_NAME = "classify-then-hash (floor)", "chance (random codes)"
FLOOR_LABEL, CHANCE_LABEL = f"*{FLOOR_NAME}*", f"*{CHANCE_NAME}*"  # italic in tables
DAGGER = "†"
DAGGER_NOTE = (f"{DAGGER} one seed: 95 % bootstrap interval over queries (query noise only, not seed "
               "noise).")


@functools.cache
def paper_rows() -> frozenset[str]:
    """CRH and the baselines the paper's main claim names (bench/claims.yaml), with the reference
    rows: the rows whose cells need every seed their table expects. Any other row was added after
    the paper's comparison and may be shown on fewer seeds (`MainTable.fewer_seeds`)."""
    baselines = {str(m) for claim in load_claims() if claim["check"] == "beats_baselines"
                 for m in claim.get("params", {}).get("baselines", ())}
    return frozenset({"crh", *baselines, *REFERENCE_METHODS})


def added_row_cell(table: MainTable, method: str, bits: int) -> Cell | None:
    """An added row's cell on the seeds it has, when it is short of its column's but has enough
    (None for the paper's rows, which need every seed, and for a complete cell)."""
    return None if method in paper_rows() else table.fewer_seeds(method, bits)


def shown_cell(table: MainTable, method: str, bits: int) -> Cell | None:
    """The cell a main table shows numbers for: a complete one, or an added row's cell on the
    seeds it has (marked with its n where shown)."""
    return table.complete(method, bits) or added_row_cell(table, method, bits)


def per_query(record: dict, key: str):
    """Per-query values (fractions) of a main metric, when the record stores them."""
    if key == "mAP":
        return per_query_ap(record)
    if key == "mAP_tie_aware":
        values = get(record, "metrics", "per_query_ap_tie_aware")
        if isinstance(values, list) and values:
            import numpy as np

            return np.asarray([math.nan if v is None else float(v) for v in values], dtype=float)
    return None


def interval(cell: Cell, key: str) -> tuple[float, float, float, str]:
    """(mean, low, high, kind) of a complete cell in points; kind "t", "bootstrap" or "none"."""
    stat = cell.stat(metric_points(key))
    if stat.n >= 2:
        return stat.mean, stat.mean - stat.half_width, stat.mean + stat.half_width, "t"
    values = per_query(cell.records()[0], key) if stat.n == 1 else None
    if values is None:
        return stat.mean, math.nan, math.nan, "none"
    low, high = query_bootstrap_ci(values * 100, f"{cell.group.method}|{cell.group.bits}|{key}|{cell.used}")
    return stat.mean, low, high, "bootstrap"


def cell_text(cell: Cell, key: str) -> str:
    mean, low, high, kind = interval(cell, key)
    if math.isnan(mean):
        return "n/a"
    if kind == "t":
        return f"{mean:.2f} [{low:.2f}, {high:.2f}]"
    if kind == "bootstrap":
        return f"{mean:.2f} [{low:.2f}, {high:.2f}]{DAGGER}"
    return f"{mean:.2f} (one seed; no per-query data)" if key.startswith("mAP") else f"{mean:.2f} (one seed)"


def chance_value(table: MainTable, bits: int, key: str) -> float:
    """Chance level in points for a table's query set and database at one bit length."""
    records = sorted((r for (m, b), c in table.cells.items() if b == bits for r in c.group.runs.values()),
                     key=lambda r: str(r.get("run_id")))
    for record in records:
        if key in ("mAP", "mAP_tie_aware"):
            level = chance_from_record(record)
            if level is not None:
                return level.mAP * 100
        elif key == "p_at_r2":
            value = chance_precision_within_radius(record, 2)
            if value is not None:
                return value * 100
        elif key == PRECISION_AT_K:  # random codes rank at random: P@k = the relevant share R_q / N
            curve = get(record, "metrics", "precision_at_radius")
            if curve:
                return float(curve[-1]) * 100
    return math.nan


def chance_how(table: MainTable) -> str:
    for cell in table.cells.values():
        for record in cell.group.runs.values():
            level = chance_from_record(record)
            if level is not None:
                return level.how
    return "not computable from these records"


# ------------------------------------------------------------------------------------------
# Top of the report
# ------------------------------------------------------------------------------------------


def verdict_table(doc: Doc, verdicts: list[ClaimResult]) -> None:
    """One row per claim, one column per card: grade (provisional), IUT p, family size and the
    seeds for 80 % power; the family's table is named under Claims and verdicts."""
    if not verdicts:
        doc.p("No claims are listed in bench/claims.yaml.")
        return
    cards = sorted({g.card for v in verdicts for g in v.by_card})
    rows = []
    for v in verdicts:
        grades = {g.card: g for g in v.by_card}
        rows.append((short(v.claim, 90), f"**{v.label}**",
                     *(_card_cell(grades[c]) if c in grades else "–" for c in cards)))
    doc.table(("claim", "overall", *cards), rows, css="verdicts")


VERDICT_LEGEND = ("Verdict table: per card, grade · IUT p (the largest one-sided p of the card's family) · "
                  "family size · seeds for 80 % power (cost: the work ratio); overall = the weakest card "
                  "grade; \"provisional\" = decisive at fewer than 5 seeds; power per cell in power.csv.")


def _card_cell(g: CardGrade) -> str:
    if g.grade == NOT_MEASURABLE:
        return g.label
    parts = [f"**{g.label}**"]
    if not math.isnan(g.iut_p):
        parts.append(f"IUT p {fmt_p(g.iut_p)}")
    parts.append(plural(len(g.family), "cell"))
    if "work ratio" in g.reason:
        parts.append(g.reason.split(" over ")[0])
    elif not math.isnan(g.n80):
        parts.append(f"80 %: {n80_text(g.n80).split(' (')[0]} seeds" if not math.isinf(g.n80)
                     else "80 %: unattainable")
    return " · ".join(parts)


def table_series(table: MainTable, methods: Sequence[str] | None = None) -> list[Series]:
    """mAP against bits of a table's methods (all, or `methods`), each over its complete cells
    with 95 % intervals, and chance where every bit length has it: the lines of a bits figure."""
    series = []
    for method in table.methods if methods is None else methods:
        points = tuple((bits, *interval(cell, "mAP")[:3]) for bits in table.bits
                       if (cell := table.complete(method, bits)) is not None)
        if points:
            kind = "floor" if method in REFERENCE_METHODS else "method"
            label = FLOOR_NAME if method == FLOOR_METHOD else method_name(method)
            series.append(Series(label, method, kind, points))
    chance = tuple((b, chance_value(table, b, "mAP"), math.nan, math.nan) for b in table.bits)
    if all(not math.isnan(v) for _, v, _, _ in chance):
        series.append(Series(CHANCE_NAME, "chance", "chance", chance))
    return series


def chance_cells(table: MainTable, key: str) -> list[str]:
    """The chance row's cells, one per bit length of the table ("n/a" where not computable)."""
    return ["n/a" if math.isnan(v := chance_value(table, b, key)) else f"{v:.2f}" for b in table.bits]


def headline_figure(doc: Doc, analysis: Analysis) -> None:
    """mAP against bits per method, one panel per dataset card (its primary table)."""
    panels = []
    for card in analysis.cards():
        table = analysis.main[analysis.primary[card]]
        series = table_series(table)
        if any(s.kind == "method" for s in series):
            title = str(card_info(card).get("title") or card)
            setting = analysis.scope_label(table.scope).split(" · ", 1)[1]
            panels.append((f"{title}\n{setting}", tuple(table.bits), tuple(series)))
    if not panels:
        return
    width = min(12.4, 3.9 * len(panels) + 2.3)
    doc.figure(FigurePlan("headline", (width, 3.6), draw_headline(panels), panels),
               "mAP (%) against code length, mean over seeds with 95 % intervals, one panel per dataset "
               "card (its primary table); dashed grey: the classify-then-hash floor; dotted: chance.")


# ------------------------------------------------------------------------------------------
# Main comparison
# ------------------------------------------------------------------------------------------


def _best(table: MainTable, getter: Callable[[dict], float]) -> dict[int, set[str]]:
    best = {}
    for bits in table.bits:
        means = [(table.complete(m, bits).stat(getter).mean, m) for m in table.methods
                 if m not in REFERENCE_METHODS and table.complete(m, bits) is not None]
        means = [(v, m) for v, m in means if not math.isnan(v)]
        if means:
            top = max(v for v, _ in means)
            best[bits] = {m for v, m in means if v == top}
    return best


def _method_cell(table: MainTable, method: str, bits: int, key: str, best: dict[int, set[str]]) -> str:
    cell = table.cell(method, bits)
    if cell is None and (method, bits) in table.only_failed:
        return f"failed (seeds {fmt_seeds(table.only_failed[method, bits])})"
    if cell is None:
        return "not run"
    if (fewer := added_row_cell(table, method, bits)) is not None:
        return f"{cell_text(fewer, key)} (n={len(fewer.expected)})"
    if not cell.complete:
        failed = [x for x in cell.missing if x in cell.group.failed_seeds]
        return (f"incomplete ({len(cell.expected) - len(cell.missing)}/{len(cell.expected)} seeds"
                + (f"; failed: {fmt_seeds(failed)}" if failed else "") + ")")
    text = cell_text(cell, key)
    return f"**{text}**" if method in best.get(bits, ()) else text


def _unknowns(table: MainTable, method: str) -> dict[str, str]:
    """What the method's records in this table name as reconstructed (empty: read from sources)."""
    return reconstruction_unknowns(r for (m, _), c in table.cells.items() if m == method
                                   for r in c.group.runs.values())


def reconstruction_notes(table: MainTable) -> list[str]:
    """One line per reconstructed method of the table, naming what its sources left unread."""
    return [f"{method_name(m)} is a reconstruction (its records say so): {', '.join(unknowns)} not "
            f"read from its paper or code (`python -m bench list settings` says what was assumed)."
            for m in table.methods if (unknowns := _unknowns(table, m))]


def fewer_seeds_notes(table: MainTable) -> list[str]:
    """Names the rows shown on fewer seeds than their column, and why their cells stand apart."""
    rows = sorted({m for (m, b) in table.cells if added_row_cell(table, m, b) is not None})
    if not rows:
        return []
    return [f"{', '.join(method_name(m) for m in rows)}: added after the paper's comparison, "
            f"so {'its' if len(rows) == 1 else 'their'} cells may hold fewer seeds than the column's "
            f"(at least {ADDED_ROW_MIN_SEEDS}, issue 32), marked (n=…): the mean and t interval over "
            "those seeds, its margin over the floor paired on them; such a cell is never bolded, "
            "ranked or graded."]


def device_of(record: dict) -> str:
    """"CPU (<its name>, <the instruction set torch used>)", or "GPU (<its name>)": where a run
    trained, as its record says (float reductions differ with both)."""
    if on_gpu(record):
        return f"GPU ({get(record, 'environment', 'gpu', default='not recorded')})"
    cpu = [get(record, "environment", key, default=None) for key in ("cpu", "cpu_capability")]
    return f"CPU ({', '.join(str(part) for part in cpu if part)})" if any(cpu) else "CPU"


def device_notes(table: MainTable) -> list[str]:
    """Where each bit length's counted runs trained, once any of them trained on a GPU. A GPU
    run is a further sample of its spec, not a copy of the CPU run (another summation order from
    the first step), so docs/protocol.md keeps a bit length's paired comparisons on one device;
    a column that mixes devices is named here, with the methods on each, so it cannot pass
    unseen. So is a column that mixes CPUs (the machine here changes between sittings, and the
    instruction set changes the order of float reductions): also further samples, not copies."""
    by_bits: dict[int, dict[str, set[str]]] = {}
    for method, bits in sorted(table.cells):  # every shown cell, an added row's included
        if (cell := shown_cell(table, method, bits)) is not None:
            for seed in cell.used:
                by_bits.setdefault(bits, {}).setdefault(device_of(cell.group.runs[seed]), set()).add(method)
    any_gpu = any(device.startswith("GPU") for devices in by_bits.values() for device in devices)
    mixed_cpus = any(sum(d.startswith("CPU") for d in devices) > 1 for devices in by_bits.values())
    if not any_gpu and not mixed_cpus:
        return []
    parts = []
    for bits, devices in sorted(by_bits.items()):
        if len(devices) == 1:
            parts.append(f"{bits} bits: {next(iter(devices))}")
        else:
            parts.append(f"{bits} bits: **mixed**, " + "; ".join(
                f"{device} for {', '.join(method_name(m) for m in sorted(methods))}"
                for device, methods in sorted(devices.items())))
    why = ("A bit length's paired comparisons hold when its column ran on one device (docs/protocol.md, "
           "GPU runs)." if any_gpu else "")
    if mixed_cpus:
        why += (" Runs on different CPUs are further samples of their specs as well: the seed still "
                "pairs split, initial weights and data order, and the instruction set moves the last "
                "bits of float sums (docs/protocol.md, CPU runs).")
    return ["Devices of the counted runs: " + " · ".join(parts) + ". " + why.strip()]


def metric_table(doc: Doc, table: MainTable, key: str, title: str, with_margin: bool) -> None:
    """One metric: a row per method, then the floor and chance rows set apart."""
    getter = metric_points(key)
    best = _best(table, getter)
    floor = {b: table.complete(FLOOR_METHOD, b) for b in table.bits}
    header = ["method"]
    for bits in table.bits:
        header.append(f"{bits} bits (n={len(table.expected[bits])})")
        if with_margin:
            header.append(f"{bits}: − floor")
    rows, classes = [], []
    for method in [m for m in table.methods if m not in REFERENCE_METHODS]:
        row = [method_name(method) + (" (reconstruction)" if _unknowns(table, method) else "")]
        for bits in table.bits:
            row.append(_method_cell(table, method, bits, key, best))
            if with_margin:  # paired: over the floor's runs of the same seeds
                cell, base = shown_cell(table, method, bits), floor[bits]
                margin = (cell.stat(getter).mean - Cell(base.group, cell.used).stat(getter).mean
                          if cell is not None and base is not None else math.nan)
                row.append(fmt_signed(margin) if not math.isnan(margin) else "–")
        rows.append(row)
        classes.append("")
    floor_row = [FLOOR_LABEL]
    chance_row = [CHANCE_LABEL]
    for bits in table.bits:
        floor_row.append(_method_cell(table, FLOOR_METHOD, bits, key, {}))
        value = chance_value(table, bits, key)
        chance_row.append("n/a" if math.isnan(value) else f"{value:.2f}")
        if with_margin:
            floor_row.append("—")
            chance_row.append(fmt_signed(value - floor[bits].stat(getter).mean)
                              if floor[bits] is not None and not math.isnan(value) else "–")
    rows += [floor_row, chance_row]
    classes += ["ref", "ref"]
    doc.p(f"**{title}**")
    doc.table(header, rows, classes)


def main_table(doc: Doc, analysis: Analysis, table: MainTable, published: list[dict],
               metrics: tuple[tuple[str, str], ...] = MAIN_METRICS) -> None:
    scope = table.scope
    topk = sorted({str(get(r, "metrics", "topk", default="?")) for r in table.records()})
    seed_sets = sorted(set(table.expected.values()))
    seeds_text = (fmt_seeds(seed_sets[0]) if len(seed_sets) == 1 else
                  "; ".join(f"{fmt_seeds(v)} at {b} bits" for b, v in table.expected.items()))
    doc.p(f"Split digest `{scope.digest}`; expected seeds {seeds_text} per cell; mAP@{'/'.join(topk)} as the "
          "dataset card defines it. Cells: mean over seeds [95 % t interval]; **bold** = best hashing "
          "method per bit length; \"− floor\" = margin over classify-then-hash in points.")
    has_floor = any(m == FLOOR_METHOD and c.complete for (m, _), c in table.cells.items())
    if (precision := precision_metric(table.records())) is not None and precision not in metrics:
        metrics = (*metrics, precision)
    for key, title in metrics:
        metric_table(doc, table, key, title, with_margin=key == "mAP" and has_floor)
    notes = []
    if any(interval(c, "mAP")[3] == "bootstrap" for c in table.cells.values() if c.complete):
        notes.append(DAGGER_NOTE)
    if not any(m == FLOOR_METHOD for m, _ in table.cells):
        notes.append("classify-then-hash has not been run in this table: no floor "
                     "(`python -m bench run --methods classify-then-hash ...`).")
    notes.append(f"Chance: the expected score of random ±1 codes on this query set and database "
                 f"({chance_how(table)}; see bench/evaluation/chance.py).")
    notes += reconstruction_notes(table)
    notes += fewer_seeds_notes(table)
    notes += device_notes(table)
    doc.bullets(notes)
    published_next_to(doc, table, published)


def main_comparison(doc: Doc, analysis: Analysis, published: list[dict]) -> None:
    doc.h(2, "Main comparison")
    if not analysis.main:
        doc.p("No complete runs with default method settings: nothing to compare.")
        return
    doc.p("One main table per dataset card: its primary table (the one with the most complete cells) "
          "first, then any other table of that card (another schedule or protocol).")
    for card in analysis.cards():
        primary = analysis.primary[card]
        title = card_info(card).get("title") or card
        doc.h(3, f"{title}: {analysis.scope_label(primary)}")
        main_table(doc, analysis, analysis.main[primary], published)
        variant_section(doc, analysis, analysis.main[primary])
        for scope, table in analysis.main.items():
            if scope.dataset == card and scope != primary:
                doc.h(4, f"Also measured: {analysis.scope_label(scope)}")
                main_table(doc, analysis, table, [], MAIN_METRICS[:1])
                variant_section(doc, analysis, table)
        ranking_section(doc, analysis, card)


def published_next_to(doc: Doc, table: MainTable, published: list[dict]) -> None:
    rows = [r for r in published if r["dataset"] == table.scope.dataset]
    if not rows:
        if published:
            doc.p(f"No published numbers for {table.scope.dataset} in bench/published.yaml (none of the "
                  "papers reports this dataset), so the measured numbers stand alone.")
        return
    out = []
    for row in rows:
        cell = table.complete(row["method"], row["bits"])
        measured = cell.stat(metric_points("mAP")) if cell is not None else None
        value = "not available" if row["value"] is None else f"{row['value'] * 100:.2f}"
        if measured is None:
            measured_text, diff = "not measured", "–"
        else:
            measured_text = measured.text()
            diff = "–" if row["value"] is None else fmt_signed(measured.mean - row["value"] * 100)
        source = short(row["source"] + (f"; {row['note']}" if row["note"] else ""), 140)
        out.append((method_name(row["method"]), row["bits"], row["metric"], value, measured_text, diff,
                    row["backbone"], source))
    doc.p("**Published numbers for this dataset** (measured − published in points; backbones, schedules "
          "and cut-offs differ, see each source):")
    doc.table(("method", "bits", "published metric", "published", "measured mAP", "difference",
               "published backbone", "source"), out)


# ------------------------------------------------------------------------------------------
# Claims in detail
# ------------------------------------------------------------------------------------------


def claims_section(doc: Doc, verdicts: list[ClaimResult]) -> None:
    doc.h(2, "Claims and verdicts")
    doc.p("Design (shared/specs/verdicts-v3.md): each claim is graded per dataset card on one *family*, "
          "the claim's default-settings comparisons in the card's designated table (its primary table, "
          "else the table with the most counted comparisons of the claim); other tables are *also "
          "measured* and never graded. Tests are one-sided t over seeds (α = 0.05). **supported** = every "
          "cell rejects its null (intersection-union test: IUT p = the largest one-sided p of the family) "
          "with at least 5 seeds; **contradicted** = a cell significantly against the claim after Holm over "
          "the family, with at least 5 seeds; **consistent, not significant** = every estimate favours the "
          "claim; **mixed** = otherwise; **not measurable** = no counted cell. A decisive result with fewer "
          "than 5 seeds keeps the weaker grade and reads *provisional*. The overall grade is the weakest "
          "card grade. The reassignment claim is tested against the paper's range (a cell favours it at a "
          "gain of at least the lower bound); the cost claim is graded on counted work (ratio ≥ 1.05).")
    for v in verdicts:
        doc.h(3, f"{v.id}: {v.label}")
        doc.p(f"*Claim:* {v.claim} *Source:* {v.source}.")
        doc.p(f"*How it is checked:* {v.how}")
        doc.p(f"*Verdict:* **{v.label}** — {v.summary}. *Unit of replication:* {v.replication}.")
        if v.by_card:
            doc.bullets(f"*{g.card}:* **{g.label}** — {g.reason}; {g.power_text}" for g in v.by_card)
        timing = dict(v.details).get("timing")
        if timing:
            doc.p(f"*Isolated timing (secondary, not graded):* {timing['summary']}.")
        rows = []
        for c in v.comparisons:
            digits = 3 if c.unit == "Spearman ρ" else 2
            n = str(c.n) + ("" if c.counted else f" ({c.note})")
            rows.append((c.where.rsplit(" · ", 1)[0], c.bits, c.what, f"{c.a:.{digits}f} vs {c.b:.{digits}f}",
                         difference_text(c), fmt_p(c.p_for), fmt_p(c.p_holm), n80_text(c.n80), n,
                         "family" if c.in_family else "also measured"))
        unit = v.comparisons[0].unit if v.comparisons else ""
        doc.table(("table", "bits", "comparison", "ours (claim side vs other)",
                   f"difference [95 % CI] ({unit})", "p for (one-sided)", "Holm p against", "seeds for 80 %",
                   "n", "role"), rows)
        if any(c.interval == CI_BOOTSTRAP for c in v.comparisons):
            doc.p(DAGGER_NOTE)
        doc.bullets(v.notes)
        ours = "; ".join(v.regime) if v.regime else "no counted runs"
        doc.p(f"*Regime:* ours — {ours}. The paper — {v.paper_regime}. A verdict here holds for this "
              "regime only.")
