"""Budget curves: has each method stopped gaining from a longer schedule?

The rule (stated in bench/experiments/budget-curves.yaml): a method's curve has *flattened* at
budget B when its mean test-mAP gain from B to the next budget, over the seeds both have, is no
larger than the seeds' spread there (the larger sample std of the two cells). The main table's
budget is the smallest B at which every method has flattened, not the budget at which one
method peaks. Every run is selected on the held-out validation database, so a longer budget
can only help a method as far as validation sees it."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from bench.report.analysis import Analysis, _schedule_free
from bench.report.document import Doc, FigurePlan
from bench.report.figures import Series, draw_headline
from bench.report.groups import Cell
from bench.report.stats import Stat
from bench.report.util import fmt_signed, method_name, method_sort_key, metric_points

MIN_BUDGETS = 3  # fewer budgets than this is a longer-schedule check, not a curve

_MAP = metric_points("mAP")


@dataclass(frozen=True)
class BudgetStep:
    """One method from one budget to the next, on the seeds both cells have."""

    short: Cell
    long: Cell
    seeds: tuple[int, ...]

    def _stat(self, cell: Cell) -> Stat:
        return Stat.of(cell.group.values(_MAP, self.seeds).values())

    @property
    def gain(self) -> float:
        return self._stat(self.long).mean - self._stat(self.short).mean

    @property
    def spread(self) -> float:
        stds = [self._stat(c).std for c in (self.short, self.long)]
        return max((s for s in stds if not math.isnan(s)), default=math.nan)

    @property
    def flattened(self) -> bool:
        return not math.isnan(self.spread) and self.gain <= self.spread


@dataclass(frozen=True)
class BudgetCurves:
    label: str
    bits: int
    budgets: tuple[int, ...]
    cells: dict[tuple[str, int], Cell]  # (method, epochs) -> complete cell
    steps: dict[str, list[BudgetStep]]  # method -> steps between adjacent budgets

    @property
    def methods(self) -> list[str]:
        return sorted(self.steps, key=method_sort_key)

    def flattened_at(self, method: str) -> int | None:
        """The smallest budget from which every later step of `method` has flattened."""
        steps = self.steps[method]
        for i in range(len(steps)):
            if all(s.flattened for s in steps[i:]):
                return self.budgets[i]
        return None

    @property
    def chosen(self) -> int | None:
        """The smallest budget at which every method has flattened (None: some still rise)."""
        at = [self.flattened_at(m) for m in self.methods]
        return None if not at or any(b is None for b in at) else max(at)  # type: ignore[type-var]


def budget_curves(a: Analysis) -> list[BudgetCurves]:
    """Per (table without its schedule, bit length): the methods measured, complete, at every
    one of at least MIN_BUDGETS epoch counts."""
    families: dict[tuple, dict[int, object]] = {}
    for scope in a.main:
        families.setdefault(_schedule_free(scope), {})[scope.epochs] = scope
    out = []
    for _, by_epochs in sorted(families.items(), key=lambda kv: str(kv[0])):
        budgets = tuple(sorted(by_epochs))
        if len(budgets) < MIN_BUDGETS:
            continue
        tables = [a.main[by_epochs[e]] for e in budgets]  # type: ignore[index]
        for bits in sorted({b for t in tables for b in t.bits}):
            cells: dict[tuple[str, int], Cell] = {}
            steps: dict[str, list[BudgetStep]] = {}
            for method in sorted({m for t in tables for m in t.methods}, key=method_sort_key):
                row = [t.complete(method, bits) for t in tables]
                if any(c is None for c in row):
                    continue
                chain = []
                for short, long in zip(row, row[1:], strict=False):
                    common = tuple(sorted(set(short.used) & set(long.used)))  # type: ignore[union-attr]
                    chain.append(BudgetStep(short, long, common))  # type: ignore[arg-type]
                if all(step.seeds for step in chain):
                    steps[method] = chain
                    cells.update({(method, e): c for e, c in zip(budgets, row, strict=True)})  # type: ignore[misc]
            if len(steps) >= 2:
                scope = tables[0].scope
                unscheduled = replace(scope, settings=tuple(kv for kv in scope.settings if kv[0] != "epochs"))
                out.append(BudgetCurves(unscheduled.describe(), bits, budgets, cells, steps))
    return out


def budget_section(doc: Doc, a: Analysis) -> None:
    doc.h(2, "Budget curves")
    curves = budget_curves(a)
    if not curves:
        doc.p(f"No method was measured at {MIN_BUDGETS} or more budgets with otherwise equal settings "
              "(`python -m bench run --experiment budget-curves`).")
        return
    doc.p("Validation-selected test mAP (percent, mean ± sample std over seeds) at each training budget; "
          "the cosine schedule spans each budget. A step has **flattened** when the mean gain to the next "
          "budget, on the seeds both have, is no larger than the seeds' spread (the larger std of the two "
          "cells); a method has flattened at the smallest budget after which every step has. The main "
          "table's budget is the smallest at which every method has flattened.")
    for number, curve in enumerate(curves):
        doc.h(3, f"{curve.label}, {curve.bits} bits")
        series = []
        for method in curve.methods:
            points = []
            for epochs in curve.budgets:
                stat = curve.cells[(method, epochs)].stat(_MAP)
                half = stat.half_width if stat.n >= 2 else math.nan
                points.append((epochs, stat.mean, stat.mean - half, stat.mean + half))
            series.append(Series(method_name(method), method, "method", tuple(points)))
        doc.figure(FigurePlan(f"budget-{number}-{curve.bits}b", (7.4, 3.6),
                              draw_headline([(f"{curve.label}, {curve.bits} bits", curve.budgets, series)],
                                            xlabel="training epochs (log scale)", ylim=None), series),
                   "Validation-selected test mAP (%) against the training budget, mean over seeds with 95 % "
                   "t intervals.")
        header = (["method"] + [f"{e} epochs" for e in curve.budgets]
                  + [f"gain {s} → {t} (spread)"
                     for s, t in zip(curve.budgets, curve.budgets[1:], strict=False)]
                  + ["flattened at"])
        rows = []
        for method in curve.methods:
            stats = [curve.cells[(method, e)].stat(_MAP) for e in curve.budgets]
            at = curve.flattened_at(method)
            rows.append([method_name(method)]
                        + [f"{s.mean:.2f} ± {s.std:.2f} (n={s.n})" for s in stats]
                        + [f"{fmt_signed(step.gain)} ({step.spread:.2f})" + ("" if step.flattened else " ↑")
                           for step in curve.steps[method]]
                        + [f"{at} epochs" if at is not None else "still rising"])
        doc.table(header, rows)
        chosen = curve.chosen
        if chosen is not None:
            doc.p(f"**Every method has flattened at {chosen} epochs** (↑ marks a step whose gain exceeds "
                  "the spread).")
        else:
            rising = [method_name(m) for m in curve.methods if curve.flattened_at(m) is None]
            doc.p(f"Still rising at the longest budget ({curve.budgets[-1]} epochs): {', '.join(rising)}; "
                  "a longer budget is needed to say where every curve flattens.")
