"""The report's sections after the main tables: curves, training curves, ablations, centers,
cost, published numbers, data quality and the run-id appendix."""

from __future__ import annotations

import math
from collections import Counter

import pandas as pd

from bench import RESULTS_VERSION
from bench.report.ablations import CRH_DIMENSIONS, reassignment_steps
from bench.report.analysis import Analysis, MainTable, schedule_comparisons
from bench.report.document import Doc, FigurePlan
from bench.report.figures import (
    ablation_grid,
    draw_ablations,
    draw_centers,
    draw_cost,
    draw_curves,
    draw_reassignment,
    draw_validation,
    stage_text,
)
from bench.report.groups import Cell, Group, describe_variant
from bench.report.semantics import centers_of, fmt_rho, independent_similarity, semantics_of_cell
from bench.report.stats import Stat
from bench.report.util import (
    fmt_p,
    fmt_seeds,
    fmt_signed,
    get,
    md_escape,
    method_name,
    method_sort_key,
    metric_points,
    num,
    record_version,
    seconds_per_epoch,
    short,
    timing,
    training_cost,
)


def curves(doc: Doc, a: Analysis) -> None:
    doc.h(2, "Retrieval curves")
    if not a.main:
        doc.p("No complete main-comparison runs: no curves.")
        return
    doc.p("Per dataset and bit length, all methods on one plot, averaged over each cell's seeds: "
           "precision against recall of the items within Hamming radius r (r = 0..K, markers every "
           "radius), and precision at the top N of the Hamming ranking.")
    drew = False
    for scope, table in a.main.items():
        for bits in table.bits:
            cells = [table.complete(m, bits) for m in table.methods]
            cells = [c for c in cells if c is not None]
            if not cells:
                continue
            drew = True
            plan = FigurePlan(f"curves-{scope.slug}-{bits}b", (11.0, 4.2),
                              draw_curves(cells, f"{a.scope_label(scope)} · {bits} bits"))
            doc.figure(plan, "PR by Hamming radius and precision@N — "
                              f"{a.scope_label(scope)}, {bits} bits")
    if not drew:
        doc.p("No complete cell has curves to draw.")

def training_curves(doc: Doc, a: Analysis) -> None:
    doc.h(2, "Training curves")
    if not a.main:
        doc.p("No complete main-comparison runs: no training curves.")
        return
    doc.p("Validation mAP (the model-selection criterion: validation queries against the held-out "
           "validation database under protocol v2, against the training set under v1; each record's "
           "`selection` says which) at each evaluation epoch, mean over seeds. A run whose best epoch "
           "is its last evaluation may still have been improving.")
    for scope, table in a.main.items():
        cells = [c for c in table.cells.values() if c.complete]
        if not cells:
            continue
        plan = FigurePlan(f"validation-{scope.slug}", (4.2 * len(table.bits) + 1.0, 3.6),
                          draw_validation(cells, table.bits, a.scope_label(scope)))
        doc.figure(plan, f"Validation mAP per epoch — {a.scope_label(scope)}")
        rows = []
        for cell in sorted(cells, key=lambda c: (method_sort_key(c.group.method), c.group.bits)):
            records = cell.records()
            last_best = sum(1 for r in records if _is_best_at_end(r))
            tail = Stat.of(_final_val_gain(r) for r in records)
            rows.append((method_name(cell.group.method), cell.group.bits,
                         ", ".join(str(get(r, "selection", "best_epoch")) for r in records),
                         int(get(records[0], "config", "epochs", default=0) or 0),
                         f"{last_best} of {len(records)}", tail.text(2, show_n=False)))
        doc.table(("method", "bits", "best epoch per seed", "epochs", "best = last evaluation",
                    "val mAP change over the last evaluation interval (points)"), rows)
    longer_schedules(doc, a)

def longer_schedules(doc: Doc, a: Analysis) -> None:
    comparisons = schedule_comparisons(a)
    if not comparisons:
        return
    getter = metric_points("mAP")
    doc.p("**Longer schedules.** Cells run again with more epochs and otherwise equal settings "
           "(same split and protocol), compared on the seeds both schedules have: test mAP of the "
           "checkpoint each run selected on validation. A gain well above the seed spread means the "
           "shorter schedule had not converged for that method.")
    rows = []
    for c in comparisons:
        rows.append((method_name(c.method), c.bits, fmt_seeds(c.seeds),
                     f"{c.epochs(c.short)} → {c.epochs(c.long)}",
                     f"{c.mean(c.short, getter):.2f}", f"{c.mean(c.long, getter):.2f}",
                     fmt_signed(c.gain(getter)), ", ".join(str(e) for e in c.long_best_epochs())))
    doc.table(("method", "bits", "seeds", "epochs", "mAP (shorter)", "mAP (longer)",
                "gain (points)", "best epoch of the longer run"), rows)

def ablations(doc: Doc, a: Analysis) -> None:
    doc.h(2, "CRH ablations")
    if not a.crh:
        doc.p("No CRH runs: no ablations.")
        return
    doc.p("Recognised from the CRH run configurations: runs at one bit length that differ in one "
           "ablation dimension only form a series of that dimension (\"other settings\" names what "
           "the series holds fixed away from the defaults); effective values (head count, cadence, "
           "codebook size) come from each run's own record where the configuration left the default "
           "rule. Error bars: sample std over seeds.")
    getter = metric_points("mAP")
    without = []  # tables with one setting per dimension: named once, not given a section each
    for scope, ablations in sorted(a.crh.items()):
        label = a.scope_label(scope)
        if not ablations.unplaced and not any(ablations.varied(dim) for dim in ablations.dims):
            without.append(label)
            continue
        doc.h(3, label)
        drawn = []
        for dim, (_, title) in ablations.dims.items():
            varied = ablations.varied(dim)
            if dim not in CRH_DIMENSIONS and not varied:
                continue
            if not varied:
                doc.p(f"*{title}:* only one setting measured — no ablation data.")
                continue
            drawn.append((dim, title, varied))
            doc.p(f"*{title}:*")
            rows = []
            for panel in varied:
                for point in panel.points:
                    cell = point.cell
                    value = cell.stat(getter).text() if cell.complete else (
                        f"{cell.status_text()} (provisional {cell.provisional(getter).text()})")
                    rows.append((panel.bits, panel.context or "defaults", point.label, value,
                                 fmt_seeds(cell.group.seeds)))
            doc.table(("bits", "other settings", "setting", "mAP", "seeds present"), rows)
        if drawn:
            rows, columns = ablation_grid(len(drawn))
            plan = FigurePlan(f"ablations-{scope.slug}", (5.6 * columns, 3.9 * rows),
                              draw_ablations(drawn, label))
            doc.figure(plan, f"CRH ablations (mAP, error bars over seeds) — {label}")
        if ablations.unplaced:
            doc.p("CRH runs in no series above (they differ from every other run in more than one "
                   "dimension):")
            doc.table(("bits", "settings", "mAP", "seeds"),
                       ((g.bits, describe_variant(g.variant),
                         Stat.of(getter(r) for r in g.runs.values()).text(), fmt_seeds(g.seeds))
                        for g in ablations.unplaced))
    if without:
        doc.p("One setting of each dimension only, so no ablation data, in: " + "; ".join(without) + ".")

# -- centers
def _center_cells(a: Analysis, table: MainTable, bits: int) -> list[tuple[str, Group]]:
    """(label, group) of every main method whose runs store centers, and CRH with
    reassign=never beside them."""
    out = []
    for method in table.methods:
        cell = table.cell(method, bits)
        if cell is not None and cell.group.runs and centers_of(cell.group.first) is not None:
            out.append((method_name(method), cell.group))
    ablations = a.crh.get(table.scope)
    panel = ablations.reference_panel("reassignment", bits) if ablations else None
    never = panel.point("never") if panel else None
    if never is not None and centers_of(never.cell.group.first) is not None:
        out.append(("CRH, reassign=never", never.cell.group))
    return out


def centers(doc: Doc, a: Analysis, frame: pd.DataFrame) -> None:
    doc.h(2, "Hash centers")
    index = {id(g): i for i, g in enumerate(a.groups)}
    tables = [t for t in a.main.values() if any(_center_cells(a, t, b) for b in t.bits)]
    if not tables:
        doc.p("No runs of a center-based method with stored centers.")
        return
    doc.p("Do centers reflect class similarity? Spearman's ρ over class pairs between the centers' "
          "Hamming similarity (1 − d/K) and a class similarity the judged network did not produce: a "
          "ground truth where the card or record declares one, else the class-mean backbone features of "
          "another seed's run of the same method and bits (the next seed, cyclically), else of another "
          "run in the table. p over seeds: one-sided t of each run's ρ minus the mean of its permutation "
          "null (random center-to-class assignments) — the graded test; per-run Mantel p: the one-sided "
          "permutation p of each run (9,999 assignments, an assignment that ties with the observed one "
          "counted as extreme; computed on integer rank products, so the same on every CPU; shown, not "
          "graded). CSQ's Hadamard centers are "
          "equidistant, so ρ is undefined for them.")
    for table in tables:
        label = a.scope_label(table.scope)
        doc.h(3, label)
        in_table = frame[frame.table == label]
        rows = []
        for bits in table.bits:
            entries = _center_cells(a, table, bits)
            results = []
            for name, group in entries:
                cell_rows = frame[frame.group == index[id(group)]]
                result = semantics_of_cell(cell_rows, in_table, name)
                results.append((name, group, cell_rows, result))
                r = result.result
                mantel = ", ".join(fmt_p(p) for p in r.run_p) if r else "–"
                rows.append((bits, name, fmt_rho(result), fmt_p(r.test.p_greater) if r else "–", mantel,
                             result.source_text()))
            shown = [(g, cr) for name, g, cr, _ in results if "never" not in name]
            cells = [Cell(g, g.seeds) for g, _ in shown][:4]
            if cells:
                first = shown[0][1].sort_values("seed").iloc[0]
                found = independent_similarity(first, shown[0][1], in_table)
                similarity = (found[0], found[1]) if found else None  # the caption has its source
                plan = FigurePlan(f"centers-{table.scope.slug}-{bits}b", (3.9 * (len(cells) + 1) + 0.4, 3.9),
                                  draw_centers(cells, similarity, f"{label} · {bits} bits"))
                doc.figure(plan, f"Center distances at {bits} bits — {label}; left: the class similarity "
                                 f"the first run is judged against ({found[2] if found else 'none'})")
        doc.p("**Center semantics** (independent class similarity; t over seeds, Mantel p per run)")
        doc.table(("bits", "centers", "Spearman ρ (mean ± sd over runs)", "p over seeds (one-sided)",
                   "per-run Mantel p", "class similarity used"), rows)
        reassignment_section(doc, table, label)


def reassignment_section(doc: Doc, table: MainTable, label: str) -> None:
    crh_cells = [table.complete("crh", b) for b in table.bits]
    crh_cells = [c for c in crh_cells if c is not None]
    steps = [(c, [reassignment_steps(r) for r in c.records()]) for c in crh_cells]
    steps = [(c, s) for c, s in steps if any(s)]
    if steps:
        plan = FigurePlan(f"reassignment-{table.scope.slug}", (6.4, 3.8), draw_reassignment(steps, label))
        doc.figure(plan, f"CRH: classes reassigned per step — {label}")
        rows = []
        for cell, per_run in steps:
            for seed, run_steps in zip(cell.used, per_run, strict=True):
                changed = [s["changed_classes"] for s in run_steps]
                last = max((s["epoch"] for s in run_steps if s["changed_classes"] > 0), default=None)
                rows.append((cell.group.bits, seed, len(run_steps), changed[0] if changed else 0,
                             changed[-1] if changed else 0, sum(changed),
                             last if last is not None else "none"))
        doc.table(("bits", "seed", "reassignment steps", "classes moved at the first step",
                   "at the last step", "total moves", "last epoch with a move"), rows)
    elif crh_cells:
        doc.p("The CRH records hold no reassignment history.")


def cost(doc: Doc, a: Analysis) -> None:
    doc.h(2, "Training cost")
    if not a.main:
        doc.p("No complete main-comparison runs: no timings.")
        return
    doc.p("Wall-clock seconds from the records' `timings`: training = the epochs of the hash "
           "network; set-up = the method's stages before it (SHC: classifier and center "
           "optimisation); hooks = per-epoch method work (CRH: reassignment). Timings depend on the "
           "machine and on what else ran on it.")
    for scope, table in a.main.items():
        label = a.scope_label(scope)
        cells = [c for c in table.cells.values() if c.complete]
        if not cells:
            continue
        doc.h(3, label)
        rows = []
        for cell in sorted(cells, key=lambda c: (method_sort_key(c.group.method), c.group.bits)):
            records = cell.records()
            devices = sorted({str(get(r, "environment", "device", default=r.get("device", "?")))
                              for r in records})
            rows.append((method_name(cell.group.method), cell.group.bits,
                         cell.stat(timing("train")).text(1, show_n=False),
                         cell.stat(seconds_per_epoch).text(2, show_n=False),
                         cell.stat(timing("method_setup")).text(2, show_n=False),
                         cell.stat(timing("method_hooks")).text(2, show_n=False),
                         cell.stat(timing("total")).text(1, show_n=False),
                         len(records), ", ".join(devices)))
        doc.table(("method", "bits", "training s/run", "s/epoch", "set-up s", "hooks s", "total s",
                    "n", "device"), rows)
        stage_rows = []
        for bits in table.bits:
            shc, crh = table.complete("shc", bits), table.complete("crh", bits)
            if shc is None and crh is None:
                continue
            stage_rows.append((bits,
                               stage_text(shc) if shc is not None else "not run",
                               f"{shc.stat(training_cost).mean:.1f}" if shc is not None else "–",
                               (f"training {crh.stat(timing('train')).mean:.1f} s + reassignment "
                                f"{crh.stat(timing('method_hooks')).mean:.2f} s")
                               if crh is not None else "not run",
                               f"{crh.stat(training_cost).mean:.1f}" if crh is not None else "–"))
        if any(r[1] != "not run" for r in stage_rows) and any(r[3] != "not run" for r in stage_rows):
            doc.p("**SHC's stages against CRH's single stage** (means over seeds, seconds):")
            doc.table(("bits", "SHC stages", "SHC total", "CRH (one stage)", "CRH total"), stage_rows)
        else:
            lacking = "SHC" if all(r[1] == "not run" for r in stage_rows) else "CRH"
            doc.p("SHC's stages against CRH's single stage: needs complete SHC and CRH cells — "
                   f"no {lacking} runs here.")
        plan = FigurePlan(f"cost-{scope.slug}", (11.0, 4.0), draw_cost(cells, table.bits, label))
        doc.figure(plan, f"Training time per run and SHC's stages against CRH — {label}")

def published_section(doc: Doc, a: Analysis, published: list[dict]) -> None:
    doc.h(2, "Published numbers")
    doc.p("Everything in bench/published.yaml, whether or not a matching dataset was measured here. "
           "Empty cells are numbers that are not available to this project (CRH's per-cell numbers): "
           "they are never filled in with guesses. Values in percent.")
    if not published:
        doc.p("bench/published.yaml lists no numbers.")
        return
    measured = {s.dataset for s in a.main}
    doc.table(("dataset", "method", "bits", "metric", "published", "backbone", "source",
                "measured here"),
               ((r["dataset"], method_name(r["method"]), r["bits"], r["metric"],
                 "" if r["value"] is None else f"{r['value'] * 100:.2f}", r["backbone"],
                 short(r["source"] + (f"; {r['note']}" if r["note"] else ""), 140),
                 "yes" if r["dataset"] in measured else "no") for r in published))

def environments(doc: Doc, a: Analysis) -> None:
    """Where the counted runs ran: CPU float results match bitwise only on the same kind of
    processor and torch build, so a reader needs to see when a table mixes machines."""
    counts = Counter(environment_of(r) for r in a.included)
    if not counts:
        return
    doc.p("**Where the counted runs ran** (on CPU a seed reproduces bitwise only on the same kind "
           "of processor and torch build; runs from different machines are further samples of the "
           "same training, not copies):")
    doc.table(ENVIRONMENT_FIELDS + ("runs",), (key + (count,) for key, count in sorted(counts.items())))

def quality(doc: Doc, a: Analysis) -> None:
    doc.h(2, "Data quality")
    lines = [f"{len(a.included)} complete current-code run(s) in the numbers",
             f"{len(a.older)} record(s) from older code (results version other than {RESULTS_VERSION}): "
             "listed, not used",
             f"{len(a.failed)} failed run(s): listed, not used",
             f"{len(a.problems)} unreadable file(s): listed, not used"]
    incomplete = [(s, c) for s, t in a.main.items() for c in t.cells.values() if not c.complete]
    extra = [(s, c) for s, t in a.main.items() for c in t.cells.values() if c.complete and c.extra]
    lines.append(f"{len(incomplete)} main-comparison cell(s) with an incomplete seed set: shown as "
                 "incomplete, not averaged")
    if a.multi_digest:
        lines.append(f"more than one split digest for {', '.join(sorted(a.multi_digest))}: each split is "
                     "its own table")
    doc.bullets(lines)
    environments(doc, a)
    if a.older:
        doc.p("**Records from older code**")
        doc.table(("run id", "dataset", "method", "bits", "seed", "results version", "status"),
                   ((r.get("run_id"), get(r, "spec", "dataset"), get(r, "spec", "method"),
                     get(r, "spec", "bits"), get(r, "spec", "seed"), record_version(r),
                     r.get("status")) for r in a.older))
    if a.failed:
        doc.p("**Failed runs**")
        doc.table(("run id", "dataset", "method", "bits", "seed", "reason"),
                   ((r.get("run_id"), get(r, "spec", "dataset"), get(r, "spec", "method"),
                     get(r, "spec", "bits"), get(r, "spec", "seed"),
                     md_escape(short(r.get("failure") or f"status {r.get('status')}", 160)))
                    for r in a.failed))
    if a.problems:
        doc.p("**Unreadable record files**")
        doc.bullets(f"`{short(problem, 200)}`" for problem in a.problems)
    if incomplete:
        doc.p("**Incomplete seed sets** (kept out of the main numbers)")
        getter = metric_points("mAP")
        doc.table(("table", "method", "bits", "seeds present", "seeds expected", "failed seeds",
                    "provisional mAP"),
                   ((a.scope_label(s), method_name(c.group.method), c.group.bits,
                     fmt_seeds(c.group.seeds), fmt_seeds(c.expected), fmt_seeds(c.group.failed_seeds),
                     c.provisional(getter).text()) for s, c in incomplete))
    if extra:
        doc.p("**Extra seeds** outside the table's seed set (kept out of the means so every cell "
               "averages the same seeds)")
        doc.table(("table", "method", "bits", "extra seeds"),
                   ((a.scope_label(s), method_name(c.group.method), c.group.bits, fmt_seeds(c.extra))
                    for s, c in extra))
    if a.conflicts:
        doc.p("**Conflicting configurations** (same scope, method, bits and method settings, yet a "
               "different resolved configuration; kept: the one with more seeds, on a tie the one at "
               "the values the card's tuned file applies now)")
        doc.table(("scope", "method", "bits", "left out: run ids", "kept: run ids"),
                   ((a.scope_label(left.scope), method_name(left.method), left.bits,
                     ", ".join(r["run_id"] for r in left.runs.values()),
                     ", ".join(r["run_id"] for r in kept.runs.values())) for left, kept in a.conflicts))

def appendix(doc: Doc, a: Analysis) -> None:
    doc.h(2, "Appendix: run ids per cell")
    if not a.groups:
        doc.p("No complete current-code runs.")
        return
    doc.p("Every number above comes from these runs (records under results/runs/<dataset>/<method>/"
           "<run id>.json; each holds the full configuration, split digest, environment and commit).")
    for scope in a.scopes:
        doc.h(3, a.scope_label(scope))
        doc.table(("method", "bits", "settings", "seed: run id"),
                   ((method_name(g.method), g.bits, describe_variant(g.variant),
                     "; ".join(f"{s}: `{g.runs[s]['run_id']}`" for s in g.seeds))
                    for g in a.groups_in(scope)))


ENVIRONMENT_FIELDS = ("device", "CPU", "CPU capability", "torch", "torch threads")


def environment_of(record: dict) -> tuple[str, ...]:
    env = record.get("environment") or {}
    device = str(env.get("gpu") or env.get("device") or "?")
    return (device, str(env.get("cpu") or "not recorded"), str(env.get("cpu_capability") or "not recorded"),
            str(env.get("torch") or "?"), str(env.get("torch_threads") or "?"))


def _is_best_at_end(record: dict) -> bool:
    evaluated = [e.get("epoch") for e in record.get("history") or [] if e.get("val_mAP") is not None]
    return bool(evaluated) and get(record, "selection", "best_epoch") == evaluated[-1]


def _final_val_gain(record: dict) -> float:
    values = [num(e.get("val_mAP")) for e in record.get("history") or [] if e.get("val_mAP") is not None]
    return (values[-1] - values[-2]) * 100 if len(values) >= 2 else math.nan

